"""Tests of the cvxpy backend: values against direct cvxpy solves, gradients by gradcheck."""

from __future__ import annotations

from collections.abc import Callable

import cvxpy as cp
import numpy as np
import pytest
import torch

import proxopt as po

# gradcheck tolerance arithmetic: the solver returns values to about 1e-11 (SCS at
# eps = 1e-12), so central differences with step 1e-6 carry errors near 1e-5; atol 1e-4
# leaves a margin over that, and any wrong derivative shows errors of order 1e-1.
GRADCHECK = {"eps": 1e-6, "atol": 1e-4, "rtol": 1e-3}


def _direct_prox(
    build: Callable[[cp.Variable], tuple[cp.Expression, list[cp.Constraint]]], x: np.ndarray, lam: float
) -> np.ndarray:
    """Solve the prox problem for one input vector with plain cvxpy and Clarabel."""
    z = cp.Variable(x.shape)
    regularizer, constraints = build(z)
    problem = cp.Problem(cp.Minimize(regularizer + lam / 2 * cp.sum_squares(z - x)), constraints)
    problem.solve(solver=cp.CLARABEL)
    assert problem.status == cp.OPTIMAL
    return np.asarray(z.value)


def test_l1_nonneg_matches_direct_solve(generator: torch.Generator) -> None:
    z = po.Variable(6)
    layer = po.ProxLayer(0.3 * po.norm1(z), [z >= 0], lam=2.0, backend="cvxpy")
    x = torch.randn(4, 6, generator=generator, dtype=torch.float64)
    output = layer(x)
    for row in range(4):
        expected = _direct_prox(lambda v: (0.3 * cp.norm1(v), [v >= 0]), x[row].numpy(), 2.0)
        assert np.allclose(output[row].numpy(), expected, atol=1e-6)


def test_output_keeps_float32_dtype(generator: torch.Generator) -> None:
    z = po.Variable(5)
    layer = po.ProxLayer(po.norm2(z), [po.Box(-1, 1)], backend="cvxpy")
    x = torch.randn(3, 5, generator=generator)
    output = layer(x)
    assert output.dtype == torch.float32
    assert output.device == x.device
    assert output.shape == x.shape


def test_leading_batch_dims_are_kept(generator: torch.Generator) -> None:
    z = po.Variable(4)
    layer = po.ProxLayer(0.1 * po.norm1(z), backend="cvxpy")
    x = torch.randn(2, 3, 4, generator=generator, dtype=torch.float64)
    output = layer(x)
    assert output.shape == (2, 3, 4)
    assert torch.allclose(output, torch.nn.functional.softshrink(x, 0.1), atol=1e-7)


def test_single_vector_input(generator: torch.Generator) -> None:
    z = po.Variable(4)
    layer = po.ProxLayer(None, [z >= 0], backend="cvxpy")
    x = torch.randn(4, generator=generator, dtype=torch.float64)
    assert torch.allclose(layer(x), torch.relu(x), atol=1e-8)


def test_empty_batch_returns_empty() -> None:
    z = po.Variable(4)
    layer = po.ProxLayer(0.1 * po.norm1(z), backend="cvxpy")
    output = layer(torch.empty(0, 4))
    assert output.shape == (0, 4)


def test_gradcheck_input_lam_parameter(generator: torch.Generator) -> None:
    n = 4
    z = po.Variable(n)
    weight = po.Parameter((), name="t", nonneg=True)
    layer = po.ProxLayer(weight * po.norm1(z) + 0.5 * po.sum_squares(z), [z <= 1.5], backend="cvxpy")
    x = torch.randn(3, n, generator=generator, dtype=torch.float64, requires_grad=True)
    lam = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(0.25, dtype=torch.float64, requires_grad=True)

    def apply(x: torch.Tensor, lam: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        layer.lam = lam
        return layer(x, t=t)

    assert torch.autograd.gradcheck(apply, (x, lam, t), **GRADCHECK)


def test_gradcheck_vector_parameter_linear_term(generator: torch.Generator) -> None:
    n = 4
    z = po.Variable(n)
    shift = po.Parameter(n, name="w")
    layer = po.ProxLayer(po.sum(shift * z) + 0.2 * po.huber(z, 0.5), [po.L2Ball(2.0)], backend="cvxpy")
    x = torch.randn(2, n, generator=generator, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, n, generator=generator, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: layer(x, w=w), (x, w), **GRADCHECK)


def test_gradcheck_parameter_radius(generator: torch.Generator) -> None:
    n = 3
    radius = po.Parameter((), name="r", nonneg=True)
    layer = po.ProxLayer(None, [po.L1Ball(radius)], variable=po.Variable(n), backend="cvxpy")
    x = 3 * torch.randn(2, n, generator=generator, dtype=torch.float64)
    x.requires_grad_(True)
    r = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, r: layer(x, r=r), (x, r), **GRADCHECK)


