"""Property test: random convex declarations match a direct, independently written cvxpy solve.

Each drawn recipe is turned into two problems side by side: a proxopt declaration run
through ``ProxLayer`` (cvxpy backend), and a cvxpy problem written directly from the same
recipe, without proxopt's lowering. Their minimizers must agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cvxpy as cp
import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

import proxopt as po

# The direct reference runs SCS at eps = 1e-10 (Clarabel stalls near 1e-5 on some of these
# second-order cone problems), with primal errors below about 1e-7. The layer's cvxpy
# backend solves coupled exponential-cone problems (logistic with a ball) with Clarabel,
# whose gap tolerance 1e-12 bounds the primal error only by about 1e-6. 1e-5 covers both,
# while a modelling mismatch (a missing 1/2, a wrong sign) shows errors of order 1e-1.
TOLERANCE = 1e-5

ATOMS = ["norm1", "norm2", "norm_inf", "sum_squares_affine", "huber", "logistic", "tv1d", "quad_form", "group_norm"]
SETS = ["none", "nonneg", "box", "l2ball", "l1ball", "simplex"]


@dataclass
class Recipe:
    n: int
    atoms: list[tuple[str, float]]
    constraint: str
    lam: float
    seed: int


@st.composite
def recipes(draw: st.DrawFn) -> Recipe:
    n = draw(st.integers(min_value=2, max_value=5))
    count = draw(st.integers(min_value=1, max_value=3))
    atoms = [(draw(st.sampled_from(ATOMS)), draw(st.floats(min_value=0.05, max_value=2.0))) for _ in range(count)]
    constraint = draw(st.sampled_from(SETS))
    lam = draw(st.floats(min_value=0.3, max_value=3.0))
    return Recipe(n, atoms, constraint, lam, draw(st.integers(min_value=0, max_value=10_000)))


def _build(recipe: Recipe, rng: np.random.Generator) -> tuple[Any, list[Any], Any]:
    """Return (proxopt regularizer, proxopt constraints, cvxpy builder) for a recipe."""
    z = po.Variable(recipe.n)
    terms: list[Any] = []
    direct: list[Any] = []
    for name, weight in recipe.atoms:
        if name == "norm1":
            terms.append(weight * po.norm1(z))
            direct.append(lambda v, w=weight: w * cp.sum(cp.abs(v)))
        elif name == "norm2":
            terms.append(weight * po.norm2(z))
            direct.append(lambda v, w=weight: w * cp.norm(v, 2))
        elif name == "norm_inf":
            terms.append(weight * po.norm_inf(z))
            direct.append(lambda v, w=weight: w * cp.max(cp.abs(v)))
        elif name == "sum_squares_affine":
            matrix = rng.normal(size=(2, recipe.n))
            offset = rng.normal(size=2)
            terms.append(weight * po.sum_squares(matrix @ z - offset))
            direct.append(lambda v, w=weight, a=matrix, b=offset: w * cp.sum_squares(a @ v - b))
        elif name == "huber":
            terms.append(weight * po.huber(z, 0.7))
            direct.append(lambda v, w=weight: w * 0.5 * cp.sum(cp.huber(v, 0.7)))
        elif name == "logistic":
            terms.append(weight * po.logistic(z))
            direct.append(lambda v, w=weight: w * cp.sum(cp.logistic(v)))
        elif name == "tv1d":
            terms.append(weight * po.tv1d(z))
            direct.append(lambda v, w=weight: w * cp.sum(cp.abs(v[1:] - v[:-1])))
        elif name == "quad_form":
            factor = rng.normal(size=(recipe.n, recipe.n))
            matrix = factor @ factor.T / recipe.n
            terms.append(weight * po.quad_form(z, matrix))
            direct.append(lambda v, w=weight, m=matrix: w * cp.quad_form(v, m))
        else:
            groups = [[0], list(range(1, recipe.n))]
            terms.append(weight * po.group_norm(z, groups))
            direct.append(lambda v, w=weight, g=groups: w * sum(cp.norm(v[idx], 2) for idx in g))

    constraints: list[Any] = []
    direct_constraints: Any = lambda v: []  # noqa: E731
    if recipe.constraint == "nonneg":
        constraints = [z >= 0]
        direct_constraints = lambda v: [v >= 0]  # noqa: E731
    elif recipe.constraint == "box":
        constraints = [po.Box(-0.5, 1.0)]
        direct_constraints = lambda v: [v >= -0.5, v <= 1.0]  # noqa: E731
    elif recipe.constraint == "l2ball":
        constraints = [po.L2Ball(0.8)]
        direct_constraints = lambda v: [cp.norm(v, 2) <= 0.8]  # noqa: E731
    elif recipe.constraint == "l1ball":
        constraints = [po.L1Ball(1.2)]
        direct_constraints = lambda v: [cp.sum(cp.abs(v)) <= 1.2]  # noqa: E731
    elif recipe.constraint == "simplex":
        constraints = [po.Simplex()]
        direct_constraints = lambda v: [v >= 0, cp.sum(v) == 1]  # noqa: E731

    regularizer = terms[0]
    for term in terms[1:]:
        regularizer = regularizer + term

    def solve_direct(x: np.ndarray) -> np.ndarray:
        v = cp.Variable(recipe.n)
        objective = sum(build(v) for build in direct) + recipe.lam / 2 * cp.sum_squares(v - x)
        problem = cp.Problem(cp.Minimize(objective), direct_constraints(v))
        problem.solve(solver=cp.SCS, eps_abs=1e-10, eps_rel=1e-10, max_iters=200_000)
        assert problem.status == cp.OPTIMAL
        return np.asarray(v.value)

    return regularizer, constraints, solve_direct


@given(recipes())
def test_random_declaration_matches_direct_cvxpy(recipe: Recipe) -> None:
    rng = np.random.default_rng(recipe.seed)
    regularizer, constraints, solve_direct = _build(recipe, rng)
    layer = po.ProxLayer(regularizer, constraints, lam=recipe.lam, backend="cvxpy")
    x = torch.from_numpy(2 * rng.normal(size=(2, recipe.n)))
    output = layer(x).numpy()
    for row in range(2):
        expected = solve_direct(x[row].numpy())
        assert np.abs(output[row] - expected).max() <= TOLERANCE, (recipe, output[row], expected)
