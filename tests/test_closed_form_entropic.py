"""Tests of the entropic closed forms: sigmoid, tanh, softmax, logistic and neg_entropy.

References: torch's own activations (bit for bit at lam = 1), the cvxpy backend, the
optimality conditions of the prox objective, and 60-digit mpmath solutions (values and
numerical derivatives) at saturating inputs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch

from proxopt import (
    InvalidInputError,
    NoRouteError,
    Parameter,
    ProxLayer,
    Simplex,
    SolverFailedError,
    SolverWarning,
    Variable,
    binary_neg_entropy,
    logistic,
    neg_entropy,
    sum_squares,
)
from proxopt import sum as dsl_sum
from proxopt.activations import ACTIVATIONS
from proxopt.backends.closed_form.entropic import simplex_entropy_argmin
from proxopt.backends.closed_form.roots import solve_linear_exp, solve_linear_sigmoid
from proxopt.compile.evaluate import evaluate
from proxopt.dsl.expressions import Expression
from proxopt.dsl.sets import Constraint

mpmath = pytest.importorskip("mpmath")

SIZE = 4
EPS = torch.finfo(torch.float64).eps


@dataclass
class Case:
    """A declaration of size SIZE with a float lam; ``a`` is its merged quadratic weight."""

    name: str
    build: Callable[[Variable], tuple[Expression, list[Constraint]]]
    lam: float
    a: float
    parameters: dict[str, Parameter] = field(default_factory=dict)

    def layer(self, lam: float | torch.Tensor | None = None, backend: str = "auto") -> ProxLayer:
        z = Variable(SIZE)
        regularizer, constraints = self.build(z)
        return ProxLayer(regularizer, constraints, self.lam if lam is None else lam, backend, variable=z)


def _sigmoid(z: Variable) -> tuple[Expression, list[Constraint]]:
    return binary_neg_entropy(z) - 0.5 * sum_squares(z), []


def _tanh(z: Variable) -> tuple[Expression, list[Constraint]]:
    return binary_neg_entropy(0.5 * z + 0.5) - 0.5 * sum_squares(z), []


def _scaled_binary(z: Variable) -> tuple[Expression, list[Constraint]]:
    # u = -2 z + 0.3 lies in (0, 1) for z in (-0.35, 0.15).
    return 1.5 * binary_neg_entropy(-2 * z + 0.3) - 0.25 * sum_squares(z), []


def _softmax(z: Variable) -> tuple[Expression, list[Constraint]]:
    return neg_entropy(z) - 0.5 * sum_squares(z), [Simplex()]


def _entropy_on_radius_two(z: Variable) -> tuple[Expression, list[Constraint]]:
    return 0.5 * neg_entropy(z), [z >= 0, dsl_sum(z) == 2]


def _logistic(z: Variable) -> tuple[Expression, list[Constraint]]:
    return 0.7 * logistic(z), []


def _scaled_logistic(z: Variable) -> tuple[Expression, list[Constraint]]:
    # A Constant offset lets the cvxpy reference solve this one coordinate at a time, to
    # about 3e-7; written as 2 * z - 1 it goes to Clarabel, which is off by up to 1e-4.
    return logistic(2 * z + (-1.0)), []


def _entropy(z: Variable) -> tuple[Expression, list[Constraint]]:
    return neg_entropy(z), []


def _scaled_entropy(z: Variable) -> tuple[Expression, list[Constraint]]:
    return 2 * neg_entropy(0.5 * z + 1), []


def _entropy_zero_weight(z: Variable) -> tuple[Expression, list[Constraint]]:
    return neg_entropy(z) - 0.5 * sum_squares(z), []


CASES = [
    Case("sigmoid_lam1", _sigmoid, 1.0, 0.0),
    Case("sigmoid_lam2", _sigmoid, 2.0, 1.0),
    Case("sigmoid_lam_half", _sigmoid, 0.5, -0.5),
    Case("tanh_lam1", _tanh, 1.0, 0.0),
    Case("tanh_lam3", _tanh, 3.0, 2.0),
    Case("tanh_lam_half", _tanh, 0.5, -0.5),
    Case("scaled_binary", _scaled_binary, 1.0, 0.5),
    Case("softmax_lam1", _softmax, 1.0, 0.0),
    Case("softmax_lam2", _softmax, 2.5, 1.5),
    Case("softmax_lam_half", _softmax, 0.5, -0.5),
    Case("entropy_radius_two", _entropy_on_radius_two, 1.0, 1.0),
    Case("logistic", _logistic, 1.0, 1.0),
    Case("scaled_logistic", _scaled_logistic, 0.5, 0.5),
    Case("entropy", _entropy, 1.0, 1.0),
    Case("scaled_entropy", _scaled_entropy, 1.0, 1.0),
    Case("entropy_zero_weight", _entropy_zero_weight, 1.0, 0.0),
]
CASE_IDS = [case.name for case in CASES]
BY_NAME = {case.name: case for case in CASES}
CONVEX_AS_WRITTEN = [case for case in CASES if case.a >= 0]


def _random_input(generator: torch.Generator, rows: int, bound: float, dtype: torch.dtype) -> torch.Tensor:
    return ((2 * torch.rand(rows, SIZE, generator=generator, dtype=torch.float64) - 1) * bound).to(dtype)


def _is_simplex_case(layer: ProxLayer) -> bool:
    return any(isinstance(s, Simplex) for s in layer.problem.sets) or bool(layer.problem.comparisons)


# -- plan --------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_plan_picks_closed_form(case: Case) -> None:
    layer = case.layer()
    assert layer.plan.backend == "closed_form"
    assert layer._fast is not None


def test_plan_folds_constant_offset(generator: torch.Generator) -> None:
    z = Variable(SIZE)
    folded = ProxLayer(logistic(2 * z - 1), lam=0.5, variable=z)
    x = _random_input(generator, 3, 4.0, torch.float64)
    assert folded.plan.backend == "closed_form"
    assert torch.equal(folded(x), BY_NAME["scaled_logistic"].layer()(x))


def test_explain_names_newton_route() -> None:
    text = BY_NAME["sigmoid_lam2"].layer().explain()
    assert "backend: closed_form" in text
    assert "Newton" in text


# -- lam = 1: the torch activations bit for bit -------------------------------------------
@pytest.mark.parametrize("name", ["sigmoid", "tanh", "softmax"])
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "validated"])
def test_unit_lam_equals_torch_bitwise(name: str, fast: bool, dtype: torch.dtype, generator: torch.Generator) -> None:
    activation = ACTIVATIONS[name]
    declaration = activation.declare(SIZE)
    layer = ProxLayer(declaration.regularizer, declaration.constraints, variable=declaration.variable)
    if not fast:
        layer._fast = None
    x = torch.cat([_random_input(generator, 5, 8.0, dtype), torch.tensor([[30.0, -30.0, 0.0, 1e-3]], dtype=dtype)])
    grad = torch.randn(x.shape, generator=generator, dtype=torch.float64).to(dtype)
    x_layer = x.clone().requires_grad_()
    x_torch = x.clone().requires_grad_()
    out_layer = layer(x_layer)
    out_torch = activation.reference(x_torch)
    out_layer.backward(grad)
    out_torch.backward(grad)
    assert torch.equal(out_layer, out_torch)
    assert torch.equal(x_layer.grad, x_torch.grad)


# -- saturating inputs against 60-digit references ---------------------------------------
def _mp_bisect(function: Callable[[object], object], low: float, high: float) -> object:
    """Return the root of an increasing ``function`` on ``[low, high]`` by 400 bisection steps."""
    low, high = mpmath.mpf(low), mpmath.mpf(high)
    for _ in range(400):
        middle = (low + high) / 2
        if function(middle) < 0:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def _mp_sigmoid(w: object) -> object:
    return 1 / (1 + mpmath.exp(-w))


def _mp_binary_root(y: object, a: float, c: float, s: float, t: float) -> object:
    """z with c s logit(s z + t) + a z = y, solved on the logit scale w = logit(s z + t)."""

    def equation(w: object) -> object:  # the equation divided by s, increasing in w
        return c * w + (a / (s * s)) * (_mp_sigmoid(w) - t) - y / s

    return (_mp_sigmoid(_mp_bisect(equation, -400, 400)) - t) / s


def _mp_logistic_root(y: object, a: float, c: float, s: float, t: float) -> object:
    def equation(z: object) -> object:
        return c * s * _mp_sigmoid(s * z + t) + a * z - y

    return _mp_bisect(equation, -400, 400)


def _mp_entropy_root(y: object, a: float, c: float, s: float, t: float) -> object:
    # c s (log u + 1) + a z = y with u = s z + t, increasing in log u when divided by s > 0.
    def equation(log_u: object) -> object:
        return c * (log_u + 1) + (a / (s * s)) * (mpmath.exp(log_u) - t) - y / s

    return (mpmath.exp(_mp_bisect(equation, -200, 200)) - t) / s


def _mp_simplex_root(y: list, a: float, c: float, radius: float) -> list:
    """z on Simplex(radius) with c (log z_i + 1) + a z_i = y_i - nu, by Lambert W."""

    def entries(nu: object) -> list:
        if a == 0:
            return [mpmath.exp((value - nu) / c - 1) for value in y]
        return [(c / a) * mpmath.lambertw((a / c) * mpmath.exp((value - nu) / c - 1)).real for value in y]

    def excess(nu: object) -> object:
        return mpmath.log(mpmath.fsum(entries(nu))) - mpmath.log(radius)

    # excess decreases in nu. For a < 0, z_i = r at nu = y_i - phi(r) with
    # phi(z) = c (log z + 1) + a z, and no nu below that keeps every z_i <= r.
    low = min(y) - 200 if a >= 0 else max(y) - (c * (mpmath.log(radius) + 1) + a * radius)
    nu = _mp_bisect(lambda nu: -excess(nu), low, max(y) + 200)
    return entries(nu)


SATURATED = [30.0, -30.0, 29.5, -0.25]


@dataclass
class Reference:
    case: Case
    root: Callable[..., object]
    c: float
    s: float
    t: float


ELEMENTWISE_REFERENCES = [
    Reference(BY_NAME["sigmoid_lam2"], _mp_binary_root, 1.0, 1.0, 0.0),
    Reference(BY_NAME["sigmoid_lam_half"], _mp_binary_root, 1.0, 1.0, 0.0),
    Reference(BY_NAME["tanh_lam3"], _mp_binary_root, 1.0, 0.5, 0.5),
    Reference(BY_NAME["tanh_lam_half"], _mp_binary_root, 1.0, 0.5, 0.5),
    Reference(BY_NAME["scaled_binary"], _mp_binary_root, 1.5, -2.0, 0.3),
    Reference(BY_NAME["logistic"], _mp_logistic_root, 0.7, 1.0, 0.0),
    Reference(BY_NAME["scaled_logistic"], _mp_logistic_root, 1.0, 2.0, -1.0),
    Reference(BY_NAME["entropy"], _mp_entropy_root, 1.0, 1.0, 0.0),
    Reference(BY_NAME["scaled_entropy"], _mp_entropy_root, 2.0, 0.5, 1.0),
    Reference(BY_NAME["entropy_zero_weight"], _mp_entropy_root, 1.0, 1.0, 0.0),
]


@pytest.mark.parametrize("reference", ELEMENTWISE_REFERENCES, ids=[r.case.name for r in ELEMENTWISE_REFERENCES])
def test_saturated_elementwise_matches_mpmath(reference: Reference) -> None:
    case = reference.case
    x = torch.tensor([SATURATED], dtype=torch.float64, requires_grad=True)
    out = case.layer()(x)
    (grad,) = torch.autograd.grad(out.sum(), x)

    with mpmath.workdps(60):

        def root(value: object) -> object:
            return reference.root(case.lam * value, case.a, reference.c, reference.s, reference.t)

        expected = [float(root(mpmath.mpf(value))) for value in SATURATED]
        expected_grad = [float(mpmath.diff(root, mpmath.mpf(value))) for value in SATURATED]
    assert torch.allclose(out.detach(), torch.tensor([expected], dtype=torch.float64), rtol=0, atol=1e-12)
    assert torch.allclose(grad, torch.tensor([expected_grad], dtype=torch.float64), rtol=0, atol=1e-12)


SIMPLEX_REFERENCES = [
    (BY_NAME["softmax_lam2"], 1.0, 1.0),
    (BY_NAME["softmax_lam_half"], 1.0, 1.0),
    (BY_NAME["entropy_radius_two"], 0.5, 2.0),
]


@pytest.mark.parametrize("case, c, radius", SIMPLEX_REFERENCES, ids=[r[0].name for r in SIMPLEX_REFERENCES])
def test_saturated_simplex_matches_mpmath(case: Case, c: float, radius: float) -> None:
    x = torch.tensor([SATURATED], dtype=torch.float64, requires_grad=True)
    weights = torch.tensor([[0.3, -1.0, 2.0, 0.7]], dtype=torch.float64)
    out = case.layer()(x)
    (grad,) = torch.autograd.grad((out * weights).sum(), x)

    with mpmath.workdps(60):

        def weighted(shift: object, index: int) -> object:
            y = [case.lam * (mpmath.mpf(value) + (shift if i == index else 0)) for i, value in enumerate(SATURATED)]
            z = _mp_simplex_root(y, case.a, c, radius)
            return mpmath.fsum(float(w) * zi for w, zi in zip(weights[0].tolist(), z, strict=True))

        y = [case.lam * mpmath.mpf(value) for value in SATURATED]
        expected = [float(value) for value in _mp_simplex_root(y, case.a, c, radius)]
        expected_grad = [float(mpmath.diff(lambda h, i=i: weighted(h, i), 0)) for i in range(SIZE)]
    assert torch.allclose(out.detach(), torch.tensor([expected], dtype=torch.float64), rtol=0, atol=1e-12)
    assert torch.allclose(grad, torch.tensor([expected_grad], dtype=torch.float64), rtol=0, atol=1e-12)


def test_nonfinite_input_propagates() -> None:
    x = torch.tensor([[float("nan"), float("inf"), -float("inf"), 0.0]], dtype=torch.float64)
    out = BY_NAME["sigmoid_lam2"].layer()(x)
    assert torch.isnan(out[0, 0])
    assert out[0, 1] == 1.0
    assert out[0, 2] == 0.0
    assert torch.isfinite(out[0, 3])


# -- optimality conditions ---------------------------------------------------------------
def _newton_step(layer: ProxLayer, z: torch.Tensor, x: torch.Tensor, lam: float) -> torch.Tensor:
    """Return the Newton step of R(z) + (lam / 2) ||z - x||^2 at z (on sum(z) = r for a simplex).

    Gradient and Hessian diagonal (every R here is separable) come from autograd on the
    declared R. The step is the distance to the minimizer to first order, so it measures
    optimality in units of z, unlike the gradient, which is ill-conditioned where the
    entropy's curvature 1 / (u (1 - u)) is large.
    """
    point = z.detach().clone().requires_grad_()
    regularizer = sum(term.coefficient.constant * term.expr for term in layer.problem.terms)
    objective = evaluate(regularizer, {id(layer.problem.variable): point}, point).sum()
    objective = objective + 0.5 * lam * ((point - x) ** 2).sum()
    (gradient,) = torch.autograd.grad(objective, point, create_graph=True)
    (curvature,) = torch.autograd.grad(gradient.sum(), point)
    gradient = gradient.detach()
    if _is_simplex_case(layer):
        # The multiplier that makes the step keep sum(z) fixed.
        nu = (gradient / curvature).sum(-1, keepdim=True) / (1 / curvature).sum(-1, keepdim=True)
        gradient = gradient - nu
    return -gradient / curvature


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_output_satisfies_optimality(case: Case, generator: torch.Generator) -> None:
    layer = case.layer()
    x = _random_input(generator, 6, 4.0, torch.float64)
    z = layer(x)
    step = _newton_step(layer, z, x, case.lam)
    assert float(step.abs().max()) < 1e-14
    if _is_simplex_case(layer):
        radius = 2.0 if case.name == "entropy_radius_two" else 1.0
        assert bool((z > 0).all())
        assert torch.allclose(z.sum(-1), torch.full((6,), radius, dtype=torch.float64), rtol=0, atol=1e-14)


# -- agreement with the cvxpy backend ----------------------------------------------------
@pytest.mark.parametrize("case", CONVEX_AS_WRITTEN, ids=[case.name for case in CONVEX_AS_WRITTEN])
def test_agrees_with_cvxpy_backend(case: Case, generator: torch.Generator) -> None:
    x = _random_input(generator, 2, 8.0, torch.float64)
    closed = case.layer()(x)
    with warnings.catch_warnings():
        # SCS flags some entries "Solved/Inaccurate" for |lam x| near 16 although its values
        # still agree to about 1e-12; the assertion below checks the values themselves.
        warnings.simplefilter("ignore", SolverWarning)
        reference = case.layer(backend="cvxpy")(x)
    assert float((closed - reference).abs().max()) < 1e-6


# -- gradients -----------------------------------------------------------------------------
def _gradcheck(layer: ProxLayer, x: torch.Tensor, lam: torch.Tensor, **parameters: torch.Tensor) -> bool:
    names = list(parameters)

    def function(x: torch.Tensor, lam: torch.Tensor, *values: torch.Tensor) -> torch.Tensor:
        layer.lam = lam
        return layer(x, **dict(zip(names, values, strict=True)))

    inputs = (x, lam, *parameters.values())
    return torch.autograd.gradcheck(function, inputs)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("lam_shape", [(), (3,)], ids=["shared_lam", "per_sample_lam"])
def test_gradcheck_input_and_lam(case: Case, lam_shape: tuple[int, ...], generator: torch.Generator) -> None:
    x = _random_input(generator, 3, 3.0, torch.float64).requires_grad_()
    # lam near the case's own keeps a in the closed form's range (a > -4 c s^2, or a > 0).
    lam = (case.lam + 0.1 * torch.rand(lam_shape, generator=generator, dtype=torch.float64)).requires_grad_()
    layer = case.layer(lam=lam.detach())
    assert layer.plan.backend == "closed_form"
    assert _gradcheck(layer, x, lam)


def _parametric_layers() -> list[tuple[str, Callable[[], ProxLayer], dict[str, torch.Tensor]]]:
    c = Parameter(name="c", nonneg=True)
    radius = Parameter(name="r", nonneg=True)

    def layer(build: Callable[[Variable], tuple[Expression, list[Constraint]]]) -> Callable[[], ProxLayer]:
        def make() -> ProxLayer:
            z = Variable(SIZE)
            regularizer, constraints = build(z)
            return ProxLayer(regularizer, constraints, lam=1.5, variable=z)

        return make

    shared = torch.tensor(0.8, dtype=torch.float64)
    per_sample = torch.tensor([0.6, 1.2, 0.9], dtype=torch.float64)
    return [
        ("binary", layer(lambda z: (c * binary_neg_entropy(z) - 0.5 * sum_squares(z), [])), {"c": shared}),
        ("binary_per_sample", layer(lambda z: (c * binary_neg_entropy(0.5 * z + 0.5), [])), {"c": per_sample}),
        ("logistic", layer(lambda z: (c * logistic(z), [])), {"c": per_sample}),
        ("entropy", layer(lambda z: (c * neg_entropy(z), [])), {"c": shared}),
        ("simplex", layer(lambda z: (c * neg_entropy(z), [Simplex()])), {"c": per_sample}),
        ("simplex_radius", layer(lambda z: (c * neg_entropy(z), [Simplex(radius)])), {"c": shared, "r": per_sample}),
        (
            "softmax_radius",
            layer(lambda z: (neg_entropy(z) - 0.75 * sum_squares(z), [Simplex(radius)])),
            {"r": shared * 2},
        ),
    ]


PARAMETRIC = _parametric_layers()


@pytest.mark.parametrize("name, make, values", PARAMETRIC, ids=[p[0] for p in PARAMETRIC])
def test_gradcheck_coefficient_parameters(
    name: str, make: Callable[[], ProxLayer], values: dict[str, torch.Tensor], generator: torch.Generator
) -> None:
    layer = make()
    assert layer.plan.backend == "closed_form"
    x = _random_input(generator, 3, 3.0, torch.float64).requires_grad_()
    lam = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    leaves = {key: value.clone().requires_grad_() for key, value in values.items()}
    assert _gradcheck(layer, x, lam, **leaves)


def test_zero_weight_simplex_row_gradcheck(generator: torch.Generator) -> None:
    # lam = 1 in one row gives a = 0 there (softmax) and a > 0 in the other rows.
    y = _random_input(generator, 3, 3.0, torch.float64).requires_grad_()
    a = torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64, requires_grad=True)
    c = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda y, a, c: simplex_entropy_argmin(y, a, c, 1.5), (y, a, c))


# -- dtype, batching, errors ------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_float32_matches_float64(case: Case, generator: torch.Generator) -> None:
    x = torch.cat([_random_input(generator, 8, 6.0, torch.float64), torch.tensor([SATURATED], dtype=torch.float64)])
    layer = case.layer()
    out32 = layer(x.float())
    assert out32.dtype == torch.float32
    # float32 rounding of the input and of the root: a few float32 epsilons.
    assert torch.allclose(out32.double(), layer(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_per_sample_lam_matches_rows(case: Case, generator: torch.Generator) -> None:
    x = _random_input(generator, 3, 4.0, torch.float64)
    lams = [case.lam, case.lam + 0.5, case.lam + 1.0]
    batched = case.layer(lam=torch.tensor(lams, dtype=torch.float64))(x)
    rows = torch.cat([case.layer(lam=lam)(x[i : i + 1]) for i, lam in enumerate(lams)])
    assert torch.allclose(batched, rows, rtol=0, atol=1e-14)


def test_zero_coefficient_raises() -> None:
    c = Parameter(name="c", nonneg=True)
    z = Variable(SIZE)
    layer = ProxLayer(c * binary_neg_entropy(z), variable=z)
    with pytest.raises(InvalidInputError, match="coefficient of binary_neg_entropy must be > 0"):
        layer(torch.zeros(2, SIZE), c=torch.tensor(0.0))


def test_logistic_without_weight_raises() -> None:
    z = Variable(SIZE)
    regularizer = logistic(z) - sum_squares(z)
    layer = ProxLayer(regularizer, lam=torch.tensor(1.5), variable=z)
    with pytest.raises(InvalidInputError, match="weight a must be > 0"):
        layer(torch.zeros(2, SIZE))


def test_logistic_without_weight_has_no_route() -> None:
    z = Variable(SIZE)
    with pytest.raises(NoRouteError, match="a = -0.5 is negative"):
        ProxLayer(logistic(z) - sum_squares(z), lam=1.5, variable=z)


def test_sigmoid_tensor_lam_checked_at_call() -> None:
    z = Variable(SIZE)
    layer = ProxLayer(binary_neg_entropy(z) - 3 * sum_squares(z), lam=torch.tensor(1.0), variable=z)
    with pytest.raises(InvalidInputError, match="must exceed -4 c s"):
        layer(torch.zeros(2, SIZE))


@pytest.mark.parametrize("a, c", [(1e3, 1e-3), (1e6, 1e-6), (-0.9, 1.0), (1e-12, 1e3)])
def test_simplex_extreme_coefficients_converge(a: float, c: float, generator: torch.Generator) -> None:
    y = 1e3 * torch.randn(16, 8, generator=generator, dtype=torch.float64)
    z = simplex_entropy_argmin(y, a, c, 1.0)
    assert bool((z >= 0).all())
    # Rounding y - nu with |y| near 3000 moves each z_i by up to about 3000 eps / (c + a z_i).
    assert torch.allclose(z.sum(-1), torch.ones(16, dtype=torch.float64), rtol=0, atol=1e-10)


def test_root_solvers_report_no_convergence() -> None:
    gamma = torch.tensor([[50.0, -3.0]], dtype=torch.float64)
    with pytest.raises(SolverFailedError, match="did not converge in 1 iterations"):
        solve_linear_sigmoid(1.0, 1e6, gamma, max_iterations=1)
    with pytest.raises(SolverFailedError, match="did not converge in 1 iterations"):
        solve_linear_exp(1.0, gamma, max_iterations=1)


@pytest.mark.parametrize("beta", [2.0, 1e-8, 0.0, -0.3])
def test_linear_exp_root_matches_lambert_w(beta: float) -> None:
    # w + beta exp(w) = gamma has the root gamma - W(beta exp(gamma)), principal branch,
    # which exists for beta < 0 when gamma < -log(-beta) - 1 (about 0.204 here).
    gammas = [-700.0, -20.0, -1.0, 0.0, 0.2] + ([1.0, 3.0, 50.0, 1e6] if beta >= 0 else [])
    gamma = torch.tensor(gammas, dtype=torch.float64)
    root = solve_linear_exp(beta, gamma)
    with mpmath.workdps(40):
        expected = [float(g - mpmath.lambertw(beta * mpmath.exp(g)).real) for g in map(mpmath.mpf, gammas)]
    scaled = beta * torch.exp(root) if beta != 0 else torch.zeros_like(root)
    # The rounding error of evaluating the equation, divided by its slope: near the branch
    # point (gamma = 0.2, beta = -0.3) the slope is 0.09 and the error bound 11 times larger.
    bound = 4 * EPS * (root.abs() + scaled.abs() + gamma.abs()) / (1 + scaled)
    assert bool(((root - torch.tensor(expected, dtype=torch.float64)).abs() <= bound).all())


@pytest.mark.parametrize("alpha, beta", [(1.0, 1.0), (1.0, -3.9), (1e-3, 1.0), (1.0, 1e4)])
def test_linear_sigmoid_root_matches_mpmath(alpha: float, beta: float) -> None:
    gammas = [-1e4, -30.0, -1.0, 0.0, 0.7, 30.0, 1e4]
    gamma = torch.tensor(gammas, dtype=torch.float64)
    root = solve_linear_sigmoid(alpha, beta, gamma)
    with mpmath.workdps(50):
        expected = [float(_mp_bisect(lambda w, g=g: alpha * w + beta * _mp_sigmoid(w) - g, -1e8, 1e8)) for g in gammas]
    sig = torch.sigmoid(root)
    slope = alpha + beta * sig * torch.sigmoid(-root)
    # The rounding error of evaluating the equation, divided by its slope.
    bound = 4 * EPS * ((alpha * root).abs() + abs(beta) * sig + gamma.abs()) / slope
    assert bool(((root - torch.tensor(expected, dtype=torch.float64)).abs() <= bound).all())


@pytest.mark.cuda
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_cuda_matches_cpu(case: Case, generator: torch.Generator) -> None:
    x = _random_input(generator, 4, 6.0, torch.float64)
    grad = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    layer = case.layer()
    outputs = []
    for device in ("cpu", "cuda"):
        leaf = x.to(device).requires_grad_()
        out = layer(leaf)
        out.backward(grad.to(device))
        assert out.device.type == device
        outputs.append((out.detach().cpu(), leaf.grad.cpu()))
    (out_cpu, grad_cpu), (out_cuda, grad_cuda) = outputs
    assert torch.allclose(out_cuda, out_cpu, rtol=0, atol=1e-13)
    assert torch.allclose(grad_cuda, grad_cpu, rtol=0, atol=1e-13)
