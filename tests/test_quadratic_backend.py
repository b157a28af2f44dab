"""Tests of the quadratic backend: every route against cvxpy, a dense solve and gradcheck.

Each route solves ``(a I + H) z = y - h``. The references are the cvxpy backend and a dense
``torch.linalg.solve`` of the same system, built here independently of the backend. The
residual of that optimality condition at the output is checked as well.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from proxopt import (
    BATCH,
    Box,
    InvalidInputError,
    NoRouteError,
    Parameter,
    ProxLayer,
    ShapeError,
    Variable,
    laplacian_quadratic,
    norm1,
    quad_form,
    sum,
    sum_squares,
)
from proxopt.backends.base import ProxCall
from proxopt.backends.quadratic import PerCallCholeskyProx
from proxopt.compile.evaluate import evaluate
from proxopt.compile.quadratic_terms import term_quadratic

F64 = torch.float64
N = 5
CVXPY_TOLERANCE = 1e-6  # the cvxpy backend (SCS at eps 1e-12) agrees with these solves to about 1e-11


def _random_psd(rng: np.random.Generator, n: int, rank: int | None = None) -> np.ndarray:
    factor = rng.standard_normal((n, rank or n))
    return factor @ factor.T / n


def _laplacian(weights: torch.Tensor) -> torch.Tensor:
    """``D_r + D_c - W - W^T``, written out independently of the DSL."""
    return torch.diag_embed(weights.sum(-1) + weights.sum(-2)) - weights - weights.transpose(-1, -2)


def _dense_solve(matrix: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve ``matrix z = rhs`` row by row for ``rhs`` of shape ``(B, d)``."""
    return torch.linalg.solve(matrix, rhs.unsqueeze(-1)).squeeze(-1)


def _route(layer: ProxLayer) -> str:
    assert layer.plan.backend == "quadratic"
    return layer.plan.compiled.route  # type: ignore[attr-defined]


# -- route choice and explain ------------------------------------------------------------


def test_route_choice_per_problem() -> None:
    z = Variable(N)
    matrix = _random_psd(np.random.default_rng(0), N)
    factor = Parameter((N, 2), name="G")
    square = Parameter((N, N), name="A")
    rows = Variable(3, scope="batch")
    graph = Parameter((BATCH, BATCH), name="W", nonneg=True)
    cases = [
        (ProxLayer(quad_form(z, matrix), lam=1.0), "cached Cholesky"),
        (ProxLayer(quad_form(z, matrix), lam=torch.tensor(1.0)), "cached eigendecomposition"),
        (ProxLayer(sum_squares(square @ z), lam=1.0), "per-call Cholesky"),
        (ProxLayer(quad_form(z, factor), lam=1.0), "Woodbury"),
        (ProxLayer(laplacian_quadratic(rows, graph), lam=1.0), "row Laplacian system"),
        (ProxLayer(sum_squares(rows @ np.eye(3)), lam=1.0), "per-call Cholesky"),
    ]
    for layer, route in cases:
        assert _route(layer) == route
        assert layer.explain().count(route) >= 1


def test_woodbury_needs_low_rank() -> None:
    z = Variable(3)
    full = Parameter((3, 3), name="G")
    layer = ProxLayer(quad_form(z, full), lam=1.0)
    assert _route(layer) == "per-call Cholesky"


def test_explain_names_woodbury_rank() -> None:
    z = Variable(N)
    layer = ProxLayer(quad_form(z, Parameter((N, 2), name="G")) + quad_form(z, Parameter((N, 1), name="H")))
    assert "Woodbury rank 3" in layer.explain()


# -- cached Cholesky ---------------------------------------------------------------------


def _difference_matrix(n: int) -> np.ndarray:
    return np.eye(n, k=1)[: n - 1] - np.eye(n)[: n - 1]


def test_cached_cholesky_matches_cvxpy(generator: torch.Generator) -> None:
    z = Variable(N)
    matrix = _random_psd(np.random.default_rng(1), N)
    difference = _difference_matrix(N)
    shift = Parameter(N, name="t")
    regularizer = 0.3 * quad_form(z, matrix) + 0.5 * sum_squares(difference @ z - 1.0) + sum_squares(z - shift)
    layer = ProxLayer(regularizer, lam=0.7)
    reference_layer = ProxLayer(regularizer, lam=0.7, backend="cvxpy")
    x = torch.randn(4, N, generator=generator, dtype=F64)
    t = torch.randn(N, generator=generator, dtype=F64)

    output = layer(x, t=t)
    reference = reference_layer(x, t=t)

    assert _route(layer) == "cached Cholesky"
    assert torch.allclose(output, reference, atol=CVXPY_TOLERANCE, rtol=0)


def test_cached_cholesky_matches_dense_solve(generator: torch.Generator) -> None:
    z = Variable(N)
    matrix = _random_psd(np.random.default_rng(2), N)
    difference = _difference_matrix(N)
    layer = ProxLayer(0.3 * quad_form(z, matrix) + 0.5 * sum_squares(difference @ z - 1.0), lam=0.7)
    x = torch.randn(6, N, generator=generator, dtype=F64)

    output = layer(x)

    d = torch.tensor(difference)
    system = 0.7 * torch.eye(N, dtype=F64) + 0.6 * torch.tensor(matrix) + d.T @ d
    rhs = 0.7 * x + d.T @ torch.ones(N - 1, dtype=F64)
    assert torch.allclose(output, _dense_solve(system, rhs), atol=1e-12, rtol=0)
    # Optimality condition (a I + H) z = y - h as a residual.
    residual = output @ system.T - rhs
    assert float(residual.abs().max()) < 1e-12


