"""Tests of the closed_form projections: ReLU, box, simplex, L1/L2/L-infinity balls, affine sets.

Every case in CASES gets the same checks. The plan picks the closed_form entry, the output
agrees with the cvxpy backend, and gradients pass gradcheck in float64. The output
satisfies the optimality condition of the projection: it is feasible, and
``g . z = min_{w in C} g . w`` for the gradient ``g`` of the smooth part of the objective
at ``z``. At saturating inputs ``|x| = 30``, values and gradients match an independent
formula to 1e-12.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from proxopt import (
    Affine,
    Box,
    L1Ball,
    L2Ball,
    LinfBall,
    Parameter,
    ProxLayer,
    Simplex,
    Variable,
    explain,
    sum_squares,
)
from proxopt import sum as dsl_sum
from proxopt.activations import sparsemax_reference
from proxopt.backends.closed_form.projections import (
    project_affine,
    project_l1_ball,
    project_l2_ball,
    project_simplex,
)
from proxopt.errors import EmptySetError, InvalidInputError

N = 6
BATCH = 4
SEED_MATRIX = np.random.default_rng(7).standard_normal((2, N))
SEED_RHS = np.random.default_rng(8).standard_normal(2)

Values = dict[str, torch.Tensor]


@dataclass
class Case:
    """A projection problem and what the tests need to check it.

    Attributes:
        name: test id.
        entry: the closed_form registry name expected in ``explain``.
        declare: builds ``(R, constraints)`` for the variable.
        parameters: ``(generator, batch) -> values`` of the declared Parameters.
        gap: ``(g, z, values) -> (B,)``: ``g . z - min_{w in C} g . w`` plus the constraint
            violation of ``z``; zero exactly at the projection.
        saturated: independent formula ``(x, lam, values) -> z`` valid at ``|x| = 30``.
        merged_gradient: gradient of the terms of ``R`` (all merged) at ``z``.
    """

    name: str
    entry: str
    declare: Callable[[Variable], tuple[object, list[object]]]
    gap: Callable[[torch.Tensor, torch.Tensor, Values], torch.Tensor]
    saturated: Callable[[torch.Tensor, torch.Tensor | float, Values], torch.Tensor]
    parameters: Callable[[torch.Generator, int], Values] = lambda generator, batch: {}
    merged_gradient: Callable[[torch.Tensor, Values], torch.Tensor] = field(
        default=lambda z, values: torch.zeros_like(z)
    )

    def __repr__(self) -> str:
        return self.name


# -- optimality gaps: g . z - min_{w in C} g . w, plus the constraint violation ---------


def _dot(g: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return (g * z).sum(-1)


def _column(value: torch.Tensor | float) -> torch.Tensor | float:
    return value.unsqueeze(-1) if isinstance(value, torch.Tensor) and value.ndim == 1 else value


Bound = Callable[[Values], "torch.Tensor | float"] | float | np.ndarray | None


def _resolve(bound: Bound, values: Values) -> torch.Tensor | float | None:
    if callable(bound):
        return bound(values)
    if isinstance(bound, np.ndarray):
        return torch.as_tensor(bound, dtype=torch.float64)
    return bound


def _per_sample(name: str) -> Callable[[Values], torch.Tensor | float]:
    """Read a Parameter of shape () or (B,) as a scalar or a (B, 1) column."""
    return lambda values: _column(values[name])


def _shared(name: str) -> Callable[[Values], torch.Tensor | float]:
    return lambda values: values[name]


def _box_gap(lo: Bound, hi: Bound) -> Callable[..., torch.Tensor]:
    def gap(g: torch.Tensor, z: torch.Tensor, values: Values) -> torch.Tensor:
        low = _resolve(lo, values)
        high = _resolve(hi, values)
        tolerance = 1e-10
        # min_{lo <= w <= hi} g_i w_i is g_i lo_i for g_i > 0 and g_i hi_i for g_i < 0; an
        # infinite bound in the direction of descent makes the minimum -inf.
        lower_part = torch.where(g > 0, g * (low if low is not None else 0.0), 0.0)
        upper_part = torch.where(g < 0, g * (high if high is not None else 0.0), 0.0)
        unbounded = torch.zeros_like(g, dtype=torch.bool)
        if low is None:
            unbounded |= g > tolerance
        if high is None:
            unbounded |= g < -tolerance
        support = (lower_part + upper_part).sum(-1)
        violation = torch.zeros_like(z)
        if low is not None:
            violation = torch.maximum(violation, low - z)
        if high is not None:
            violation = torch.maximum(violation, z - high)
        result = _dot(g, z) - support + violation.amax(-1)
        return torch.where(unbounded.any(-1), math.inf, result)

    return gap


def _simplex_gap(radius: Bound) -> Callable[..., torch.Tensor]:
    def gap(g: torch.Tensor, z: torch.Tensor, values: Values) -> torch.Tensor:
        r = _resolve(radius, values)
        r_row = r.squeeze(-1) if isinstance(r, torch.Tensor) and r.ndim else r
        support = r_row * g.amin(-1)
        violation = torch.maximum((-z).relu().amax(-1), (z.sum(-1) - r_row).abs())
        return _dot(g, z) - support + violation

    return gap


def _ball_gap(norm: str, radius: Bound) -> Callable[..., torch.Tensor]:
    dual = {"l1": math.inf, "l2": 2.0, "linf": 1.0}[norm]
    order = {"l1": 1.0, "l2": 2.0, "linf": math.inf}[norm]

    def gap(g: torch.Tensor, z: torch.Tensor, values: Values) -> torch.Tensor:
        r = _resolve(radius, values)
        r_row = r.squeeze(-1) if isinstance(r, torch.Tensor) and r.ndim else r
        support = -r_row * torch.linalg.vector_norm(g, ord=dual, dim=-1)
        violation = (torch.linalg.vector_norm(z, ord=order, dim=-1) - r_row).relu()
        return _dot(g, z) - support + violation

    return gap


def _affine_gap(matrix: np.ndarray | str, rhs: np.ndarray | str) -> Callable[..., torch.Tensor]:
    def gap(g: torch.Tensor, z: torch.Tensor, values: Values) -> torch.Tensor:
        a = values[matrix] if isinstance(matrix, str) else torch.as_tensor(matrix)
        b = values[rhs] if isinstance(rhs, str) else torch.as_tensor(rhs)
        # g . w is constant on {A w = b} exactly when g lies in the row space of A, so the
        # gap is the norm of the part of g orthogonal to that row space.
        a_batch = a.expand(g.shape[0], *a.shape[-2:])
        solution = torch.linalg.lstsq(a_batch.mT, g.unsqueeze(-1)).solution
        orthogonal = g - (a_batch.mT @ solution).squeeze(-1)
        residual = (a_batch @ z.unsqueeze(-1)).squeeze(-1) - b
        return torch.linalg.vector_norm(orthogonal, dim=-1) + residual.abs().amax(-1)

    return gap


# -- independent formulas at |x| = 30 ----------------------------------------------------


def _simplex_on_ties(v: torch.Tensor, radius: torch.Tensor | float) -> torch.Tensor:
    """Simplex projection when the support is the set of row maxima (true at |x| = 30)."""
    support = (v == v.amax(-1, keepdim=True)).to(v.dtype)
    count = support.sum(-1, keepdim=True)
    threshold = ((v * support).sum(-1, keepdim=True) - _column(radius)) / count
    return support * (v - threshold)


def _positive_values(generator: torch.Generator, shape: tuple[int, ...], low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64)


def _affine_formula(v: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # z = v - A^T (A A^T)^{-1} (A v - b) for A of full row rank, by a linear solve.
    a_batch = a.expand(v.shape[0], *a.shape[-2:])
    residual = (a_batch @ v.unsqueeze(-1)) - b.unsqueeze(-1)
    return v - (a_batch.mT @ torch.linalg.solve(a_batch @ a_batch.mT, residual)).squeeze(-1)


def _per_sample_box(generator: torch.Generator, batch: int) -> Values:
    lo = _positive_values(generator, (batch,), -1.5, -0.2)
    return {"lo": lo, "hi": lo + _positive_values(generator, (batch,), 0.3, 2.0)}


def _shared_vector_box(generator: torch.Generator, batch: int) -> Values:
    lo = _positive_values(generator, (N,), -1.5, -0.2)
    return {"lo": lo, "hi": lo + _positive_values(generator, (N,), 0.3, 2.0)}


LOWS = np.linspace(-1.0, -0.1, N)
HIGHS = np.linspace(0.2, 1.5, N)

CASES = [
    Case(
        "relu",
        "nonnegative",
        lambda z: (None, [z >= 0]),
        _box_gap(0.0, None),
        lambda x, lam, values: torch.relu(x),
    ),
    Case(
        "nonnegative_box",
        "nonnegative",
        lambda z: (None, [Box(0, None)]),
        _box_gap(0.0, None),
        lambda x, lam, values: torch.relu(x),
    ),
    Case(
        "hardtanh",
        "box",
        lambda z: (None, [Box(-1.0, 1.0)]),
        _box_gap(-1.0, 1.0),
        lambda x, lam, values: F.hardtanh(x),
    ),
    Case(
        "box_scalar_comparisons",
        "box",
        lambda z: (None, [z >= -0.5, z <= 0.8]),
        _box_gap(-0.5, 0.8),
        lambda x, lam, values: torch.where(x > 0.8, 0.8, torch.where(x < -0.5, -0.5, x)),
    ),
    Case(
        "box_upper_only",
        "box",
        lambda z: (None, [z <= 0.3]),
        _box_gap(None, 0.3),
        lambda x, lam, values: torch.where(x > 0.3, 0.3, x),
    ),
    Case(
        "box_vector_bounds",
        "box",
        lambda z: (None, [Box(LOWS, HIGHS)]),
        _box_gap(LOWS, HIGHS),
        lambda x, lam, values: torch.where(
            x > torch.as_tensor(HIGHS),
            torch.as_tensor(HIGHS),
            torch.where(x < torch.as_tensor(LOWS), torch.as_tensor(LOWS), x),
        ),
    ),
    Case(
        "box_parameters_per_sample",
        "box",
        lambda z: (None, [Box(Parameter(name="lo"), Parameter(name="hi"))]),
        _box_gap(_per_sample("lo"), _per_sample("hi")),
        lambda x, lam, values: torch.where(
            x > _column(values["hi"]),
            _column(values["hi"]),
            torch.where(x < _column(values["lo"]), _column(values["lo"]), x),
        ),
        parameters=_per_sample_box,
    ),
    Case(
        "box_parameters_shared_vector",
        "box",
        lambda z: (None, [Box(Parameter(N, name="lo"), Parameter(N, name="hi"))]),
        _box_gap(_shared("lo"), _shared("hi")),
        lambda x, lam, values: torch.where(
            x > values["hi"], values["hi"], torch.where(x < values["lo"], values["lo"], x)
        ),
        parameters=_shared_vector_box,
    ),
    Case(
        "sparsemax",
        "simplex",
        lambda z: (None, [Simplex()]),
        _simplex_gap(1.0),
        lambda x, lam, values: sparsemax_reference(x),
    ),
    Case(
        "simplex_comparisons",
        "simplex",
        lambda z: (None, [z >= 0, dsl_sum(z) == 2.0]),
        _simplex_gap(2.0),
        lambda x, lam, values: _simplex_on_ties(x, 2.0),
    ),
    Case(
        "simplex_parameter_radius",
        "simplex",
        lambda z: (None, [Simplex(Parameter(name="r", nonneg=True))]),
        _simplex_gap(_per_sample("r")),
        lambda x, lam, values: _simplex_on_ties(x, values["r"]),
        parameters=lambda generator, batch: {"r": _positive_values(generator, (batch,), 0.5, 2.0)},
    ),
    Case(
        "simplex_merged_parameter_weight",
        "simplex",
        lambda z: (Parameter(name="c", nonneg=True) * sum_squares(z), [Simplex(1.5)]),
        _simplex_gap(1.5),
        # v = lam x / (lam + 2 c) has its row maxima where x has them.
        lambda x, lam, values: _simplex_on_ties(_column(lam) * x / (_column(lam) + 2 * _column(values["c"])), 1.5),
        parameters=lambda generator, batch: {"c": _positive_values(generator, (batch,), 0.1, 1.0)},
        merged_gradient=lambda z, values: 2 * _column(values["c"]) * z,
    ),
    Case(
        "l1_ball",
        "l1_ball",
        lambda z: (None, [L1Ball(1.2)]),
        _ball_gap("l1", 1.2),
        lambda x, lam, values: torch.sign(x) * _simplex_on_ties(x.abs(), 1.2),
    ),
    Case(
        "l1_ball_parameter",
        "l1_ball",
        lambda z: (None, [L1Ball(Parameter(name="r"))]),
        _ball_gap("l1", _per_sample("r")),
        lambda x, lam, values: torch.sign(x) * _simplex_on_ties(x.abs(), values["r"]),
        parameters=lambda generator, batch: {"r": _positive_values(generator, (batch,), 0.5, 3.0)},
    ),
    Case(
        "l2_ball",
        "l2_ball",
        lambda z: (None, [L2Ball(1.5)]),
        _ball_gap("l2", 1.5),
        lambda x, lam, values: 1.5 * x / x.pow(2).sum(-1, keepdim=True).sqrt(),
    ),
    Case(
        "l2_ball_shared_parameter",
        "l2_ball",
        lambda z: (None, [L2Ball(Parameter(name="r"))]),
        _ball_gap("l2", _shared("r")),
        lambda x, lam, values: values["r"] * x / x.pow(2).sum(-1, keepdim=True).sqrt(),
        parameters=lambda generator, batch: {"r": _positive_values(generator, (), 0.5, 3.0)},
    ),
    Case(
        "l2_ball_merged_terms",
        "l2_ball",
        lambda z: (0.5 * sum_squares(z - 1.0) + 0.3 * dsl_sum(z), [L2Ball(1.0)]),
        _ball_gap("l2", 1.0),
        # a = lam + 1 and y = lam x + 1 - 0.3, so v = (lam x + 0.7) / (lam + 1).
        lambda x, lam, values: (lambda v: v / v.pow(2).sum(-1, keepdim=True).sqrt())(
            (_column(lam) * x + 0.7) / (_column(lam) + 1.0)
        ),
        merged_gradient=lambda z, values: (z - 1.0) + 0.3,
    ),
    Case(
        "linf_ball",
        "linf_ball",
        lambda z: (None, [LinfBall(0.7)]),
        _ball_gap("linf", 0.7),
        lambda x, lam, values: 0.7 * torch.sign(x),
    ),
    Case(
        "linf_ball_parameter",
        "linf_ball",
        lambda z: (None, [LinfBall(Parameter(name="r"))]),
        _ball_gap("linf", _per_sample("r")),
        lambda x, lam, values: _column(values["r"]) * torch.sign(x),
        parameters=lambda generator, batch: {"r": _positive_values(generator, (batch,), 0.2, 1.5)},
    ),
    Case(
        "affine_constant",
        "affine",
        lambda z: (None, [Affine(SEED_MATRIX, SEED_RHS)]),
        _affine_gap(SEED_MATRIX, SEED_RHS),
        lambda x, lam, values: _affine_formula(x, torch.as_tensor(SEED_MATRIX), torch.as_tensor(SEED_RHS)),
    ),
    Case(
        "affine_matrix_comparison",
        "affine",
        lambda z: (None, [SEED_MATRIX @ z == SEED_RHS]),
        _affine_gap(SEED_MATRIX, SEED_RHS),
        lambda x, lam, values: _affine_formula(x, torch.as_tensor(SEED_MATRIX), torch.as_tensor(SEED_RHS)),
    ),
    Case(
        "affine_sum_equality",
        "affine",
        lambda z: (None, [dsl_sum(z) == 1.0]),
        _affine_gap(np.ones((1, N)), np.ones(1)),
        lambda x, lam, values: x - (x.sum(-1, keepdim=True) - 1.0) / N,
    ),
    Case(
        "affine_parameters",
        "affine",
        lambda z: (None, [Affine(Parameter((2, N), name="A"), Parameter(2, name="b"))]),
        _affine_gap("A", "b"),
        lambda x, lam, values: _affine_formula(x, values["A"], values["b"]),
        parameters=lambda generator, batch: {
            "A": torch.randn(batch, 2, N, generator=generator, dtype=torch.float64),
            "b": torch.randn(2, generator=generator, dtype=torch.float64),
        },
    ),
]


def _layer(case: Case, lam: float | torch.Tensor = 1.0, backend: str = "auto") -> ProxLayer:
    z = Variable(N)
    regularizer, constraints = case.declare(z)
    return ProxLayer(regularizer, constraints, lam=lam, backend=backend, variable=z)  # type: ignore[arg-type]


def _inputs(generator: torch.Generator, scale: float = 1.5) -> torch.Tensor:
    return scale * torch.randn(BATCH, N, generator=generator, dtype=torch.float64)


def _per_sample_lam(generator: torch.Generator) -> torch.Tensor:
    return _positive_values(generator, (BATCH,), 0.5, 2.0)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_explain_names_closed_form_entry(case: Case) -> None:
    text = explain(_layer(case))
    assert "backend: closed_form (chosen automatically)" in text
    assert f"computes: {case.entry}:" in text


@pytest.mark.parametrize("case", CASES, ids=repr)
@pytest.mark.parametrize("lam_kind", ["float", "per_sample"])
def test_projection_matches_cvxpy_backend(case: Case, lam_kind: str, generator: torch.Generator) -> None:
    lam: float | torch.Tensor = 0.8 if lam_kind == "float" else _per_sample_lam(generator)
    x = _inputs(generator)
    values = case.parameters(generator, BATCH)
    output = _layer(case, lam)(x, **values)
    reference = _layer(case, lam, backend="cvxpy")(x, **values)
    assert output.shape == x.shape
    assert float((output - reference).abs().max()) < 1e-6


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_projection_gradcheck_all_inputs(case: Case, generator: torch.Generator) -> None:
    x = _inputs(generator).requires_grad_(True)
    lam = _per_sample_lam(generator).requires_grad_(True)
    values = {name: value.requires_grad_(True) for name, value in case.parameters(generator, BATCH).items()}
    layer = _layer(case, lam.detach())
    names = list(values)

    def project(x: torch.Tensor, lam: torch.Tensor, *tensors: torch.Tensor) -> torch.Tensor:
        layer.lam = lam
        return layer(x, **dict(zip(names, tensors, strict=True)))

    assert torch.autograd.gradcheck(project, (x, lam, *values.values()))


@pytest.mark.parametrize("case", CASES, ids=repr)
@pytest.mark.parametrize("scale", [0.3, 1.5, 10.0])
def test_projection_satisfies_optimality(case: Case, scale: float, generator: torch.Generator) -> None:
    x = _inputs(generator, scale)
    lam = _per_sample_lam(generator)
    values = case.parameters(generator, BATCH)
    z = _layer(case, lam)(x, **values)
    # g is the gradient of the smooth objective (lam/2)||z - x||^2 + (merged terms of R).
    g = _column(lam) * (z - x) + case.merged_gradient(z, values)
    gap = case.gap(g, z, values)
    assert float(gap.max()) < 1e-10 * (1 + scale**2)
    assert float(gap.min()) > -1e-10 * (1 + scale**2)


@pytest.mark.parametrize("case", [c for c in CASES if c.merged_gradient is Case.merged_gradient], ids=repr)
@pytest.mark.parametrize("step", [0.5, 2.0])
def test_projection_fixed_point(case: Case, step: float, generator: torch.Generator) -> None:
    # z = P(x) implies z = P(z + s (x - z)) for every s >= 0: x - z lies in the normal cone at z.
    x = _inputs(generator)
    values = case.parameters(generator, BATCH)
    layer = _layer(case)
    z = layer(x, **values)
    assert torch.allclose(layer(z, **values), z, rtol=0, atol=1e-12)
    assert torch.allclose(layer(z + step * (x - z), **values), z, rtol=0, atol=1e-12)


def _saturating_inputs(generator: torch.Generator) -> torch.Tensor:
    signs = torch.randint(0, 2, (BATCH, N), generator=generator).to(torch.float64) * 2 - 1
    signs[0] = 1.0  # a row of ties at +30
    signs[1] = -1.0  # a row of ties at -30
    return 30.0 * signs


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_saturating_inputs_exact(case: Case, generator: torch.Generator) -> None:
    x = _saturating_inputs(generator).requires_grad_(True)
    lam = _per_sample_lam(generator).requires_grad_(True)
    values = {name: value.requires_grad_(True) for name, value in case.parameters(generator, BATCH).items()}
    weights = torch.randn(BATCH, N, generator=generator, dtype=torch.float64)
    inputs = [x, lam, *values.values()]

    layer = _layer(case, lam)
    output = layer(x, **values)
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
    if case.merged_gradient is Case.merged_gradient:
        assert torch.equal(fast(x, 0.8), layer.plan.compiled(call))
    else:
        # The two paths add the merged terms' offsets to lam * x in a different order.
        assert torch.allclose(fast(x, 0.8), layer.plan.compiled(call), rtol=1e-14, atol=1e-15)


# -- ReLU and hard tanh against torch ----------------------------------------------------


@pytest.mark.parametrize(
    ("constraint", "reference"),
    [(lambda z: z >= 0, torch.relu), (lambda z: Box(-1.0, 1.0), F.hardtanh)],
    ids=["relu", "hardtanh"],
)
def test_activation_matches_torch_bitwise(
    constraint: Callable[[Variable], object], reference: Callable[[torch.Tensor], torch.Tensor], dtype: torch.dtype
) -> None:
    z = Variable(256)
    layer = ProxLayer(None, [constraint(z)], variable=z)  # type: ignore[list-item]
    x = 3 * torch.randn(8, 3, 256, dtype=dtype)
    assert torch.equal(layer(x), reference(x))
    assert layer(x).dtype == dtype


def test_projection_keeps_leading_dims() -> None:
    z = Variable(N)
    layer = ProxLayer(None, [Simplex()], variable=z)
    x = torch.randn(2, 3, N, dtype=torch.float64)
    assert layer(x).shape == (2, 3, N)
    assert layer(x[0, 0]).shape == (N,)
    assert torch.allclose(layer(x)[1, 2], layer(x[1, 2]), rtol=0, atol=1e-15)


# -- the simplex projection ----------------------------------------------------------------


def _bisection_simplex(v: np.ndarray, radius: float) -> np.ndarray:
    """Reference simplex projection by bisection on the threshold, in float64."""
    finite = v[np.isfinite(v)]
    low, high = finite.max() - radius - 1.0, finite.max()
    for _ in range(200):
        middle = 0.5 * (low + high)
        if np.maximum(v - middle, 0.0).sum() > radius:
            low = middle
        else:
            high = middle
    return np.maximum(v - 0.5 * (low + high), 0.0)


tie_values = st.sampled_from([-2.0, -0.5, 0.0, 0.25, 1.0, 3.0])
rows = st.lists(st.one_of(tie_values, st.floats(-5, 5), st.just(-math.inf)), min_size=1, max_size=9).filter(
    lambda row: any(math.isfinite(value) for value in row)
)


@given(row=rows, radius=st.sampled_from([0.0, 0.5, 1.0, 4.0]))
def test_simplex_matches_bisection(row: list[float], radius: float) -> None:
    v = np.array(row)
    z = project_simplex(torch.tensor(v).unsqueeze(0), radius)[0].numpy()
    assert np.abs(z - _bisection_simplex(v, radius)).max() < 1e-9
    assert abs(z.sum() - radius) < 1e-12 * max(1, len(row))
    assert (z >= 0).all()
    assert (z[np.isneginf(v)] == 0).all()


@given(row=st.lists(st.floats(-50, 50), min_size=2, max_size=12))
def test_sparsemax_matches_sort_reference(row: list[float]) -> None:
    x = torch.tensor([row], dtype=torch.float64)
    assert torch.allclose(project_simplex(x), sparsemax_reference(x), rtol=0, atol=1e-12)


def test_simplex_ties_split_evenly() -> None:
    x = torch.tensor([[2.0, 2.0, 2.0, -1.0], [0.5, 0.5, 0.5, 0.5]], dtype=torch.float64)
    expected = torch.tensor([[1 / 3, 1 / 3, 1 / 3, 0.0], [0.25, 0.25, 0.25, 0.25]], dtype=torch.float64)
    assert torch.allclose(project_simplex(x), expected, rtol=0, atol=1e-15)


def test_simplex_negative_infinity_gets_zero() -> None:
    x = torch.tensor([[0.3, -math.inf, 0.1, -math.inf]], dtype=torch.float64, requires_grad=True)
    z = project_simplex(x)
    (gradient,) = torch.autograd.grad((z * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum(), x)
    assert torch.allclose(z.detach(), torch.tensor([[0.6, 0.0, 0.4, 0.0]], dtype=torch.float64), rtol=0, atol=1e-15)
    assert torch.isfinite(gradient).all()
    assert float(gradient[0, 1]) == 0.0
    assert float(gradient[0, 3]) == 0.0


def test_simplex_float32_near_1e8() -> None:
    # Entries of 1e8 + k * 8 are exact in float32, whose spacing there is 8. A threshold
    # computed from the raw partial sums would lose every digit below 8.
    offsets = torch.tensor([[0.0, -8.0, 0.0, -16.0, -800.0], [16.0, 8.0, 8.0, 0.0, -8.0]])
    x = (1e8 + offsets).to(torch.float32)
    z = project_simplex(x, 10.0)
    for row in range(2):
        reference = _bisection_simplex(x[row].double().numpy() - 1e8, 10.0)
        assert float((z[row].double() - torch.tensor(reference)).abs().max()) < 1e-5
    assert z.dtype == torch.float32


def test_sparsemax_jacobian_exact() -> None:
    x = torch.tensor([0.9, 0.1, 0.5, -1.0, 0.45], dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(lambda v: project_simplex(v), x)
    support = project_simplex(x) > 0
    indicator = support.to(torch.float64)
    expected = torch.diag(indicator) - torch.outer(indicator, indicator) / indicator.sum()
    assert int(support.sum()) == 3
    assert torch.allclose(jacobian, expected, rtol=0, atol=1e-15)


# torch 2.13 loads its forward-mode decompositions with torch.jit.script on first use,
# which emits this DeprecationWarning from inside torch.
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_simplex_forward_mode_matches_reverse(generator: torch.Generator) -> None:
    x = torch.tensor([[0.9, 0.1, 0.5, -1.0, 0.45], [0.2, 0.3, -0.1, 0.0, 2.0]], dtype=torch.float64)
    radius = torch.tensor([1.0, 3.0], dtype=torch.float64)
    tangent_x = torch.randn(2, 5, generator=generator, dtype=torch.float64)
    tangent_radius = torch.randn(2, generator=generator, dtype=torch.float64)
    with torch.autograd.forward_ad.dual_level():
        dual = project_simplex(
            torch.autograd.forward_ad.make_dual(x, tangent_x),
            torch.autograd.forward_ad.make_dual(radius, tangent_radius),
        )
        forward = torch.autograd.forward_ad.unpack_dual(dual).tangent
    jacobian_x, jacobian_radius = torch.autograd.functional.jacobian(project_simplex, (x, radius))
    reverse = torch.einsum("bnij,ij->bn", jacobian_x, tangent_x) + torch.einsum(
        "bni,i->bn", jacobian_radius, tangent_radius
    )
    assert torch.allclose(forward, reverse, rtol=0, atol=1e-15)


def test_simplex_radius_gradient_exact() -> None:
    x = torch.tensor([[0.9, 0.3, 0.5, -1.0]], dtype=torch.float64)
    radius = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    z = project_simplex(x, radius)
    weights = torch.tensor([1.0, -2.0, 0.5, 7.0], dtype=torch.float64)
    (gradient,) = torch.autograd.grad((z * weights).sum(), radius)
    support = (z > 0).to(torch.float64)
    assert float(gradient) == pytest.approx(float((weights * support).sum() / support.sum()), abs=1e-15)


def test_simplex_second_derivative_zero() -> None:
    x = torch.tensor([[0.9, 0.3, 0.5, -1.0]], dtype=torch.float64, requires_grad=True)
    (gradient,) = torch.autograd.grad((project_simplex(x) ** 2).sum(), x, create_graph=True)
    (hessian_row,) = torch.autograd.grad(gradient[0, 0], x)
    support = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    # d/dx of 2 J^T z = 2 J^T J, with J = diag(1_S) - 1_S 1_S^T / |S| (a projection).
    expected = 2 * (torch.diag(support) - torch.outer(support, support) / 3)[0]
    assert torch.allclose(hessian_row[0], expected, rtol=0, atol=1e-14)


def test_simplex_negative_radius_rejected() -> None:
    with pytest.raises(EmptySetError, match="radius is -1"):
        project_simplex(torch.zeros(1, 3), -1.0)


# -- balls and affine sets -----------------------------------------------------------------


def test_l1_ball_keeps_inside_rows() -> None:
    x = torch.tensor([[0.2, -0.3, 0.1], [2.0, -1.0, 0.5]], dtype=torch.float64)
    z = project_l1_ball(x, 1.0)
    assert torch.equal(z[0], x[0])
    assert float(z[1].abs().sum()) == pytest.approx(1.0, abs=1e-15)
    assert torch.allclose(z[1], torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), rtol=0, atol=1e-15)


def test_l2_ball_zero_input_finite_gradient() -> None:
    x = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    radius = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    z = project_l2_ball(x, radius)
    gradient_x, gradient_radius = torch.autograd.grad(z.sum(), (x, radius))
    assert torch.equal(z.detach(), torch.zeros(2, 3, dtype=torch.float64))
    assert torch.equal(gradient_x, torch.ones(2, 3, dtype=torch.float64))
    assert float(gradient_radius) == 0.0


def test_affine_rank_deficient_matrix() -> None:
    # The second equation repeats the first, so A has rank 1 and A A^T is singular.
    matrix = np.array([[1.0, 1.0, 0.0], [2.0, 2.0, 0.0]])
    rhs = np.array([1.0, 2.0])
    z = Variable(3)
    layer = ProxLayer(None, [Affine(matrix, rhs)], variable=z)
    x = torch.tensor([[3.0, -1.0, 0.5]], dtype=torch.float64)
    # x1 + x2 = 2 exceeds 1 by 1, so both move by 1/2 along (1, 1, 0).
    assert torch.allclose(layer(x), torch.tensor([[2.5, -1.5, 0.5]], dtype=torch.float64), rtol=0, atol=1e-14)


def test_affine_shared_and_batched_matrix_agree(generator: torch.Generator) -> None:
    matrix = torch.randn(2, N, generator=generator, dtype=torch.float64)
    rhs = torch.randn(2, generator=generator, dtype=torch.float64)
    v = torch.randn(3, N, generator=generator, dtype=torch.float64)
    shared = project_affine(v, matrix, rhs)
    batched = project_affine(v, matrix.expand(3, 2, N), rhs.expand(3, 2))
    assert torch.allclose(shared, batched, rtol=0, atol=1e-13)


def test_affine_float32_constant_matrix_accurate() -> None:
    z = Variable(N)
    layer = ProxLayer(None, [Affine(SEED_MATRIX, SEED_RHS)], variable=z)
    x = torch.randn(5, N)
    output = layer(x)
    reference = _affine_formula(x.double(), torch.as_tensor(SEED_MATRIX), torch.as_tensor(SEED_RHS))
    assert output.dtype == torch.float32
    assert float((output.double() - reference).abs().max()) < 1e-5


def test_nonpositive_merged_weight_rejected() -> None:
    z = Variable(3)
    c = Parameter(name="c")
    layer = ProxLayer(-c * sum_squares(z), [L2Ball(1.0)], lam=1.0)
    with pytest.raises(InvalidInputError, match="merged quadratic weight a"):
        layer(torch.ones(2, 3, dtype=torch.float64), c=torch.tensor(0.5, dtype=torch.float64))


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
