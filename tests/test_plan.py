"""Tests of backend selection: order, forcing, explain() and check=True."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import proxopt as po


def test_closed_form_preferred_over_cvxpy() -> None:
    z = po.Variable(4)
    layer = po.ProxLayer(0.1 * po.norm1(z), [z >= 0])
    assert layer.plan.backend == "closed_form"
    assert layer.plan.rejected == []


def test_quadratic_chosen_for_general_quadratic() -> None:
    z = po.Variable(4)
    layer = po.ProxLayer(po.sum_squares(np.ones((2, 4)) @ z))
    text = po.explain(layer)
    assert layer.plan.backend == "quadratic"
    assert "not closed_form:" in text


def test_cvxpy_fallback_lists_faster_routes() -> None:
    z = po.Variable(4)
    layer = po.ProxLayer(po.norm1(z) + po.norm2(z))
    text = po.explain(layer)
    assert layer.plan.backend == "cvxpy"
    assert "not closed_form: no closed form in the catalog matches" in text
    assert "not quadratic:" in text


def test_smooth_needs_opt_in() -> None:
    z = po.Variable(3)
    regularizer = po.smooth(lambda u: -torch.cos(u).sum(-1), z, name="neg_cos")
    with pytest.raises(po.NoRouteError, match="smooth"):
        po.ProxLayer(regularizer, lam=2.0)
    layer = po.ProxLayer(regularizer, lam=2.0, allow_smooth=True)
    assert layer.plan.backend == "smooth"
    x = torch.tensor([[0.3, -1.0, 2.0]], dtype=torch.float64)
    z_star = layer(x)
    # Optimality: sin(z) + lam (z - x) = 0.
    assert torch.allclose(torch.sin(z_star) + 2.0 * (z_star - x), torch.zeros_like(x), atol=1e-8)


def test_forced_backend_that_cannot_solve() -> None:
    z = po.Variable(3)
    with pytest.raises(po.NoRouteError, match="the 'closed_form' backend cannot solve"):
        po.ProxLayer(po.norm1(z) + po.norm2(z), backend="closed_form")


def test_forced_cvxpy_matches_closed_form() -> None:
    z = po.Variable(5)
    x = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    closed = po.ProxLayer(0.3 * po.norm2(z))
    solver = po.ProxLayer(0.3 * po.norm2(z), backend="cvxpy")
    assert closed.plan.backend == "closed_form"
    assert torch.allclose(closed(x), solver(x), atol=1e-6)


def test_check_mode_silent_when_backends_agree() -> None:
    z = po.Variable(4)
    layer = po.ProxLayer(0.2 * po.norm1(z), check=True)
    x = torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    output = layer(x)
    assert torch.allclose(output, torch.nn.functional.softshrink(x, 0.2))


def test_check_mode_warns_on_disagreement() -> None:
    z = po.Variable(4)
    layer = po.ProxLayer(0.2 * po.norm1(z), check=True)
    compiled = layer.plan.compiled

    def wrong(call: po.backends.ProxCall) -> torch.Tensor:
        return call.x + 1.0

    compiled.match.solve = wrong  # type: ignore[attr-defined]
    x = torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with pytest.warns(po.SolverWarning, match="disagree by"):
        layer(x)