def test_cached_factor_reused_across_calls(generator: torch.Generator) -> None:
    z = Variable(N)
    layer = ProxLayer(quad_form(z, _random_psd(np.random.default_rng(3), N)), lam=1.0)
    compiled = layer.plan.compiled
    x = torch.randn(3, N, generator=generator, dtype=F64)

    layer(x)
    first = dict(compiled.factors._factors)  # type: ignore[attr-defined]
    layer(x + 1)
    second = dict(compiled.factors._factors)  # type: ignore[attr-defined]
    layer(x.float())
    after_float32 = compiled.factors._factors  # type: ignore[attr-defined]

    assert len(first) == 1
    assert all(second[key] is first[key] for key in first)
    assert len(after_float32) == 2


def test_cached_route_follows_lam_change(generator: torch.Generator) -> None:
    z = Variable(N)
    matrix = _random_psd(np.random.default_rng(4), N)
    layer = ProxLayer(quad_form(z, matrix), lam=1.0)
    x = torch.randn(3, N, generator=generator, dtype=F64)
    layer(x)

    layer.lam = 2.5
    output = layer(x)

    system = 2.5 * torch.eye(N, dtype=F64) + 2.0 * torch.tensor(matrix)
    assert torch.allclose(output, _dense_solve(system, 2.5 * x), atol=1e-12, rtol=0)


def test_cached_route_rejects_bad_lam(generator: torch.Generator) -> None:
    z = Variable(N)
    # a I + H has eigenvalues lam + 2 and lam - 1, so it is indefinite for lam < 1.
    layer = ProxLayer(sum_squares(z) - 1.5 * sum_squares(z[:2]), lam=2.0)
    assert torch.isfinite(layer(torch.randn(2, N, generator=generator))).all()

    layer.lam = 0.5
    with pytest.raises(InvalidInputError, match=r"smallest eigenvalue -0\.5"):
        layer(torch.randn(2, N, generator=generator))


@pytest.mark.parametrize("lam", [1.0, torch.tensor(1.0)], ids=["cholesky", "eigen"])
def test_cache_built_in_inference_mode(generator: torch.Generator, lam: float | torch.Tensor) -> None:
    z = Variable(N)
    layer = ProxLayer(quad_form(z - 1.0, _random_psd(np.random.default_rng(14), N)), lam=lam)
    with torch.inference_mode():
        layer(torch.randn(2, N, generator=generator))
    x = torch.randn(2, N, generator=generator, requires_grad=True)

    layer(x).sum().backward()

    assert x.grad is not None
    assert torch.isfinite(x.grad).all()


def test_nan_input_propagates_per_row(generator: torch.Generator) -> None:
    z = Variable(N)
    layer = ProxLayer(quad_form(z, _random_psd(np.random.default_rng(13), N)), lam=1.0)
    x = torch.randn(3, N, generator=generator, dtype=F64)
    x[1, 2] = float("nan")

    output = layer(x)

    assert torch.isnan(output[1]).all()
    assert torch.isfinite(output[[0, 2]]).all()


def test_fast_path_matches_plain_path(generator: torch.Generator) -> None:
    z = Variable(N)
    layer = ProxLayer(quad_form(z, _random_psd(np.random.default_rng(5), N)) + sum(z), lam=0.8)
    x = torch.randn(2, 3, N, generator=generator, dtype=F64)

    fast = layer(x)
    flat = x.reshape(-1, N)
    plain = layer.plan.compiled(ProxCall(x=flat, lam=0.8, values={}, tensors={}, batch_size=None))

    assert layer._fast is not None
    assert torch.allclose(fast.reshape(-1, N), plain, atol=1e-14, rtol=0)


# -- cached eigendecomposition -----------------------------------------------------------


def test_eigendecomposition_route_tensor_lam(generator: torch.Generator) -> None:
    z = Variable(N)
    matrix = _random_psd(np.random.default_rng(6), N)
    lam = torch.rand(4, generator=generator, dtype=F64) + 0.2
    layer = ProxLayer(quad_form(z, matrix) + sum_squares(z - 2.0), lam=lam)
    x = torch.randn(4, N, generator=generator, dtype=F64)

    output = layer(x)

    systems = (lam + 2.0)[:, None, None] * torch.eye(N, dtype=F64) + 2.0 * torch.tensor(matrix)
    rhs = lam[:, None] * x + 4.0
    assert _route(layer) == "cached eigendecomposition"
    assert torch.allclose(output, _dense_solve(systems, rhs), atol=1e-12, rtol=0)


def test_eigendecomposition_route_matches_cvxpy(generator: torch.Generator) -> None:
    z = Variable(N)
    regularizer = quad_form(z - 1.0, _random_psd(np.random.default_rng(15), N))
    lam = torch.tensor([0.4, 1.0, 2.5], dtype=F64)
    layer = ProxLayer(regularizer, lam=lam)
    reference_layer = ProxLayer(regularizer, lam=lam, backend="cvxpy")
    x = torch.randn(3, N, generator=generator, dtype=F64)

    assert _route(layer) == "cached eigendecomposition"
    assert torch.allclose(layer(x), reference_layer(x), atol=CVXPY_TOLERANCE, rtol=0)


