"""The closed-form catalog as a whole: every listed prox map is recognized, exact and checked.

Each entry is declared the way a user would write it. For each, the plan must pick the
closed_form backend, the output must match the cvxpy backend (where the problem is
convex) and the optimality of the output is checked through that agreement; gradients
pass gradcheck in float64 with respect to the input and a learnable lam.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

import proxopt as po

N = 6
Declaration = tuple[po.Expression | None, list[po.Constraint], po.Variable]


def _declare(build: Callable[[po.Variable], tuple[po.Expression | None, list[po.Constraint]]]) -> Declaration:
    z = po.Variable(N)
    regularizer, constraints = build(z)
    return regularizer, constraints, z


CATALOG: dict[str, Callable[[po.Variable], tuple[po.Expression | None, list[po.Constraint]]]] = {
    "nonnegative orthant": lambda z: (None, [z >= 0]),
    "box": lambda z: (None, [po.Box(-0.5, 1.5)]),
    "simplex": lambda z: (None, [po.Simplex()]),
    "l1 ball": lambda z: (None, [po.L1Ball(1.0)]),
    "l2 ball": lambda z: (None, [po.L2Ball(1.0)]),
    "linf ball": lambda z: (None, [po.LinfBall(0.7)]),
    "affine set": lambda z: (None, [po.Affine(np.arange(2 * N, dtype=float).reshape(2, N) % 3, np.ones(2))]),
    "sphere": lambda z: (None, [po.Sphere(2.0)]),
    "centered sphere": lambda z: (None, [po.CenteredSphere()]),
    "soft-threshold": lambda z: (0.4 * po.norm1(z), []),
    "nonnegative soft-threshold": lambda z: (0.4 * po.norm1(z), [z >= 0]),
    "elastic net": lambda z: (0.4 * po.norm1(z) + 0.3 * po.sum_squares(z), []),
    "l2 norm": lambda z: (0.8 * po.norm2(z), []),
    "group lasso": lambda z: (0.5 * po.group_norm(z, 2), []),
    "linf norm": lambda z: (0.9 * po.norm_inf(z), []),
    "huber": lambda z: (0.7 * po.huber(z, 0.5), []),
    "leaky relu": lambda z: (4.5 * po.sum_squares(po.neg(z)), []),
    "sigmoid": lambda z: (po.binary_neg_entropy(z) - 0.5 * po.sum_squares(z), []),
    "tanh": lambda z: (po.binary_neg_entropy(0.5 * z + 0.5) - 0.5 * po.sum_squares(z), []),
    "softmax": lambda z: (po.neg_entropy(z) - 0.5 * po.sum_squares(z), [po.Simplex()]),
    "tv-1d": lambda z: (0.5 * po.tv1d(z), []),
}
NONCONVEX = {"sphere", "centered sphere"}


def _input(seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 3 * torch.randn(4, N, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("name", list(CATALOG))
def test_explain_reports_closed_form(name: str) -> None:
    regularizer, constraints, z = _declare(CATALOG[name])
    layer = po.ProxLayer(regularizer, constraints, lam=1.5, variable=z)
    assert layer.plan.backend == "closed_form"
    assert "backend: closed_form (chosen automatically)" in po.explain(layer)


@pytest.mark.parametrize("name", [name for name in CATALOG if name not in NONCONVEX])
def test_matches_cvxpy_backend(name: str) -> None:
    regularizer, constraints, z = _declare(CATALOG[name])
    closed = po.ProxLayer(regularizer, constraints, lam=1.5, variable=z)
    # SCS at eps 1e-10 reaches the 1e-6 agreement on every entry here.
    solver = po.ProxLayer(regularizer, constraints, lam=1.5, variable=z, backend="cvxpy")
    x = _input(0)
    assert torch.allclose(closed(x), solver(x), atol=1e-6)


@pytest.mark.parametrize("name", list(CATALOG))
def test_gradcheck_input_and_lam(name: str) -> None:
    regularizer, constraints, z = _declare(CATALOG[name])
    layer = po.ProxLayer(regularizer, constraints, variable=z)
    x = _input(1).requires_grad_(True)
    lam = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)

    def apply(x: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        layer.lam = lam
        return layer(x)

    assert torch.autograd.gradcheck(apply, (x, lam))
