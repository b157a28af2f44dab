"""Tests of the smooth backend: inner solves, both backward modes, outcomes and softplus.

Tolerance arithmetic of the gradient checks (float64): the forward solves run to a
gradient tolerance of 1e-12, so each solution is off by at most 1e-12 / mu, where
mu >= 0.3 is the smallest eigenvalue of lam I + H in these cases (Newton usually ends
near 1e-15). gradcheck's central differences with eps = 1e-6 turn that into at most
3e-6 in the numerical Jacobian, below its atol of 1e-5. The perturbation backward uses
h = (1e-12)^(1/3) = 1e-4, so its own error is about h^2 + 1e-12 / h ~ 2e-8 times ||g||.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from scipy.special import spence

import proxopt as po
from proxopt.activations import ACTIVATIONS
from proxopt.backends.smooth.gradients import conjugate_gradient
from proxopt.backends.smooth.objective import hessian_matrix
from proxopt.special import dilogarithm, dilogarithm_exp
from proxopt.verify import verify_activation

TIGHT = {"tol": 1e-12}
GRADCHECK = {"eps": 1e-6, "atol": 1e-5, "rtol": 1e-5}
BACKWARD_MODES = [
    {"gradient": "implicit", "linear_solver": "direct"},
    {"gradient": "implicit", "linear_solver": "cg"},
    {"gradient": "perturbation"},
]
MODE_IDS = ["implicit-direct", "implicit-cg", "perturbation"]


def _logcosh(v: torch.Tensor) -> torch.Tensor:
    return torch.log(torch.cosh(v)).sum(-1)


def _negative_cosine(v: torch.Tensor) -> torch.Tensor:
    return -torch.cos(v).sum(-1)


def _double_well(v: torch.Tensor) -> torch.Tensor:
    return 0.25 * ((v * v - 1) ** 2).sum(-1)


# -- gradients -----------------------------------------------------------------------------


def _convex_layer(options: dict) -> tuple[po.ProxLayer, dict[str, po.Parameter]]:
    z = po.Variable(4)
    shift = po.Parameter(4, name="shift")
    weight = po.Parameter((), name="weight", nonneg=True)
    factor = po.Parameter((4, 2), name="factor")
    regularizer = (
        weight * po.logistic(z)
        + po.quad_form(z, factor)
        + po.smooth(_logcosh, z - shift, convex=True, name="logcosh")
        + 0.2 * po.sum_squares(z - 1)
    )
    layer = po.ProxLayer(regularizer, lam=1.0, backend="smooth", smooth_options={**TIGHT, **options})
    return layer, {"shift": shift, "weight": weight, "factor": factor}


@pytest.mark.parametrize("options", BACKWARD_MODES, ids=MODE_IDS)
def test_convex_gradients_pass_gradcheck(options: dict, generator: torch.Generator) -> None:
    layer, _ = _convex_layer(options)
    x = torch.randn(3, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    lam = (0.5 + torch.rand(3, generator=generator, dtype=torch.float64)).requires_grad_()
    shift = torch.randn(3, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    factor = (0.5 * torch.randn(4, 2, generator=generator, dtype=torch.float64)).requires_grad_()

    def prox(x, lam, shift, weight, factor):
        layer.lam = lam
        return layer(x, shift=shift, weight=weight, factor=factor)

    assert torch.autograd.gradcheck(prox, (x, lam, shift, weight, factor), **GRADCHECK)


def _nonconvex_layer(fn, lam: float, options: dict) -> po.ProxLayer:
    z = po.Variable(3)
    scale = po.Parameter((), name="scale")
    return po.ProxLayer(scale * po.smooth(fn, z), lam=lam, backend="smooth", smooth_options={**TIGHT, **options})


@pytest.mark.parametrize("options", BACKWARD_MODES, ids=MODE_IDS)
def test_negative_cosine_gradients_pass_gradcheck(options: dict, generator: torch.Generator) -> None:
    # R(z) = -s sum cos(z_i) is nonconvex; with lam = 0.7 the objective's Hessian
    # lam + s cos(z_i) is positive at the solutions checked below.
    layer = _nonconvex_layer(_negative_cosine, 0.7, options)
    x = (4 * torch.rand(3, 3, generator=generator, dtype=torch.float64) - 2).requires_grad_()
    scale = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    lam = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    output = layer(x, scale=scale).detach()
    assert bool((0.7 + torch.cos(output) > 0.3).all())

    def prox(x, lam, scale):
        layer.lam = lam
        return layer(x, scale=scale)

    assert torch.autograd.gradcheck(prox, (x, lam, scale), **GRADCHECK)


@pytest.mark.parametrize("options", BACKWARD_MODES, ids=MODE_IDS)
def test_double_well_gradients_pass_gradcheck(options: dict, generator: torch.Generator) -> None:
    # R(z) = s/4 sum (z_i^2 - 1)^2 has Hessian 3 z^2 - 1, negative near 0; inputs of size
    # 1..2 have solutions with |z| > 0.8, where lam + R'' >= 0.5 + 0.92 > 0.
    layer = _nonconvex_layer(_double_well, 0.5, options)
    signs = torch.where(torch.rand(3, 3, generator=generator) > 0.5, 1.0, -1.0).double()
    x = (signs * (1 + torch.rand(3, 3, generator=generator, dtype=torch.float64))).requires_grad_()
    scale = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    output = layer(x, scale=scale).detach()
    assert bool((0.5 + 3 * output**2 - 1 > 0.4).all())
    assert torch.autograd.gradcheck(lambda x, scale: layer(x, scale=scale), (x, scale), **GRADCHECK)


def test_backward_modes_agree_closely(generator: torch.Generator) -> None:
    layers = [_convex_layer(options)[0] for options in BACKWARD_MODES]
    x = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    shift = torch.randn(4, generator=generator, dtype=torch.float64)
    factor = torch.randn(4, 2, generator=generator, dtype=torch.float64)
    upstream = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    gradients = []
    for layer in layers:
        leaf = x.clone().requires_grad_()
        output = layer(leaf, shift=shift, weight=torch.tensor(0.5, dtype=torch.float64), factor=factor)
        gradients.append(torch.autograd.grad((output * upstream).sum(), leaf)[0])
    # Direct and CG solve the same system to 1e-12; perturbation's error is ~1e-8.
    assert torch.allclose(gradients[0], gradients[1], atol=1e-10, rtol=0)
    assert torch.allclose(gradients[0], gradients[2], atol=1e-6, rtol=0)


# -- values against cvxpy and optimality conditions ---------------------------------------


def _cvxpy_cases() -> list[tuple[str, object, list, float]]:
    z = po.Variable(5)
    matrix = np.array(
        [[2.0, 0.5, 0, 0, 0], [0.5, 1.0, 0, 0, 0], [0, 0, 1.0, 0, 0], [0, 0, 0, 0.5, 0.2], [0, 0, 0, 0.2, 0.5]]
    )
    q = np.arange(5.0) / 5
    return [
        ("logistic", po.logistic(z) + 0.3 * po.sum_squares(z), [], 1.5),
        ("huber-quad-linear", po.huber(z, 0.5) + po.quad_form(z, matrix) + q @ z, [], 1.0),
        ("neg-entropy", po.neg_entropy(z) + 0.5 * po.sum_squares(z), [], 1.0),
        ("binary-neg-entropy", po.binary_neg_entropy(z), [], 2.0),
    ]


@pytest.mark.parametrize("case", _cvxpy_cases(), ids=lambda case: case[0])
def test_values_match_cvxpy_backend(case, generator: torch.Generator) -> None:
    _, regularizer, constraints, lam = case
    x = 2 * torch.randn(6, 5, generator=generator, dtype=torch.float64)
    smooth = po.ProxLayer(regularizer, constraints, lam=lam, backend="smooth", smooth_options=TIGHT)
    reference = po.ProxLayer(regularizer, constraints, lam=lam, backend="cvxpy")
    assert torch.allclose(smooth(x), reference(x), atol=1e-6, rtol=0)


def test_logistic_prox_satisfies_optimality(generator: torch.Generator) -> None:
    z = po.Variable(5)
    layer = po.ProxLayer(po.logistic(z) + 0.3 * po.sum_squares(z - 1), lam=1.5, backend="smooth")
    x = 3 * torch.randn(8, 5, generator=generator, dtype=torch.float64)
    output = layer(x)
    # The gradient of sum softplus(z) + 0.3 ||z - 1||^2 + 0.75 ||z - x||^2, written out.
    residual = torch.sigmoid(output) + 0.6 * (output - 1) + 1.5 * (output - x)
    assert residual.abs().max() <= 1e-9


def test_double_well_prox_is_local_minimizer(generator: torch.Generator) -> None:
    layer = _nonconvex_layer(_double_well, 0.5, {})
    x = 3 * torch.randn(8, 3, generator=generator, dtype=torch.float64)
    output = layer(x, scale=torch.tensor(1.0, dtype=torch.float64))
    stationarity = output**3 - output + 0.5 * (output - x)
    curvature = 3 * output**2 - 1 + 0.5
    assert stationarity.abs().max() <= 1e-9
    assert bool((curvature > 0).all())


def test_newton_and_lbfgs_agree(generator: torch.Generator) -> None:
    z = po.Variable(6)
    regularizer = po.smooth(_negative_cosine, z) + po.logistic(z)
    x = 2 * torch.randn(10, 6, generator=generator, dtype=torch.float64)
    newton = po.ProxLayer(regularizer, lam=1.2, backend="smooth", smooth_options={**TIGHT, "method": "newton"})
    lbfgs = po.ProxLayer(regularizer, lam=1.2, backend="smooth", smooth_options={**TIGHT, "method": "lbfgs"})
    assert torch.allclose(newton(x), lbfgs(x), atol=1e-10, rtol=0)
    assert lbfgs.solver_outcome.method == "lbfgs"
    assert newton.solver_outcome.method == "newton"


def test_separable_problem_uses_diagonal(generator: torch.Generator) -> None:
    z = po.Variable(100)
    regularizer = po.logistic(z) + po.huber(z - 1, 0.5) + po.binary_neg_entropy(0.5 * z + 0.5)
    diagonal = po.ProxLayer(regularizer, lam=1.0, backend="smooth", smooth_options=TIGHT)
    dense = po.ProxLayer(
        regularizer, lam=1.0, backend="smooth", smooth_options={**TIGHT, "separable": False, "method": "newton"}
    )
    # Inputs of size <= 4 keep z away from the ends of binary_neg_entropy's domain (-1, 1),
    # where 1 - (z + 1) / 2 loses the digits a gradient tolerance of 1e-12 needs.
    x = torch.randn(4, 100, generator=generator, dtype=torch.float64)
    assert "diagonal" in diagonal.explain()
    assert torch.allclose(diagonal(x), dense(x), atol=1e-10, rtol=0)
    assert diagonal.solver_outcome.method == "newton"
    assert int(diagonal.solver_outcome.iterations.max()) <= 20


def test_separable_gradients_pass_gradcheck(generator: torch.Generator) -> None:
    z = po.Variable(4)
    shift = po.Parameter(4, name="shift")
    regularizer = po.logistic(z - shift) + po.smooth(_negative_cosine, z)
    layer = po.ProxLayer(regularizer, lam=1.5, backend="smooth", smooth_options={**TIGHT, "separable": True})
    x = torch.randn(3, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    shift_value = torch.randn(3, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    assert "diagonal" in layer.explain()
    assert torch.autograd.gradcheck(lambda x, s: layer(x, shift=s), (x, shift_value), **GRADCHECK)


def test_false_separable_claim_raises(generator: torch.Generator) -> None:
    z = po.Variable(4)
    coupled = po.smooth(lambda v: torch.log(torch.cosh(v.sum(-1))), z, convex=True, name="logcosh_of_sum")
    layer = po.ProxLayer(coupled, lam=1.0, backend="smooth", smooth_options={"separable": True})
    x = torch.randn(2, 4, generator=generator, dtype=torch.float64)
    with pytest.raises(po.InvalidInputError, match=r"not diagonal"):
        layer(x)


def test_float32_converges_at_default_tolerance(generator: torch.Generator) -> None:
    z = po.Variable(80)
    regularizer = po.smooth(_logcosh, z, convex=True) + po.logistic(z)
    layer = po.ProxLayer(regularizer, lam=1.0, backend="smooth")
    x = 2 * torch.randn(16, 80, generator=generator, dtype=torch.float64)
    output32 = layer(x.float())
    outcome = layer.solver_outcome
    output64 = layer(x)
    assert output32.dtype == torch.float32
    assert outcome.method == "lbfgs"
    assert outcome.all_converged
    # The default float32 tolerance is 1e-4 on a gradient whose Hessian is >= 1.
    assert torch.allclose(output32.double(), output64, atol=2e-4, rtol=0)


# -- per-batch variables --------------------------------------------------------------------


def _per_batch_layers() -> tuple[po.ProxLayer, po.ProxLayer]:
    z = po.Variable(3, scope="batch")
    weights = po.Parameter((po.BATCH, po.BATCH), name="weights", nonneg=True)
    regularizer = po.logistic(z) + po.laplacian_quadratic(z, weights)
    smooth = po.ProxLayer(regularizer, lam=1.0, backend="smooth", smooth_options=TIGHT)
    reference = po.ProxLayer(regularizer, lam=1.0, backend="cvxpy")
    return smooth, reference


def test_per_batch_values_match_cvxpy(generator: torch.Generator) -> None:
    smooth, reference = _per_batch_layers()
    x = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    weights = torch.rand(5, 5, generator=generator, dtype=torch.float64)
    assert torch.allclose(smooth(x, weights=weights), reference(x, weights=weights), atol=1e-6, rtol=0)


@pytest.mark.parametrize("options", BACKWARD_MODES[1:], ids=MODE_IDS[1:])
def test_per_batch_gradients_pass_gradcheck(options: dict, generator: torch.Generator) -> None:
    z = po.Variable(3, scope="batch")
    weights = po.Parameter((po.BATCH, po.BATCH), name="weights", nonneg=True)
    regularizer = (
        po.logistic(z)
        + po.laplacian_quadratic(z, weights)
        + po.smooth(lambda matrix: _logcosh(matrix.sum(-2)), z, convex=True, name="column_sums")
    )
    layer = po.ProxLayer(regularizer, lam=1.0, backend="smooth", smooth_options={**TIGHT, **options})
    x = torch.randn(4, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    matrix = (0.5 * torch.rand(4, 4, generator=generator, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w: layer(x, weights=w), (x, matrix), **GRADCHECK)


# -- outcomes and failures -------------------------------------------------------------------


def _slow_layer(**options) -> po.ProxLayer:
    z = po.Variable(4)
    regularizer = po.smooth(_double_well, z) + po.logistic(z)
    return po.ProxLayer(
        regularizer, lam=0.6, backend="smooth", smooth_options={"method": "lbfgs", "max_iter": 2, **options}
    )


def test_outcome_reports_converged_items(generator: torch.Generator) -> None:
    layer, _ = _convex_layer({})
    x = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    values = {
        "shift": torch.zeros(4, dtype=torch.float64),
        "weight": torch.tensor(1.0, dtype=torch.float64),
        "factor": torch.zeros(4, 2, dtype=torch.float64),
    }
    layer(x, **values)
    outcome = layer.solver_outcome
    assert outcome.converged.tolist() == [True, True, True]
    assert bool((outcome.gradient_norm <= 1e-12).all())
    assert bool((outcome.iterations >= 1).all())
    assert outcome.statuses == ["converged"] * 3


def test_iteration_limit_warns_with_numbers(generator: torch.Generator) -> None:
    layer = _slow_layer()
    x = 3 * torch.randn(3, 4, generator=generator, dtype=torch.float64)
    with pytest.warns(po.SolverWarning, match=r"did not converge on 3 of 3 batch items") as caught:
        layer(x)
    message = str(caught[0].message)
    assert "after 2 iterations" in message
    assert "gradient norm (max abs)" in message
    assert "iteration limit reached" in message
    outcome = layer.solver_outcome
    assert outcome.iterations.tolist() == [2, 2, 2]
    assert not bool(outcome.converged.any())
    assert bool((outcome.gradient_norm > 1e-10).all())


def test_iteration_limit_raises_when_asked(generator: torch.Generator) -> None:
    layer = _slow_layer(on_failure="raise")
    x = 3 * torch.randn(3, 4, generator=generator, dtype=torch.float64)
    with pytest.raises(po.SolverFailedError, match=r"after 2 iterations") as caught:
        layer(x)
    assert caught.value.failed_items == [0, 1, 2]
    assert caught.value.status == "iteration limit reached"


@pytest.mark.parametrize("options", BACKWARD_MODES, ids=MODE_IDS)
def test_local_maximum_backward_warns(options: dict) -> None:
    # F(z) = cos(z) + (0.5 / 2) z^2 has a stationary point at z = x = 0 with F'' = -0.5, so
    # the solve stops there at once and lam I + H is negative definite.
    z = po.Variable(2)
    regularizer = po.smooth(lambda v: torch.cos(v).sum(-1), z)
    layer = po.ProxLayer(regularizer, lam=0.5, backend="smooth", smooth_options=options)
    x = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
    output = layer(x)
    with pytest.warns(po.SolverWarning, match=r"not positive definite") as caught:
        (gradient,) = torch.autograd.grad(output.sum(), x)
    assert "-0.5" in str(caught[0].message)
    assert bool((gradient == 0).all())
    assert layer.plan.compiled.last_backward_outcome.not_positive_definite.tolist() == [True]


def test_local_maximum_backward_raises_when_asked() -> None:
    z = po.Variable(2)
    layer = po.ProxLayer(
        po.smooth(lambda v: torch.cos(v).sum(-1), z), lam=0.5, backend="smooth", smooth_options={"on_failure": "raise"}
    )
    x = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
    with pytest.raises(po.SolverFailedError, match=r"not positive definite"):
        layer(x).sum().backward()


def test_conjugate_gradient_flags_indefinite_matrix() -> None:
    matrix = torch.tensor([[[2.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, -1.0]]], dtype=torch.float64)
    rhs = torch.tensor([[1.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    solution, outcome = conjugate_gradient(lambda v: (matrix @ v.unsqueeze(-1)).squeeze(-1), rhs, 1e-12, 10)
    assert outcome.not_positive_definite.tolist() == [False, True]
    assert outcome.converged.tolist() == [True, False]
    assert torch.allclose(solution[0], torch.tensor([0.5, 1.0], dtype=torch.float64))
    assert outcome.smallest_curvature[1].item() == -1.0


# -- domains and starting points -------------------------------------------------------------


def _xlogx(v: torch.Tensor) -> torch.Tensor:
    return torch.special.xlogy(v, v).sum(-1)


def test_undefined_start_raises_with_hint(generator: torch.Generator) -> None:
    z = po.Variable(3)
    layer = po.ProxLayer(po.smooth(_xlogx, z, convex=True), lam=1.0, backend="smooth")
    x = -torch.rand(2, 3, generator=generator, dtype=torch.float64) - 0.1
    with pytest.raises(po.InvalidInputError, match=r"'domain'"):
        layer(x)


def test_domain_option_matches_neg_entropy(generator: torch.Generator) -> None:
    z = po.Variable(3)
    smooth = po.ProxLayer(
        po.smooth(_xlogx, z, convex=True), lam=1.0, backend="smooth", smooth_options={**TIGHT, "domain": (0.0, None)}
    )
    reference = po.ProxLayer(po.neg_entropy(z), lam=1.0, backend="cvxpy")
    x = 3 * torch.randn(4, 3, generator=generator, dtype=torch.float64)
    assert torch.allclose(smooth(x), reference(x), atol=1e-6, rtol=0)


def test_initial_option_must_match_shape() -> None:
    z = po.Variable(3)
    layer = po.ProxLayer(po.logistic(z), lam=1.0, backend="smooth", smooth_options={"initial": lambda x: x[:, :2]})
    with pytest.raises(po.InvalidInputError, match=r"expected a tensor of the input's shape"):
        layer(torch.zeros(2, 3))


# -- plan and options -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "culprit"),
    [
        (lambda z: (po.norm1(z), []), "norm1"),
        (lambda z: (po.sum_squares(po.neg(z)), []), "neg(z)"),
        (lambda z: (po.logistic(z), [z >= 0]), "constraint"),
        (lambda z: (po.tv1d(z), []), "tv1d"),
    ],
    ids=["norm1", "neg-part", "constraint", "tv1d"],
)
def test_forced_smooth_names_culprit(build, culprit: str) -> None:
    z = po.Variable(3)
    regularizer, constraints = build(z)
    with pytest.raises(po.NoRouteError, match=re.escape(culprit)):
        po.ProxLayer(regularizer, constraints, backend="smooth")


def test_nonconvex_needs_opt_in() -> None:
    z = po.Variable(3)
    regularizer = po.smooth(_negative_cosine, z)
    with pytest.raises(po.NoRouteError, match="allow_smooth"):
        po.ProxLayer(regularizer)
    layer = po.ProxLayer(regularizer, allow_smooth=True)
    assert layer.plan.backend == "smooth"


@pytest.mark.parametrize(
    "options",
    [{"method": "gradient_descent"}, {"tolerance": 1e-6}, {"tol": -1.0}, {"max_iter": 0}, {"domain": (1.0, 0.0)}],
    ids=["method", "unknown-key", "tol", "max-iter", "domain"],
)
def test_invalid_options_raise(options: dict) -> None:
    z = po.Variable(3)
    with pytest.raises(po.DeclarationError, match="smooth_options"):
        po.ProxLayer(po.logistic(z), backend="smooth", smooth_options=options)


def test_solver_outcome_absent_elsewhere() -> None:
    z = po.Variable(3)
    layer = po.ProxLayer(po.sum_squares(z), backend="cvxpy")
    layer(torch.ones(2, 3, dtype=torch.float64))
    assert layer.solver_outcome is None


def test_hessian_paths_agree(generator: torch.Generator) -> None:
    point = torch.randn(5, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    value = (torch.log(torch.cosh(point)) * point.roll(1, -1)).sum(-1)
    (gradient,) = torch.autograd.grad(value.sum(), point, create_graph=True)
    looped = hessian_matrix(point, gradient, vectorized=False)
    batched = hessian_matrix(point, gradient, vectorized=True)
    assert torch.allclose(looped, batched, atol=1e-14, rtol=0)


# -- softplus and the dilogarithm -------------------------------------------------------------


def test_dilogarithm_matches_mpmath() -> None:
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 60
    u = torch.linspace(0, 1, 401, dtype=torch.float64)
    reference = torch.tensor([float(mpmath.polylog(2, mpmath.mpf(float(v)))) for v in u], dtype=torch.float64)
    # One rounding of values up to pi^2 / 6 < 2 is 2.2e-16.
    assert torch.allclose(dilogarithm(u), reference, atol=4.5e-16, rtol=0)


def test_dilogarithm_matches_scipy() -> None:
    u = torch.linspace(0, 1, 1001, dtype=torch.float64)
    # scipy's spence(w) is Li2(1 - w). scipy 1.17 is off by up to 2e-15 here, measured against mpmath.
    reference = torch.from_numpy(spence(1 - u.numpy()))
    assert torch.allclose(dilogarithm(u), reference, atol=4e-15, rtol=0)
    assert dilogarithm(torch.tensor(1.0, dtype=torch.float64)).item() == pytest.approx(math.pi**2 / 6, abs=1e-15)


def test_dilogarithm_derivatives_are_exact() -> None:
    u = torch.linspace(0.01, 0.99, 99, dtype=torch.float64, requires_grad=True)
    (first,) = torch.autograd.grad(dilogarithm(u).sum(), u, create_graph=True)
    (second,) = torch.autograd.grad(first.sum(), u)
    plain = u.detach()
    # Li2'(u) = -log(1 - u) / u and Li2''(u) = 1 / (u (1 - u)) + log(1 - u) / u^2.
    assert torch.allclose(first, -torch.log1p(-plain) / plain, atol=1e-14, rtol=0)
    expected = 1 / (plain * (1 - plain)) + torch.log1p(-plain) / plain**2
    assert torch.allclose(second, expected, atol=0, rtol=1e-12)


def test_dilogarithm_outside_domain_is_nan() -> None:
    values = dilogarithm(torch.tensor([-0.5, 1.5], dtype=torch.float64))
    assert bool(values.isnan().all())
    assert bool(dilogarithm_exp(torch.tensor([0.5], dtype=torch.float64)).isnan().all())


def test_dilogarithm_exp_keeps_precision() -> None:
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 60
    t = -torch.logspace(-13, 2, 200, dtype=torch.float64)
    leaf = t.clone().requires_grad_()
    value = dilogarithm_exp(leaf)
    (first,) = torch.autograd.grad(value.sum(), leaf, create_graph=True)
    (second,) = torch.autograd.grad(first.sum(), leaf)
    reference = [mpmath.exp(mpmath.mpf(float(v))) for v in t]
    expected_value = torch.tensor([float(mpmath.polylog(2, u)) for u in reference], dtype=torch.float64)
    expected_first = torch.tensor([float(-mpmath.log(1 - u)) for u in reference], dtype=torch.float64)
    assert torch.allclose(value.detach(), expected_value, atol=4.5e-16, rtol=0)
    # Relative precision near t = 0, where -log(1 - e^t) ~ -log(-t) and 1 - e^t has few digits.
    assert torch.allclose(first, expected_first, atol=0, rtol=1e-15)
    assert torch.allclose(second, 1 / torch.expm1(-t), atol=0, rtol=1e-15)


def test_softplus_activation_verifies() -> None:
    result = verify_activation(ACTIVATIONS["softplus"])
    assert result.backend == "smooth"
    assert result.value_error <= 1e-6
    assert result.grad_error <= 1e-5
    assert result.passed
    # Saturated inputs (|x| = 30) are informational in verify; the stable dilogarithm keeps
    # them at rounding level too.
    assert result.saturated_value_error <= 1e-9
    assert result.saturated_grad_error <= 1e-9


def test_wide_softplus_converges_quickly(generator: torch.Generator) -> None:
    activation = ACTIVATIONS["softplus"]
    declaration = activation.declare(200)
    layer = po.ProxLayer(
        declaration.regularizer,
        declaration.constraints,
        variable=declaration.variable,
        **activation.layer_options,  # type: ignore[arg-type]
    )
    x = 60 * torch.rand(8, 200, generator=generator, dtype=torch.float64) - 30
    output = layer(x)
    outcome = layer.solver_outcome
    # The reference is log1p(exp(x)) because torch's softplus returns x itself above x = 20.
    assert torch.allclose(output, torch.log1p(torch.exp(x)), atol=1e-9, rtol=0)
    assert outcome.all_converged
    assert int(outcome.iterations.max()) <= 40


def test_softplus_layer_matches_torch(generator: torch.Generator) -> None:
    activation = ACTIVATIONS["softplus"]
    declaration = activation.declare(6)
    layer = po.ProxLayer(
        declaration.regularizer,
        declaration.constraints,
        variable=declaration.variable,
        **activation.layer_options,  # type: ignore[arg-type]
    )
    x = (16 * torch.rand(5, 6, generator=generator, dtype=torch.float64) - 8).requires_grad_()
    assert torch.allclose(layer(x), torch.nn.functional.softplus(x), atol=1e-9, rtol=0)
    assert torch.autograd.gradcheck(layer, (x,), **GRADCHECK)


@pytest.mark.cuda
def test_cuda_solve_stays_on_device(generator: torch.Generator) -> None:
    z = po.Variable(8)
    layer = po.ProxLayer(po.smooth(_negative_cosine, z) + po.logistic(z), lam=1.2, backend="smooth")
    x = torch.randn(4, 8, generator=generator, dtype=torch.float64)
    cpu = layer(x)
    device_x = x.cuda().requires_grad_()
    output = layer(device_x)
    output.sum().backward()
    assert output.device.type == "cuda"
    assert layer.solver_outcome.converged.device.type == "cuda"
    assert torch.allclose(output.detach().cpu(), cpu, atol=1e-9, rtol=0)