# -- per-call Cholesky -------------------------------------------------------------------


def test_per_call_cholesky_matches_cvxpy(generator: torch.Generator) -> None:
    z = Variable(N)
    matrix = Parameter((3, N), name="A")
    target = Parameter(3, name="b")
    # A Parameter weight on this term would not be DPP for the cvxpy reference.
    regularizer = 0.6 * sum_squares(matrix @ z - target)
    layer = ProxLayer(regularizer, lam=1.0)
    reference_layer = ProxLayer(regularizer, lam=1.0, backend="cvxpy")
    x = torch.randn(4, N, generator=generator, dtype=F64)
    values = {
        "A": torch.randn(4, 3, N, generator=generator, dtype=F64),
        "b": torch.randn(3, generator=generator, dtype=F64),
    }

    output = layer(x, **values)
    reference = reference_layer(x, **values)

    a_matrix = values["A"]
    systems = torch.eye(N, dtype=F64) + 1.2 * a_matrix.transpose(-1, -2) @ a_matrix
    rhs = x + 1.2 * (a_matrix.transpose(-1, -2) @ values["b"].unsqueeze(-1)).squeeze(-1)
    assert _route(layer) == "per-call Cholesky"
    assert torch.allclose(output, reference, atol=CVXPY_TOLERANCE, rtol=0)
    assert torch.allclose(output, _dense_solve(systems, rhs), atol=1e-12, rtol=0)


def test_negative_quadratic_within_margin(generator: torch.Generator) -> None:
    z = Variable(N)
    matrix = _random_psd(np.random.default_rng(7), N)
    layer = ProxLayer(sum_squares(z) - 0.1 * quad_form(z, matrix), lam=0.5)
    x = torch.randn(3, N, generator=generator, dtype=F64)

    output = layer(x)

    system = 2.5 * torch.eye(N, dtype=F64) - 0.2 * torch.tensor(matrix)
    assert _route(layer) == "cached Cholesky"
    assert torch.allclose(output, _dense_solve(system, 0.5 * x), atol=1e-12, rtol=0)


# -- feature Laplacian (one sample) ------------------------------------------------------


@pytest.mark.parametrize("as_parameter", [False, True], ids=["constant", "parameter"])
def test_feature_laplacian_matches_cvxpy(generator: torch.Generator, as_parameter: bool) -> None:
    z = Variable(N)
    weights = torch.rand(N, N, generator=generator, dtype=F64)
    graph = Parameter((N, N), name="W", nonneg=True) if as_parameter else weights.numpy()
    regularizer = 0.4 * laplacian_quadratic(z, graph)
    layer = ProxLayer(regularizer, lam=1.0)
    reference_layer = ProxLayer(regularizer, lam=1.0, backend="cvxpy")
    x = torch.randn(3, N, generator=generator, dtype=F64)
    values = {"W": weights} if as_parameter else {}

    output = layer(x, **values)
    reference = reference_layer(x, **values)

    system = torch.eye(N, dtype=F64) + 0.8 * _laplacian(weights)
    expected_route = "per-call Cholesky" if as_parameter else "cached Cholesky"
    assert _route(layer) == expected_route
    assert torch.allclose(output, reference, atol=CVXPY_TOLERANCE, rtol=0)
    assert torch.allclose(output, _dense_solve(system, x), atol=1e-12, rtol=0)


# -- Woodbury ----------------------------------------------------------------------------


@pytest.mark.parametrize("per_sample", [False, True], ids=["shared", "per_sample"])
def test_woodbury_matches_cvxpy(generator: torch.Generator, per_sample: bool) -> None:
    z = Variable(N)
    factor = Parameter((N, 2), name="G")
    # A constant offset: G^T (z - t) with a Parameter t would not be DPP for the cvxpy reference.
    shift = np.linspace(-1.0, 1.0, N)
    regularizer = 0.7 * quad_form(z - shift, factor)
    layer = ProxLayer(regularizer, lam=2.0)
    reference_layer = ProxLayer(regularizer, lam=2.0, backend="cvxpy")
    x = torch.randn(4, N, generator=generator, dtype=F64)
    shape = (4, N, 2) if per_sample else (N, 2)
    values = {"G": torch.randn(*shape, generator=generator, dtype=F64)}

    output = layer(x, **values)
    reference = reference_layer(x, **values)

    gram = values["G"] @ values["G"].transpose(-1, -2)
    systems = 2.0 * torch.eye(N, dtype=F64) + 1.4 * gram
    rhs = 2.0 * x + 1.4 * gram @ torch.tensor(shift)
    assert _route(layer) == "Woodbury"
    assert torch.allclose(output, reference, atol=CVXPY_TOLERANCE, rtol=0)
    assert torch.allclose(output, _dense_solve(systems, rhs), atol=1e-12, rtol=0)


