"""Tests of the closed_form prox maps: soft-thresholds, hinges, leaky ReLU, Huber, norm2,
group norms and norm_inf.

Every case in CASES gets the same checks. The plan picks the closed_form entry, the output
agrees with the cvxpy backend, and gradients pass gradcheck in float64. The output
satisfies the optimality condition ``0 in dR(z) + lam (z - x) + N_C(z)``. At saturating
inputs ``|x| = 30``, values and gradients match an independent formula to 1e-12.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from proxopt import (
    Box,
    Parameter,
    ProxLayer,
    Variable,
    explain,
    group_norm,
    huber,
    neg,
    norm1,
    norm2,
    norm_inf,
    pos,
    sum_squares,
)
from proxopt.activations import ACTIVATIONS
from proxopt.backends.closed_form.proxmaps import group_soft_threshold, prox_huber, soft_threshold
from proxopt.errors import DeclarationError, NoRouteError

N = 6
BATCH = 4
GROUPS = [[0, 3], [2, 5]]  # entries 1 and 4 are in no group
GROUP_WEIGHTS = [1.0, 2.0]
BLOCK_WEIGHTS = [1.0, 2.0, 0.5]

Values = dict[str, torch.Tensor]
Scalar = torch.Tensor | float
Getter = Callable[[Values], Scalar]


def _column(value: Scalar) -> Scalar:
    return value.unsqueeze(-1) if isinstance(value, torch.Tensor) and value.ndim == 1 else value


def _constant(value: float) -> Getter:
    return lambda values: value


def _parameter(name: str) -> Getter:
    return lambda values: _column(values[name])


# -- one-sided derivatives of the scalar functions f, for the optimality test -------------

Derivatives = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``u -> (f'_-(u), f'_+(u))``, the left and right derivatives of ``f`` at each entry."""