def test_gradcheck_merged_negative_quadratic(generator: torch.Generator) -> None:
    # A weakly convex R: the negative quadratic is merged with lam * I by Cholesky.
    n = 4
    z = po.Variable(n)
    matrix = np.array([[1.0, 2.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0]])
    layer = po.ProxLayer(po.norm1(z) - 0.1 * po.sum_squares(matrix @ z), lam=2.0, backend="cvxpy")
    x = torch.randn(2, n, generator=generator, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,), **GRADCHECK)


def test_merged_quadratic_value_matches_reformulation(generator: torch.Generator) -> None:
    n = 4
    z = po.Variable(n)
    matrix = np.array([[1.0, 2.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0]])
    layer = po.ProxLayer(po.norm1(z) - 0.1 * po.sum_squares(matrix @ z), lam=2.0, backend="cvxpy")
    x = torch.randn(3, n, generator=generator, dtype=torch.float64)
    output = layer(x)
    hessian = 2.0 * np.eye(n) - 0.2 * matrix.T @ matrix  # lam I + Hessian of the quadratic part
    factor = np.linalg.cholesky(hessian)
    for row in range(3):
        v = cp.Variable(n)
        objective = cp.norm1(v) + 0.5 * cp.sum_squares(factor.T @ v) - 2.0 * x[row].numpy() @ v
        cp.Problem(cp.Minimize(objective)).solve(solver=cp.CLARABEL)
        assert np.allclose(output[row].numpy(), v.value, atol=1e-6)


def test_per_batch_variable_laplacian(generator: torch.Generator) -> None:
    m, n = 4, 2
    z = po.Variable(n, scope="batch")
    weights = po.Parameter((po.BATCH, po.BATCH), name="W", nonneg=True)
    layer = po.ProxLayer(po.laplacian_quadratic(z, weights) + 0.1 * po.norm1(z), backend="cvxpy")
    x = torch.randn(m, n, generator=generator, dtype=torch.float64)
    w = torch.rand(m, m, generator=generator, dtype=torch.float64)
    output = layer(x, W=w)
    assert output.shape == (m, n)

    v = cp.Variable((m, n))
    smoothness = sum(w[i, j].item() * cp.sum_squares(v[i] - v[j]) for i in range(m) for j in range(m))
    problem = cp.Problem(cp.Minimize(smoothness + 0.1 * cp.sum(cp.abs(v)) + 0.5 * cp.sum_squares(v - x.numpy())))
    problem.solve(solver=cp.CLARABEL)
    assert np.allclose(output.numpy(), v.value, atol=1e-6)


def test_explain_names_cvxpy_and_reasons() -> None:
    z = po.Variable(3)
    layer = po.ProxLayer(po.norm1(np.ones((2, 3)) @ z))
    text = po.explain(layer)
    assert "backend: cvxpy (chosen automatically)" in text
    assert "not closed_form:" in text
    assert "CPU in float64" in text


@pytest.mark.parametrize("solve_method", ["SCS", "Clarabel"])
def test_solver_args_override(solve_method: str, generator: torch.Generator) -> None:
    z = po.Variable(3)
    layer = po.ProxLayer(0.5 * po.norm1(z), backend="cvxpy", solver_args={"solve_method": solve_method, "mode": "lsqr"})
    x = torch.randn(2, 3, generator=generator, dtype=torch.float64)
    assert torch.allclose(layer(x), torch.nn.functional.softshrink(x, 0.5), atol=1e-4)