@pytest.mark.parametrize("weighted", [False, True], ids=["constant_weight", "parameter_weight"])
def test_woodbury_matches_dense_cholesky(generator: torch.Generator, weighted: bool) -> None:
    z = Variable(8)
    weight = Parameter((), name="c", nonneg=True)
    first, second = Parameter((8, 2), name="G"), Parameter((8, 3), name="H")
    coefficient = weight if weighted else 0.9
    regularizer = coefficient * quad_form(z, first) + 0.3 * quad_form(2.0 * z + 1.0, second)
    layer = ProxLayer(regularizer, lam=torch.tensor([0.5, 1.0, 3.0], dtype=F64))
    dense = PerCallCholeskyProx(layer.problem)
    x = torch.randn(3, 8, generator=generator, dtype=F64)
    values = {
        "G": torch.randn(3, 8, 2, generator=generator, dtype=F64),
        "H": torch.randn(8, 3, generator=generator, dtype=F64),
    }
    if weighted:
        values["c"] = torch.tensor([0.9, 0.0, 2.0], dtype=F64)

    output = layer(x, **values)
    call = layer._prepare(x, values)
    assert call is not None
    reference = dense(call)

    assert _route(layer) == "Woodbury"
    assert torch.allclose(output, reference, atol=1e-12, rtol=0)


def test_woodbury_general_affine_argument(generator: torch.Generator) -> None:
    z = Variable(N)
    mixing = np.random.default_rng(8).standard_normal((3, N))
    factor = Parameter((3, 2), name="G")
    layer = ProxLayer(0.5 * quad_form(mixing @ z + 1.0, factor), lam=1.5)
    x = torch.randn(4, N, generator=generator, dtype=F64)
    g = torch.randn(3, 2, generator=generator, dtype=F64)

    output = layer(x, G=g)

    f = torch.tensor(mixing)
    low_rank = f.T @ g
    system = 1.5 * torch.eye(N, dtype=F64) + low_rank @ low_rank.T
    rhs = 1.5 * x - low_rank @ (g.T @ torch.ones(3, dtype=F64))
    assert _route(layer) == "Woodbury"
    assert torch.allclose(output, _dense_solve(system, rhs), atol=1e-12, rtol=0)


def test_woodbury_gives_proxlstm_prox(generator: torch.Generator) -> None:
    # ProxLSTM: argmin_c (lam/2)||c - s||^2 + (delta^2/2)||G^T c||^2 = (I + lam^{-1} delta^2 G G^T)^{-1} s.
    hidden, inputs, lam, delta = 16, 4, 2.0, 0.5
    c = Variable(hidden)
    jacobian = Parameter((hidden, inputs), name="G")
    layer = ProxLayer(0.5 * delta**2 * quad_form(c, jacobian), lam=lam)
    s = torch.randn(6, hidden, generator=generator, dtype=F64)
    g = torch.randn(6, hidden, inputs, generator=generator, dtype=F64)

    output = layer(s, G=g)

    systems = torch.eye(hidden, dtype=F64) + delta**2 / lam * g @ g.transpose(-1, -2)
    assert torch.allclose(output, _dense_solve(systems, s), atol=1e-12, rtol=0)


# -- row Laplacian (per-batch variable) --------------------------------------------------


def _kronecker_reference(x: torch.Tensor, a: torch.Tensor, laplacian: torch.Tensor) -> torch.Tensor:
    """Solve the mn x mn Kronecker system (a I + L kron I_n) vec(Z) = vec(Y) densely."""
    rows, cols = x.shape[-2:]
    identity = torch.eye(rows * cols, dtype=x.dtype)
    system = a[..., None, None] * identity + torch.kron(laplacian, torch.eye(cols, dtype=x.dtype))
    return torch.linalg.solve(system, x.reshape(rows * cols)).reshape(rows, cols)


def test_row_laplacian_matches_cvxpy(generator: torch.Generator) -> None:
    rows, cols = 4, 3
    z = Variable(cols, scope="batch")
    graph = Parameter((BATCH, BATCH), name="W", nonneg=True)
    regularizer = 0.5 * laplacian_quadratic(z, graph)
    layer = ProxLayer(regularizer, lam=1.0)
    reference_layer = ProxLayer(regularizer, lam=1.0, backend="cvxpy")
    x = torch.randn(2, rows, cols, generator=generator, dtype=F64)
    weights = torch.rand(2, rows, rows, generator=generator, dtype=F64)

    output = layer(x, W=weights)
    reference = reference_layer(x, W=weights)

    assert output.shape == (2, rows, cols)
    assert _route(layer) == "row Laplacian system"
    assert torch.allclose(output, reference, atol=CVXPY_TOLERANCE, rtol=0)
    for item in range(2):
        dense = _kronecker_reference(x[item], torch.tensor(1.0, dtype=F64), _laplacian(weights[item]))
        assert torch.allclose(output[item], dense, atol=1e-12, rtol=0)


def test_row_laplacian_offsets_and_weights(generator: torch.Generator) -> None:
    rows, cols = 5, 2
    z = Variable(cols, scope="batch")
    graph = Parameter((BATCH, BATCH), name="W", nonneg=True)
    target = Parameter((BATCH, cols), name="T")
    weight = Parameter((), name="c", nonneg=True)
    regularizer = weight * laplacian_quadratic(2.0 * z - target, graph) + sum_squares(z)
    layer = ProxLayer(regularizer, lam=torch.tensor([0.5, 2.0], dtype=F64))
    x = torch.randn(2, rows, cols, generator=generator, dtype=F64)
    values = {
        "W": torch.rand(rows, rows, generator=generator, dtype=F64),
        "T": torch.randn(2, rows, cols, generator=generator, dtype=F64),
        "c": torch.tensor([0.3, 1.1], dtype=F64),
    }

    output = layer(x, **values)

    laplacian = _laplacian(values["W"])
    for item, (lam, c) in enumerate(zip([0.5, 2.0], [0.3, 1.1], strict=True)):
        system = (lam + 2.0) * torch.eye(rows, dtype=F64) + 8.0 * c * laplacian
        rhs = lam * x[item] + 4.0 * c * laplacian @ values["T"][item]
        assert torch.allclose(output[item], torch.linalg.solve(system, rhs), atol=1e-12, rtol=0)