def _abs_derivatives(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    sign = torch.sign(u)
    return torch.where(u == 0, -1.0, sign), torch.where(u == 0, 1.0, sign)


def _pos_derivatives(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (u > 0).to(u.dtype), (u >= 0).to(u.dtype)


def _neg_derivatives(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return -(u <= 0).to(u.dtype), -(u < 0).to(u.dtype)


def _neg_square_derivatives(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    slope = 2 * torch.clamp(u, max=0)
    return slope, slope


def _pos_square_derivatives(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    slope = 2 * torch.clamp(u, min=0)
    return slope, slope


def _huber_derivatives(delta: float) -> Derivatives:
    def derivatives(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        slope = torch.clamp(u, -delta, delta)
        return slope, slope

    return derivatives


# -- norms, for the optimality test of the nonseparable terms ------------------------------

Norm = Callable[[torch.Tensor], torch.Tensor]


def _group_norms(groups: list[list[int]], weights: list[float]) -> tuple[Norm, Norm]:
    """Return the weighted group norm and its dual norm ``max_g ||u_g|| / w_g``.

    The dual norm is infinite when an entry outside every group is nonzero (beyond 1e-12).
    """
    covered = sorted(i for group in groups for i in group)
    free = [i for i in range(N) if i not in covered]

    def norm(u: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(u.shape[:-1], dtype=u.dtype)
        for weight, group in zip(weights, groups, strict=True):
            total = total + weight * u[..., group].norm(dim=-1)
        return total

    def dual(u: torch.Tensor) -> torch.Tensor:
        ratios = torch.stack([u[..., g].norm(dim=-1) / w for w, g in zip(weights, groups, strict=True)], -1)
        result = ratios.amax(-1)
        if free:
            result = torch.where(u[..., free].abs().amax(-1) > 1e-12, math.inf, result)
        return result

    return norm, dual


BLOCKS = [[0, 1], [2, 3], [4, 5]]


@dataclass
class Case:
    """A prox problem with one nonsmooth term ``t f(s z + c)`` and what the tests need.

    Attributes:
        name: test id.
        entry: the closed_form registry name expected in ``explain``.
        declare: builds ``(R, constraints)`` for the variable.
        weight: ``t``, read from the Parameter values (a float or a ``(B, 1)`` column).
        saturated: independent formula ``(x, lam, values) -> z`` valid at ``|x| = 30``.
        derivatives: one-sided derivatives of ``f`` for separable terms, else None.
        norm: ``(f, dual norm of f)`` for norm terms, else None.
        scale, shift: ``s`` and ``c``.
        box: ``values -> (lo, hi)`` when a Box constrains ``z``.
        parameters: ``(generator, batch) -> values`` of the declared Parameters.
        merged_gradient: gradient of the merged terms of ``R`` at ``z``.
    """

    name: str
    entry: str
    declare: Callable[[Variable], tuple[object, list[object]]]
    weight: Getter
    saturated: Callable[[torch.Tensor, Scalar, Values], torch.Tensor]
    derivatives: Derivatives | None = None
    norm: tuple[Norm, Norm] | None = None
    scale: float = 1.0
    shift: float = 0.0
    box: Callable[[Values], tuple[Scalar, Scalar]] | None = None
    parameters: Callable[[torch.Generator, int], Values] = lambda generator, batch: {}
    merged_gradient: Callable[[torch.Tensor, Values], torch.Tensor] | None = None

    def __repr__(self) -> str:
        return self.name


def _uniform(generator: torch.Generator, shape: tuple[int, ...], low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64)


def _sign(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x)


def _lam(lam: Scalar) -> Scalar:
    return _column(lam)


def _shrink_groups(x: torch.Tensor, threshold: Scalar, groups: list[list[int]], weights: list[float]) -> torch.Tensor:
    """Group soft-threshold written group by group (groups far outside their thresholds)."""
    pieces = x.clone()
    for weight, group in zip(weights, groups, strict=True):
        block = x[..., group]
        pieces[..., group] = block * (1 - threshold * weight / block.norm(dim=-1, keepdim=True))
    return pieces


CASES = [
    Case(
        "soft_threshold",
        "soft_threshold",
        lambda z: (0.4 * norm1(z), []),
        _constant(0.4),
        lambda x, lam, values: x - _sign(x) * 0.4 / _lam(lam),
        derivatives=_abs_derivatives,
    ),
    Case(
        "soft_threshold_parameter",
        "soft_threshold",
        lambda z: (Parameter(name="t", nonneg=True) * norm1(z), []),
        _parameter("t"),
        lambda x, lam, values: x - _sign(x) * _column(values["t"]) / _lam(lam),
        derivatives=_abs_derivatives,
        parameters=lambda generator, batch: {"t": _uniform(generator, (batch,), 0.1, 1.0)},
    ),
    Case(
        "elastic_net",
        "soft_threshold",
        lambda z: (0.4 * norm1(z) + 0.3 * sum_squares(z), []),
        _constant(0.4),
        # a = lam + 0.6, so z = (lam x - 0.4 sign(x)) / (lam + 0.6).
        lambda x, lam, values: (_lam(lam) * x - 0.4 * _sign(x)) / (_lam(lam) + 0.6),
        derivatives=_abs_derivatives,
        merged_gradient=lambda z, values: 0.6 * z,
    ),
    Case(
        "nonnegative_soft_threshold",
        "nonnegative_soft_threshold",
        lambda z: (0.4 * norm1(z), [z >= 0]),
        _constant(0.4),
        lambda x, lam, values: torch.where(x > 0, x - 0.4 / _lam(lam), 0.0),
        derivatives=_abs_derivatives,
        box=lambda values: (0.0, math.inf),
    ),
    Case(
        "soft_threshold_box",
        "soft_threshold",
        lambda z: (0.4 * norm1(z), [Box(-0.6, 0.9)]),
        _constant(0.4),
        lambda x, lam, values: torch.where(x > 0, 0.9, -0.6 + 0 * x),
        derivatives=_abs_derivatives,
        box=lambda values: (-0.6, 0.9),
    ),
    Case(
        "soft_threshold_box_parameters",
        "soft_threshold",
        lambda z: (
            Parameter(name="t", nonneg=True) * norm1(z),
            [Box(Parameter(N, name="lo"), Parameter(N, name="hi"))],
        ),
        _parameter("t"),
        lambda x, lam, values: torch.where(x > 0, values["hi"], values["lo"]).expand_as(x),
        derivatives=_abs_derivatives,
        box=lambda values: (values["lo"], values["hi"]),
        parameters=lambda generator, batch: {
            "t": _uniform(generator, (), 0.1, 1.0),
            "lo": _uniform(generator, (N,), -1.5, -0.1),
            "hi": _uniform(generator, (N,), 0.1, 1.5),
        },
    ),
    Case(
        "soft_threshold_scaled_shifted",
        "soft_threshold",
        lambda z: (0.4 * norm1(2 * z - 1), []),
        _constant(0.4),
        # u = 2 v - 1 is shrunk by 4 t / lam, then z = (u + 1) / 2.
        lambda x, lam, values: x - _sign(2 * x - 1) * 0.8 / _lam(lam),
        derivatives=_abs_derivatives,
        scale=2.0,
        shift=-1.0,
    ),
    Case(
        "hinge",
        "hinge",
        lambda z: (0.5 * norm1(pos(z)), []),
        _constant(0.5),
        lambda x, lam, values: x - (x > 0).to(x.dtype) * 0.5 / _lam(lam),
        derivatives=_pos_derivatives,
    ),
    Case(
        "negative_hinge_box",
        "negative_hinge",
        lambda z: (0.5 * norm1(neg(z)), [Box(-40.0, 20.0)]),
        _constant(0.5),
        lambda x, lam, values: torch.where(x > 0, 20.0, x + 0.5 / _lam(lam)),
        derivatives=_neg_derivatives,
        box=lambda values: (-40.0, 20.0),
    ),
    Case(
        "leaky_relu",
        "leaky_relu",
        lambda z: (0.7 * sum_squares(neg(z)), []),
        _constant(0.7),
        lambda x, lam, values: torch.where(x > 0, x, _lam(lam) * x / (_lam(lam) + 1.4)),
        derivatives=_neg_square_derivatives,
    ),
    Case(
        "leaky_relu_parameter",
        "leaky_relu",
        lambda z: (Parameter(name="c", nonneg=True) * sum_squares(neg(z)), []),
        _parameter("c"),
        lambda x, lam, values: torch.where(x > 0, x, _lam(lam) * x / (_lam(lam) + 2 * _column(values["c"]))),
        derivatives=_neg_square_derivatives,
        parameters=lambda generator, batch: {"c": _uniform(generator, (batch,), 0.1, 3.0)},
    ),
    Case(
        "positive_part_square",
        "positive_part_square",
        lambda z: (0.7 * sum_squares(pos(z)), []),
        _constant(0.7),
        lambda x, lam, values: torch.where(x < 0, x, _lam(lam) * x / (_lam(lam) + 1.4)),
        derivatives=_pos_square_derivatives,
    ),
    Case(
        "huber",
        "huber",
        lambda z: (0.6 * huber(z, 0.5), []),
        _constant(0.6),
        lambda x, lam, values: x - _sign(x) * 0.6 * 0.5 / _lam(lam),
        derivatives=_huber_derivatives(0.5),
    ),
    Case(
        "huber_shared_parameter",
        "huber",
        lambda z: (Parameter(name="t", nonneg=True) * huber(z, 1.5), []),
        _parameter("t"),
        lambda x, lam, values: x - _sign(x) * values["t"] * 1.5 / _lam(lam),
        derivatives=_huber_derivatives(1.5),
        parameters=lambda generator, batch: {"t": _uniform(generator, (), 0.2, 2.0)},
    ),
    Case(
        "huber_box",
        "huber",
        lambda z: (0.6 * huber(z, 0.5), [z >= -0.3, z <= 0.4]),
        _constant(0.6),
        lambda x, lam, values: torch.where(x > 0, 0.4, -0.3 + 0 * x),
        derivatives=_huber_derivatives(0.5),
        box=lambda values: (-0.3, 0.4),
    ),
    Case(
        "block_soft_threshold",
        "block_soft_threshold",
        lambda z: (0.8 * norm2(z), []),
        _constant(0.8),
        lambda x, lam, values: x * (1 - 0.8 / _lam(lam) / x.norm(dim=-1, keepdim=True)),
        norm=(lambda u: u.norm(dim=-1), lambda u: u.norm(dim=-1)),
    ),
    Case(
        "block_soft_threshold_parameter",
        "block_soft_threshold",
        lambda z: (Parameter(name="t", nonneg=True) * norm2(z), []),
        _parameter("t"),
        lambda x, lam, values: x * (1 - values["t"] / _lam(lam) / x.norm(dim=-1, keepdim=True)),
        norm=(lambda u: u.norm(dim=-1), lambda u: u.norm(dim=-1)),
        parameters=lambda generator, batch: {"t": _uniform(generator, (), 0.5, 3.0)},
    ),
    Case(
        "group_blocks",
        "group_soft_threshold",
        lambda z: (0.6 * group_norm(z, 2, BLOCK_WEIGHTS), []),
        _constant(0.6),
        lambda x, lam, values: _shrink_groups(x, 0.6 / _lam(lam), BLOCKS, BLOCK_WEIGHTS),
        norm=_group_norms(BLOCKS, BLOCK_WEIGHTS),
    ),
    Case(
        "group_index_lists",
        "group_soft_threshold",
        lambda z: (Parameter(name="t", nonneg=True) * group_norm(z, GROUPS, GROUP_WEIGHTS), []),
        _parameter("t"),
        lambda x, lam, values: _shrink_groups(x, _column(values["t"]) / _lam(lam), GROUPS, GROUP_WEIGHTS),
        norm=_group_norms(GROUPS, GROUP_WEIGHTS),
        parameters=lambda generator, batch: {"t": _uniform(generator, (batch,), 0.2, 1.5)},
    ),
    Case(
        "norm_inf",
        "norm_inf",
        lambda z: (0.8 * norm_inf(z), []),
        _constant(0.8),
        # At |x| = 30 every |x_i| ties, so the L1-ball projection of x is
        # sign(x) (|x| - (||x||_1 - theta) / n) and z = sign(x) (||x||_1 - theta) / n.
        lambda x, lam, values: _sign(x) * (x.abs().sum(-1, keepdim=True) - 0.8 / _lam(lam)) / N,
        norm=(lambda u: u.abs().amax(-1), lambda u: u.abs().sum(-1)),
    ),
    Case(
        "norm_inf_parameter",
        "norm_inf",
        lambda z: (Parameter(name="t", nonneg=True) * norm_inf(z), []),
        _parameter("t"),
        lambda x, lam, values: _sign(x) * (x.abs().sum(-1, keepdim=True) - _column(values["t"]) / _lam(lam)) / N,
        norm=(lambda u: u.abs().amax(-1), lambda u: u.abs().sum(-1)),
        parameters=lambda generator, batch: {"t": _uniform(generator, (batch,), 0.5, 4.0)},
    ),
]


def _layer(case: Case, lam: float | torch.Tensor = 1.0, backend: str = "auto") -> ProxLayer:
    z = Variable(N)
    regularizer, constraints = case.declare(z)
    return ProxLayer(regularizer, constraints, lam=lam, backend=backend, variable=z)  # type: ignore[arg-type]


def _inputs(generator: torch.Generator, scale: float = 1.5) -> torch.Tensor:
    return scale * torch.randn(BATCH, N, generator=generator, dtype=torch.float64)


def _per_sample_lam(generator: torch.Generator) -> torch.Tensor:
    return _uniform(generator, (BATCH,), 0.5, 2.0)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_explain_names_closed_form_entry(case: Case) -> None:
    text = explain(_layer(case))
    assert "backend: closed_form (chosen automatically)" in text
    assert f"computes: {case.entry}:" in text


@pytest.mark.parametrize("case", CASES, ids=repr)
@pytest.mark.parametrize("lam_kind", ["float", "per_sample"])
def test_prox_matches_cvxpy_backend(case: Case, lam_kind: str, generator: torch.Generator) -> None:
    lam: float | torch.Tensor = 0.8 if lam_kind == "float" else _per_sample_lam(generator)
    x = _inputs(generator)
    values = case.parameters(generator, BATCH)
    output = _layer(case, lam)(x, **values)
    reference = _layer(case, lam, backend="cvxpy")(x, **values)
    assert output.shape == x.shape
    assert float((output - reference).abs().max()) < 1e-6


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_prox_gradcheck_all_inputs(case: Case, generator: torch.Generator) -> None:
    x = _inputs(generator).requires_grad_(True)
    lam = _per_sample_lam(generator).requires_grad_(True)
    values = {name: value.requires_grad_(True) for name, value in case.parameters(generator, BATCH).items()}
    layer = _layer(case, lam.detach())
    names = list(values)

    def prox(x: torch.Tensor, lam: torch.Tensor, *tensors: torch.Tensor) -> torch.Tensor:
        layer.lam = lam
        return layer(x, **dict(zip(names, tensors, strict=True)))

    assert torch.autograd.gradcheck(prox, (x, lam, *values.values()))


def _separable_violation(case: Case, z: torch.Tensor, g: torch.Tensor, values: Values) -> torch.Tensor:
    """Return how far ``z`` is from minimizing each coordinate of the prox objective.

    ``phi(w) = t f(s w + c) + (smooth part)`` is convex in each coordinate. So ``z`` minimizes
    it over ``[lo, hi]`` exactly when the right derivative is ``>= 0`` (unless ``z = hi``)
    and the left derivative is ``<= 0`` (unless ``z = lo``). Returns the largest violation.
    """
    assert case.derivatives is not None
    t = case.weight(values)
    left, right = case.derivatives(case.scale * z + case.shift)
    if case.scale < 0:
        left, right = right, left
    right_slope = t * case.scale * right + g
    left_slope = t * case.scale * left + g
    lo, hi = case.box(values) if case.box is not None else (-math.inf, math.inf)
    at_hi = z >= hi
    at_lo = z <= lo
    violation = torch.where(at_hi, 0.0, (-right_slope).relu()) + torch.where(at_lo, 0.0, left_slope.relu())
    outside = (z - hi).relu() + (lo - z).relu()
    return (violation + outside).amax(-1)


def _norm_violation(case: Case, z: torch.Tensor, g: torch.Tensor, values: Values) -> torch.Tensor:
    """Return how far ``-g`` is from ``t df(z)``: ``df(z) = {u : dual(u) <= 1, u . z = f(z)}``."""
    assert case.norm is not None
    norm, dual = case.norm
    t = case.weight(values)
    t_row = t.squeeze(-1) if isinstance(t, torch.Tensor) and t.ndim else t
    excess = (dual(-g) - t_row).relu()
    mismatch = ((-g * z).sum(-1) - t_row * norm(z)).abs()
    return excess + mismatch


@pytest.mark.parametrize("case", CASES, ids=repr)
@pytest.mark.parametrize("scale", [0.3, 1.5, 10.0])
def test_prox_satisfies_optimality(case: Case, scale: float, generator: torch.Generator) -> None:
    x = _inputs(generator, scale)
    lam = _per_sample_lam(generator)
    values = case.parameters(generator, BATCH)
    z = _layer(case, lam)(x, **values)
    # g is the gradient of the smooth part (lam/2)||z - x||^2 + (merged terms of R) at z.
    g = _column(lam) * (z - x)
    if case.merged_gradient is not None:
        g = g + case.merged_gradient(z, values)
    if case.derivatives is not None:
        violation = _separable_violation(case, z, g, values)
    else:
        violation = _norm_violation(case, z, g, values)
    assert float(violation.max()) < 1e-10 * (1 + scale**2)


def _saturating_inputs(generator: torch.Generator) -> torch.Tensor:
    signs = torch.randint(0, 2, (BATCH, N), generator=generator).to(torch.float64) * 2 - 1
    signs[0] = 1.0
    signs[1] = -1.0
    return 30.0 * signs


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_saturating_inputs_exact(case: Case, generator: torch.Generator) -> None:
    x = _saturating_inputs(generator).requires_grad_(True)
    lam = _per_sample_lam(generator).requires_grad_(True)
    values = {name: value.requires_grad_(True) for name, value in case.parameters(generator, BATCH).items()}
    weights = torch.randn(BATCH, N, generator=generator, dtype=torch.float64)
    inputs = [x, lam, *values.values()]

    output = _layer(case, lam)(x, **values)
    expected = case.saturated(x, lam, values)
    gradients = torch.autograd.grad((output * weights).sum(), inputs, allow_unused=True, materialize_grads=True)
    expected_gradients = torch.autograd.grad(
        (expected * weights).sum(), inputs, allow_unused=True, materialize_grads=True
    )

    assert float((output - expected).detach().abs().max()) <= 1e-12
    for gradient, expected_gradient in zip(gradients, expected_gradients, strict=True):
        assert float((gradient - expected_gradient).abs().max()) <= 1e-12


@pytest.mark.parametrize("case", [c for c in CASES if not c.parameters(torch.Generator(), 1)], ids=repr)
def test_fast_path_matches_general_path(case: Case, generator: torch.Generator) -> None:
    layer = _layer(case, 0.8)
    fast = layer.plan.compiled.fast_path()
    assert fast is not None
    x = _inputs(generator)
    call = layer._prepare(x, {})
    assert call is not None
    # The fast path divides by a float a and the general path by a tensor expression. Both
    # are correctly rounded, so they differ by at most a few ulps.
    assert torch.allclose(fast(x, 0.8), layer.plan.compiled(call), rtol=1e-15, atol=1e-15)


# -- against torch ops -----------------------------------------------------------------------


def _values_and_gradient(function: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    point = x.detach().requires_grad_(True)
    output = function(point)
    (gradient,) = torch.autograd.grad((output * torch.linspace(-1, 2, x.shape[-1], dtype=x.dtype)).sum(), point)
    return output.detach(), gradient


def _mixed_inputs(dtype: torch.dtype) -> torch.Tensor:
    x = 2 * torch.randn(16, 256, dtype=dtype, generator=torch.Generator().manual_seed(3))
    x[:4] = 30.0 * torch.sign(x[:4])
    return x


def test_soft_threshold_matches_softshrink(dtype: torch.dtype) -> None:
    z = Variable(256)
    layer = ProxLayer(0.4 * norm1(z), [], lam=2.0)
    x = _mixed_inputs(dtype)
    output, gradient = _values_and_gradient(layer, x)
    reference, reference_gradient = _values_and_gradient(lambda v: F.softshrink(v, 0.2), x)
    assert torch.equal(output, reference)
    assert torch.equal(gradient, reference_gradient)


def test_leaky_relu_activation_matches_torch(dtype: torch.dtype) -> None:
    activation = ACTIVATIONS["leaky_relu"]
    declaration = activation.declare(256)
    layer = ProxLayer(declaration.regularizer, declaration.constraints, lam=declaration.lam)
    x = _mixed_inputs(dtype)
    output, gradient = _values_and_gradient(layer, x)
    reference, reference_gradient = _values_and_gradient(activation.reference, x)
    assert "leaky_relu" in explain(layer)
    assert torch.equal(output, reference)
    assert torch.equal(gradient, reference_gradient)


def test_tensor_threshold_matches_softshrink() -> None:
    x = _mixed_inputs(torch.float64)
    assert torch.equal(soft_threshold(x, torch.tensor(0.3, dtype=torch.float64)), F.softshrink(x, 0.3))


def test_huber_prox_matches_torch_huber_gradient() -> None:
    # At the prox z of theta * h, (z - v) / theta = -h'(z), and torch's huber_loss gives h'.
    v = torch.linspace(-3, 3, 41, dtype=torch.float64)
    z = prox_huber(v, 0.7, 0.5).requires_grad_(True)
    loss = F.huber_loss(z, torch.zeros_like(z), reduction="sum", delta=0.5)
    (derivative,) = torch.autograd.grad(loss, z)
    assert torch.allclose((v - z.detach()) / 0.7, derivative, rtol=0, atol=1e-14)


# -- edge cases ----------------------------------------------------------------------------


def test_group_soft_threshold_leaves_ungrouped_entries() -> None:
    x = torch.tensor([[3.0, 5.0, 0.1, 4.0, -7.0, 0.1]], dtype=torch.float64)
    z = group_soft_threshold(x, 1.0, GROUPS, GROUP_WEIGHTS)
    assert float(z[0, 1]) == 5.0
    assert float(z[0, 4]) == -7.0
    assert torch.equal(z[0, [2, 5]], torch.zeros(2, dtype=torch.float64))
    assert torch.allclose(z[0, [0, 3]], torch.tensor([2.4, 3.2], dtype=torch.float64), rtol=0, atol=1e-15)


def test_group_soft_threshold_zero_group_gradient() -> None:
    x = torch.tensor([[0.0, 0.0, 1.0, 2.0]], dtype=torch.float64, requires_grad=True)
    threshold = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
    z = group_soft_threshold(x, threshold, [[0, 1], [2, 3]])
    gradient_x, gradient_threshold = torch.autograd.grad(z.sum(), (x, threshold))
    assert torch.isfinite(gradient_x).all()
    assert torch.equal(gradient_x[0, :2], torch.zeros(2, dtype=torch.float64))
    assert torch.isfinite(gradient_threshold).all()


def test_block_soft_threshold_zero_weight_identity() -> None:
    # With t = 0 the prox is the identity, also at v = 0, so the Jacobian is I there.
    z = Variable(3)
    t = Parameter(name="t", nonneg=True)
    layer = ProxLayer(t * norm2(z), [])
    x = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    output = layer(x, t=torch.tensor(0.0, dtype=torch.float64))
    (gradient,) = torch.autograd.grad((output * torch.tensor([1.0, 2.0, 3.0])).sum(), x)
    assert torch.equal(output.detach(), torch.zeros(1, 3, dtype=torch.float64))
    assert torch.equal(gradient, torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64))


def test_group_soft_threshold_rejects_overlap() -> None:
    with pytest.raises(DeclarationError, match="disjoint"):
        group_soft_threshold(torch.zeros(1, 4), 1.0, [[0, 1], [1, 2]])


def test_unknown_sign_weight_not_closed_form() -> None:
    z = Variable(3)
    t = Parameter(name="t")  # sign unknown, so t * norm1(z) may be concave
    with pytest.raises(NoRouteError, match="no closed form in the catalog"):
        ProxLayer(t * norm1(z), [], backend="closed_form")


def test_two_terms_not_closed_form() -> None:
    z = Variable(3)
    with pytest.raises(NoRouteError, match="no closed form in the catalog"):
        ProxLayer(norm1(z) + norm2(z), [], backend="closed_form")


def test_nonpositive_merged_weight_not_closed_form() -> None:
    z = Variable(3)
    # a = lam - 2 * 0.6 = -0.2, so the objective is unbounded below.
    with pytest.raises(NoRouteError, match="merged quadratic weight a = -0.2 is not positive"):
        ProxLayer(norm1(z) - 0.6 * sum_squares(z), [], lam=1.0, backend="closed_form")


def test_scaled_term_summary_names_mapping() -> None:
    z = Variable(3)
    text = explain(ProxLayer(0.4 * norm1(2 * z - 1), []))
    assert "s = 2, c = -1" in text
    assert "theta = t s^2 / a" in text


def test_tensor_lam_skips_fast_path() -> None:
    z = Variable(3)
    layer = ProxLayer(0.4 * norm1(z), [], lam=torch.tensor(2.0))
    assert layer.plan.compiled.fast_path() is None
    x = torch.tensor([[1.0, -0.1, -3.0]])
    assert torch.allclose(layer(x), F.softshrink(x, 0.2), rtol=0, atol=1e-7)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_float32_follows_input(case: Case, device: torch.device, generator: torch.Generator) -> None:
    x = _inputs(generator)
    values = case.parameters(generator, BATCH)
    reference = _layer(case, 0.8)(x, **values)
    layer = _layer(case, 0.8)
    output = layer(x.to(device, torch.float32), **{k: v.to(device, torch.float32) for k, v in values.items()})
    assert output.dtype == torch.float32
    assert output.device.type == device.type
    assert float((output.cpu().double() - reference).abs().max()) < 1e-5