def test_row_laplacian_constant_weights_cached(generator: torch.Generator) -> None:
    rows, cols = 4, 3
    z = Variable(cols, scope="batch")
    weights = torch.rand(rows, rows, generator=generator, dtype=F64)
    regularizer = 0.5 * laplacian_quadratic(z, weights.numpy())
    layer = ProxLayer(regularizer, lam=1.0)
    reference_layer = ProxLayer(regularizer, lam=1.0, backend="cvxpy")
    x = torch.randn(rows, cols, generator=generator, dtype=F64)

    output = layer(x)
    layer(x)
    reference = reference_layer(x)

    assert "factored once" in layer.plan.compiled.summary
    assert len(layer.plan.compiled.factors._factors) == 1  # type: ignore[attr-defined]
    assert torch.allclose(output, reference, atol=CVXPY_TOLERANCE, rtol=0)
    dense = _kronecker_reference(x, torch.tensor(1.0, dtype=F64), _laplacian(weights))
    assert torch.allclose(output, dense, atol=1e-12, rtol=0)


def test_row_laplacian_rejects_other_rows() -> None:
    z = Variable(3, scope="batch")
    layer = ProxLayer(laplacian_quadratic(z, np.ones((4, 4))), lam=1.0)
    with pytest.raises(ShapeError, match="mini-batch of 5 rows"):
        layer(torch.randn(5, 3))


def test_per_batch_dense_fallback(generator: torch.Generator) -> None:
    rows, cols = 3, 2
    z = Variable(cols, scope="batch")
    mixing = Parameter((cols, cols), name="P")
    graph = Parameter((BATCH, BATCH), name="W", nonneg=True)
    regularizer = sum_squares(z @ mixing) + laplacian_quadratic(z, graph)
    layer = ProxLayer(regularizer, lam=1.0)
    reference_layer = ProxLayer(regularizer, lam=1.0, backend="cvxpy")
    x = torch.randn(rows, cols, generator=generator, dtype=F64)
    values = {
        "P": torch.randn(cols, cols, generator=generator, dtype=F64),
        "W": torch.rand(rows, rows, generator=generator, dtype=F64),
    }

    output = layer(x, **values)
    reference = reference_layer(x, **values)

    p = values["P"]
    system = (
        torch.eye(rows * cols, dtype=F64)
        + 2.0 * torch.kron(torch.eye(rows, dtype=F64), p @ p.T)
        + 2.0 * torch.kron(_laplacian(values["W"]), torch.eye(cols, dtype=F64))
    )
    dense = torch.linalg.solve(system, x.reshape(-1)).reshape(rows, cols)
    assert _route(layer) == "per-call Cholesky"
    assert torch.allclose(output, reference, atol=CVXPY_TOLERANCE, rtol=0)
    assert torch.allclose(output, dense, atol=1e-12, rtol=0)


def test_per_batch_input_validation() -> None:
    z = Variable(3, scope="batch")
    graph = Parameter((BATCH, BATCH), name="W", nonneg=True)
    layer = ProxLayer(laplacian_quadratic(z, graph), lam=1.0)
    weights = torch.rand(4, 4)

    with pytest.raises(ShapeError, match=r"\(\*batch, m, n\)"):
        layer(torch.randn(3), W=weights)
    with pytest.raises(ShapeError, match="n = 3"):
        layer(torch.randn(4, 5), W=weights)
    with pytest.raises(ShapeError, match="Parameter 'W'"):
        layer(torch.randn(4, 3), W=torch.rand(5, 5))
    with pytest.raises(ShapeError, match="do not broadcast"):
        layer(torch.randn(2, 4, 3), W=torch.rand(3, 4, 4))


def test_per_batch_lead_dims_broadcast(generator: torch.Generator) -> None:
    z = Variable(2, scope="batch")
    graph = Parameter((BATCH, BATCH), name="W", nonneg=True)
    layer = ProxLayer(laplacian_quadratic(z, graph), lam=torch.tensor([[1.0], [2.0]], dtype=F64))
    x = torch.randn(2, 3, 4, 2, generator=generator, dtype=F64)
    weights = torch.rand(4, 4, generator=generator, dtype=F64)

    output = layer(x, W=weights)

    assert output.shape == x.shape
    for first in range(2):
        for second in range(3):
            lam = torch.tensor(float(first + 1), dtype=F64)
            dense = _kronecker_reference(lam * x[first, second], lam, 2.0 * _laplacian(weights))
            assert torch.allclose(output[first, second], dense, atol=1e-12, rtol=0)


# -- optimality condition for every route ------------------------------------------------


def _optimality_cases() -> list[tuple[ProxLayer, torch.Tensor, dict]]:
    rng = torch.Generator().manual_seed(7)
    z = Variable(N)
    rows = Variable(2, scope="batch")
    graph = Parameter((BATCH, BATCH), name="W", nonneg=True)
    psd = _random_psd(np.random.default_rng(16), N)
    return [
        (ProxLayer(quad_form(z - 1.0, psd) - 0.1 * sum_squares(z), lam=1.0), torch.randn(3, N, dtype=F64), {}),
        (
            ProxLayer(quad_form(z - 1.0, psd), lam=torch.tensor([0.5, 1.0, 2.0], dtype=F64)),
            torch.randn(3, N, generator=rng, dtype=F64),
            {},
        ),
        (
            ProxLayer(sum_squares(Parameter((3, N), name="A") @ z + 1.0), lam=0.8),
            torch.randn(3, N, generator=rng, dtype=F64),
            {"A": torch.randn(3, 3, N, generator=rng, dtype=F64)},
        ),
        (
            ProxLayer(0.5 * quad_form(z + 1.0, Parameter((N, 2), name="G")), lam=0.8),
            torch.randn(3, N, generator=rng, dtype=F64),
            {"G": torch.randn(3, N, 2, generator=rng, dtype=F64)},
        ),
        (
            ProxLayer(laplacian_quadratic(rows - Parameter((BATCH, 2), name="T"), graph), lam=0.8),
            torch.randn(2, 4, 2, generator=rng, dtype=F64),
            {"W": torch.rand(2, 4, 4, generator=rng, dtype=F64), "T": torch.randn(4, 2, generator=rng, dtype=F64)},
        ),
    ]


@pytest.mark.parametrize("case", range(5), ids=["cached", "eigen", "per_call", "woodbury", "row_laplacian"])
def test_optimality_residual_every_route(case: int) -> None:
    layer, x, values = _optimality_cases()[case]
    call = layer._prepare(x, values)
    assert call is not None

    output = layer(x, **values).reshape(x.shape[0], -1)

    # Gradient of (1/2) z^T (a I + H) z - (y - h)^T z at the output, with (H, h) from the terms.
    y, a = call.merged(layer.problem)
    a = torch.as_tensor(a, dtype=F64).reshape(-1, 1)
    gradient = a * output - y.reshape(x.shape[0], -1)
    for term in layer.problem.residual_terms:
        hessian, linear = term_quadratic(layer.problem, term, call.values, call.x[0], call.lead_ndim)
        gradient = gradient + (hessian @ output.unsqueeze(-1)).squeeze(-1)
        if linear is not None:
            gradient = gradient + linear
    assert float(gradient.abs().max()) < 1e-11


# -- gradients ---------------------------------------------------------------------------


def _gradcheck_layer(layer: ProxLayer, x: torch.Tensor, lam: torch.Tensor | None, values: dict) -> bool:
    names = list(values)

    def run(x: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        if lam is not None:
            layer.lam = inputs[0]
            inputs = inputs[1:]
        return layer(x, **dict(zip(names, inputs, strict=True)))

    inputs = [x] + ([lam] if lam is not None else []) + [values[name] for name in names]
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    return torch.autograd.gradcheck(run, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)


def test_gradcheck_cached_cholesky(generator: torch.Generator) -> None:
    z = Variable(4)
    shift = Parameter(4, name="t")
    slope = Parameter(4, name="q")
    matrix = _random_psd(np.random.default_rng(9), 4)
    layer = ProxLayer(quad_form(z, matrix) + sum_squares(z - shift) + slope @ z, lam=0.9)
    x = torch.randn(3, 4, generator=generator, dtype=F64)
    values = {"t": torch.randn(4, dtype=F64), "q": torch.randn(3, 4, dtype=F64)}

    assert _route(layer) == "cached Cholesky"
    assert _gradcheck_layer(layer, x, None, values)


def test_gradcheck_eigendecomposition_route(generator: torch.Generator) -> None:
    z = Variable(4)
    layer = ProxLayer(quad_form(z, _random_psd(np.random.default_rng(10), 4)), lam=torch.tensor([1.0, 2.0]))
    x = torch.randn(2, 4, generator=generator, dtype=F64)
    lam = torch.tensor([0.7, 1.9], dtype=F64)

    assert _route(layer) == "cached eigendecomposition"
    assert _gradcheck_layer(layer, x, lam, {})


def test_gradcheck_per_call_cholesky(generator: torch.Generator) -> None:
    z = Variable(4)
    matrix = Parameter((3, 4), name="A")
    target = Parameter(3, name="b")
    weight = Parameter((), name="c", nonneg=True)
    layer = ProxLayer(weight * sum_squares(matrix @ z - target) - 0.05 * sum_squares(z), lam=torch.tensor(1.0))
    x = torch.randn(3, 4, generator=generator, dtype=F64)
    values = {
        "A": torch.randn(3, 3, 4, generator=generator, dtype=F64),
        "b": torch.randn(3, generator=generator, dtype=F64),
        "c": torch.tensor(0.8, dtype=F64),
    }

    assert _route(layer) == "per-call Cholesky"
    assert _gradcheck_layer(layer, x, torch.tensor(1.3, dtype=F64), values)


@pytest.mark.parametrize("weighted", [False, True], ids=["cholesky", "lu"])
def test_gradcheck_woodbury(generator: torch.Generator, weighted: bool) -> None:
    z = Variable(6)
    factor = Parameter((6, 2), name="G")
    shift = Parameter(6, name="t")
    weight = Parameter((), name="c", nonneg=True)
    coefficient = weight if weighted else 0.6
    layer = ProxLayer(coefficient * quad_form(z - shift, factor), lam=torch.tensor(1.0))
    x = torch.randn(3, 6, generator=generator, dtype=F64)
    # One shared factor for the Cholesky form, one factor per sample for the LU form.
    factor_shape = (3, 6, 2) if weighted else (6, 2)
    values = {
        "G": torch.randn(*factor_shape, generator=generator, dtype=F64),
        "t": torch.randn(6, generator=generator, dtype=F64),
    }
    if weighted:
        values["c"] = torch.tensor([0.6, 0.2, 1.5], dtype=F64)

    assert _route(layer) == "Woodbury"
    assert _gradcheck_layer(layer, x, torch.tensor([0.8, 1.0, 2.0], dtype=F64), values)


def test_gradcheck_row_laplacian(generator: torch.Generator) -> None:
    z = Variable(2, scope="batch")
    graph = Parameter((BATCH, BATCH), name="W", nonneg=True)
    target = Parameter((BATCH, 2), name="T")
    weight = Parameter((), name="c", nonneg=True)
    layer = ProxLayer(weight * laplacian_quadratic(z - target, graph), lam=torch.tensor(1.0))
    x = torch.randn(2, 3, 2, generator=generator, dtype=F64)
    values = {
        # Entries >= 0.1 keep W nonnegative under gradcheck's perturbation of 1e-6.
        "W": torch.rand(2, 3, 3, generator=generator, dtype=F64) + 0.1,
        "T": torch.randn(3, 2, generator=generator, dtype=F64),
        "c": torch.tensor(0.7, dtype=F64),
    }

    assert _route(layer) == "row Laplacian system"
    assert _gradcheck_layer(layer, x, torch.tensor([0.5, 1.5], dtype=F64), values)


def test_gradcheck_row_laplacian_cached(generator: torch.Generator) -> None:
    z = Variable(2, scope="batch")
    target = Parameter((BATCH, 2), name="T")
    weights = torch.rand(3, 3, generator=generator, dtype=F64).numpy()
    layer = ProxLayer(laplacian_quadratic(z - target, weights), lam=0.7)
    x = torch.randn(3, 2, generator=generator, dtype=F64)

    assert _route(layer) == "row Laplacian system"
    assert _gradcheck_layer(layer, x, None, {"T": torch.randn(3, 2, generator=generator, dtype=F64)})


def test_gradcheck_per_batch_dense(generator: torch.Generator) -> None:
    z = Variable(2, scope="batch")
    mixing = Parameter((2, 2), name="P")
    layer = ProxLayer(sum_squares(z @ mixing), lam=torch.tensor(1.0))
    x = torch.randn(3, 2, generator=generator, dtype=F64)
    values = {"P": torch.randn(2, 2, generator=generator, dtype=F64)}

    assert _route(layer) == "per-call Cholesky"
    assert _gradcheck_layer(layer, x, torch.tensor(0.6, dtype=F64), values)


# -- errors ------------------------------------------------------------------------------


def test_indefinite_merge_rejected_at_compile() -> None:
    z = Variable(N)
    matrix = _random_psd(np.random.default_rng(11), N)
    regularizer = sum_squares(z) - 5.0 * quad_form(z, matrix)

    with pytest.raises(NoRouteError, match="smallest eigenvalue"):
        ProxLayer(regularizer, lam=0.1, backend="quadratic")
    automatic = ProxLayer(regularizer, lam=0.1)
    reasons = dict(automatic.plan.rejected)
    assert "smallest eigenvalue" in reasons["quadratic"]


def test_indefinite_merge_raises_at_runtime(generator: torch.Generator) -> None:
    z = Variable(N)
    weight = Parameter((), name="c", nonneg=True)
    layer = ProxLayer(sum_squares(z) - weight * sum_squares(z[:2]), lam=0.5)
    x = torch.randn(2, N, generator=generator, dtype=F64)

    assert _route(layer) == "per-call Cholesky"
    assert torch.isfinite(layer(x, c=torch.tensor(1.0, dtype=F64))).all()
    with pytest.raises(InvalidInputError, match=r"smallest eigenvalue -0\.5"):
        layer(x, c=torch.tensor(1.5, dtype=F64))


def test_indefinite_eigen_route_raises(generator: torch.Generator) -> None:
    z = Variable(N)
    layer = ProxLayer(sum_squares(z) - 2.0 * sum_squares(z[:2]), lam=torch.tensor([3.0, 1.0]))
    x = torch.randn(2, N, generator=generator)

    with pytest.raises(InvalidInputError, match=r"batch items \[1\].*smallest eigenvalue -1"):
        layer(x)


def test_woodbury_nonpositive_weight_rejected(generator: torch.Generator) -> None:
    z = Variable(N)
    factor = Parameter((N, 2), name="G")
    regularizer = quad_form(z, factor) - 0.5 * sum_squares(z)
    with pytest.raises(NoRouteError, match="rank below n"):
        ProxLayer(regularizer, lam=0.5, backend="quadratic")
    layer = ProxLayer(regularizer, lam=torch.tensor(0.5))
    with pytest.raises(InvalidInputError, match="rank 2 < n = 5"):
        layer(torch.randn(2, N, generator=generator), G=torch.randn(N, 2, generator=generator))


def test_negative_graph_weights_rejected() -> None:
    z = Variable(3, scope="batch")
    layer = ProxLayer(laplacian_quadratic(z, Parameter((BATCH, BATCH), name="W", nonneg=True)), lam=1.0)
    weights = torch.rand(4, 4)
    weights[1, 2] = -0.25

    with pytest.raises(InvalidInputError, match="nonneg=True.*-0.25"):
        layer(torch.randn(4, 3), W=weights)


def test_unsupported_problems_name_reason() -> None:
    z = Variable(N)
    with pytest.raises(NoRouteError, match="unconstrained problems only"):
        ProxLayer(sum_squares(z @ np.ones((N, N))), [Box(-1, 1)], backend="quadratic")
    with pytest.raises(NoRouteError, match=r"norm1\(z\)\] are not quadratic"):
        ProxLayer(quad_form(z, np.eye(N)) + norm1(z), backend="quadratic")


# -- dtype and device --------------------------------------------------------------------


def _float32_cases() -> list[tuple[str, ProxLayer, torch.Tensor, dict]]:
    rng = torch.Generator().manual_seed(5)
    z = Variable(N)
    rows = Variable(2, scope="batch")
    graph = Parameter((BATCH, BATCH), name="W", nonneg=True)
    return [
        ("cached", ProxLayer(quad_form(z, _random_psd(np.random.default_rng(12), N)), lam=1.0), torch.randn(3, N), {}),
        (
            "eigen",
            ProxLayer(quad_form(z, np.eye(N)), lam=torch.tensor(0.5)),
            torch.randn(3, N, generator=rng),
            {},
        ),
        (
            "per_call",
            ProxLayer(sum_squares(Parameter((N, N), name="A") @ z), lam=1.0),
            torch.randn(3, N, generator=rng),
            {"A": torch.randn(N, N, generator=rng)},
        ),
        (
            "woodbury",
            ProxLayer(quad_form(z, Parameter((N, 2), name="G")), lam=1.0),
            torch.randn(3, N, generator=rng),
            {"G": torch.randn(3, N, 2, generator=rng)},
        ),
        (
            "row_laplacian",
            ProxLayer(laplacian_quadratic(rows, graph), lam=1.0),
            torch.randn(4, 2, generator=rng),
            {"W": torch.rand(4, 4, generator=rng)},
        ),
    ]


@pytest.mark.parametrize("case", range(5), ids=["cached", "eigen", "per_call", "woodbury", "row_laplacian"])
def test_float32_output_dtype(case: int) -> None:
    _, layer, x, values = _float32_cases()[case]

    output = layer(x, **values)
    reference = layer(x.double(), **{name: value.double() for name, value in values.items()})

    assert output.dtype == torch.float32
    # float32 solves of these well-conditioned systems (condition number below 50) agree to about 1e-6.
    assert torch.allclose(output.double(), reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("case", range(5), ids=["cached", "eigen", "per_call", "woodbury", "row_laplacian"])
def test_half_input_solved_in_float32(case: int, dtype: torch.dtype) -> None:
    _, layer, x, values = _float32_cases()[case]

    output = layer(x.to(dtype), **{name: value.to(dtype) for name, value in values.items()})
    reference = layer(x.to(dtype).float(), **{name: value.to(dtype).float() for name, value in values.items()})

    assert output.dtype == dtype
    assert torch.equal(output, reference.to(dtype))


@pytest.mark.cuda
def test_routes_run_on_cuda() -> None:
    device = torch.device("cuda")
    for _, layer, x, values in _float32_cases():
        output = layer(x.to(device), **{name: value.to(device) for name, value in values.items()})
        reference = layer(x, **values)
        assert output.device.type == "cuda"
        assert torch.allclose(output.cpu(), reference, atol=1e-5, rtol=1e-5)


# -- the shared term helper --------------------------------------------------------------


def test_term_quadratic_reproduces_term(generator: torch.Generator) -> None:
    z = Variable(4)
    matrix = Parameter((3, 4), name="A")
    factor = Parameter((4, 2), name="G")
    graph = Parameter((4, 4), name="W", nonneg=True)
    layer = ProxLayer(
        sum_squares(matrix @ z - 1.0) + 0.5 * quad_form(z + 2.0, factor) + laplacian_quadratic(3.0 * z, graph),
        lam=1.0,
    )
    values = {
        "A": torch.randn(3, 4, generator=generator, dtype=F64),
        "G": torch.randn(4, 2, generator=generator, dtype=F64),
        "W": torch.rand(4, 4, generator=generator, dtype=F64),
    }
    call = layer._prepare(torch.zeros(1, 4, dtype=F64), values)
    assert call is not None
    point = torch.randn(4, generator=generator, dtype=F64)
    origin = torch.zeros(4, dtype=F64)

    for term in layer.problem.residual_terms:
        hessian, linear = term_quadratic(layer.problem, term, call.values, call.x[0], call.lead_ndim)
        linear = torch.zeros(4, dtype=F64) if linear is None else linear

        def value(at: torch.Tensor, term=term) -> torch.Tensor:
            local = dict(call.values)
            local[id(layer.problem.variable)] = at
            return term.coefficient.value(local, at) * evaluate(term.expr, local, at)

        expected = value(point) - value(origin)
        assert torch.allclose(0.5 * point @ hessian @ point + linear @ point, expected, atol=1e-12, rtol=0)
