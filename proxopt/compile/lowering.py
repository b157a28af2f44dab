"""Translation of DSL expressions and constraints to cvxpy, and feasibility checks.

Lowering maps each leaf to a cvxpy object through ``leaves`` (keyed by ``id``): the
variable to a ``cvxpy.Variable``, each Parameter to a ``cvxpy.Parameter`` of the resolved
shape, and constants to numpy arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import cvxpy as cp
import numpy as np
import torch

from proxopt.compile.evaluate import Values, evaluate
from proxopt.dsl.atoms import Atom, PartExpression
from proxopt.dsl.expressions import (
    AddExpression,
    Constant,
    Expression,
    IndexExpression,
    Leaf,
    MatMulExpression,
    MultiplyExpression,
    SumExpression,
    Variable,
)
from proxopt.dsl.sets import (
    Affine,
    Box,
    CenteredSphere,
    Constraint,
    Equality,
    Inequality,
    L1Ball,
    L2Ball,
    LinfBall,
    Set,
    Simplex,
    Sphere,
)
from proxopt.errors import EmptySetError

__all__ = ["lower_expression", "lower_constraint", "constraint_violation", "check_constant_feasibility"]


def lower_expression(expr: Expression, leaves: Mapping[int, Any]) -> Any:
    """Return the cvxpy expression of a DSL expression."""
    if isinstance(expr, Leaf):
        if isinstance(expr, Constant):
            return expr.value if expr.value.ndim else float(expr.value)
        return leaves[id(expr)]
    if isinstance(expr, AddExpression):
        left, right = (lower_expression(arg, leaves) for arg in expr.args)
        return left + right
    if isinstance(expr, MultiplyExpression):
        factor = lower_expression(expr.factor, leaves)
        inner = lower_expression(expr.expr, leaves)
        if expr.factor.is_scalar:
            return factor * inner
        return cp.multiply(factor, inner)
    if isinstance(expr, MatMulExpression):
        left, right = (lower_expression(arg, leaves) for arg in expr.args)
        return left @ right
    if isinstance(expr, IndexExpression):
        inner = lower_expression(expr.args[0], leaves)
        return inner[expr.key if len(expr.key) > 1 else expr.key[0]]
    if isinstance(expr, SumExpression):
        return cp.sum(lower_expression(expr.args[0], leaves))
    if isinstance(expr, PartExpression):
        inner = lower_expression(expr.args[0], leaves)
        return cp.pos(inner) if expr.kind == "pos" else cp.neg(inner)
    if isinstance(expr, Atom):
        arguments = [lower_expression(arg, leaves) for arg in expr.args]
        return expr.to_cvxpy(*arguments)
    raise TypeError(f"cannot lower expression node {type(expr).__name__} to cvxpy")


def _rows(variable: Any) -> list[Any]:
    """Return the rows a named set applies to: the vector, or each row of a matrix."""
    if len(variable.shape) == 1:
        return [variable]
    return [variable[i, :] for i in range(variable.shape[0])]


def lower_constraint(constraint: Constraint, variable: Any, leaves: Mapping[int, Any]) -> list[Any]:
    """Return the cvxpy constraints of a DSL constraint (a list, possibly several)."""
    if isinstance(constraint, Inequality):
        return [lower_expression(constraint.left, leaves) <= lower_expression(constraint.right, leaves)]
    if isinstance(constraint, Equality):
        return [lower_expression(constraint.left, leaves) == lower_expression(constraint.right, leaves)]

    assert isinstance(constraint, Set)
    data = {name: lower_expression(value, leaves) for name, value in constraint.data().items()}
    rows = _rows(variable)
    if isinstance(constraint, Box):
        result = []
        for row in rows:
            if "lo" in data:
                result.append(row >= data["lo"])
            if "hi" in data:
                result.append(row <= data["hi"])
        return result
    if isinstance(constraint, Simplex):
        return [c for row in rows for c in (row >= 0, cp.sum(row) == data["radius"])]
    if isinstance(constraint, L1Ball):
        return [cp.norm1(row) <= data["radius"] for row in rows]
    if isinstance(constraint, L2Ball):
        return [cp.norm(row, 2) <= data["radius"] for row in rows]
    if isinstance(constraint, LinfBall):
        return [cp.norm_inf(row) <= data["radius"] for row in rows]
    if isinstance(constraint, Affine):
        return [data["A"] @ row == data["b"] for row in rows]
    raise TypeError(f"the set {constraint!r} has no cvxpy form")


def constraint_violation(constraint: Constraint, z: torch.Tensor, values: Values, variable: Variable) -> torch.Tensor:
    """Return the largest violation of ``constraint`` by each item of ``z`` (shape ``(B,)``).

    ``z`` has shape ``(B, *shape)``; violations are absolute, in the units of the data.
    """
    batch = z.shape[0]
    local = dict(values)
    local[id(variable)] = z
    if isinstance(constraint, (Inequality, Equality)):
        left = evaluate(constraint.left, local, z)
        right = evaluate(constraint.right, local, z)
        gap = left - right
        gap = (
            gap.expand(batch, *gap.shape[gap.ndim - max(constraint.left.ndim, constraint.right.ndim) :])
            if gap.ndim == 0
            else gap
        )
        gap = gap.relu() if isinstance(constraint, Inequality) else gap.abs()
        return gap.reshape(batch, -1).amax(-1) if gap.numel() else z.new_zeros(batch)

    assert isinstance(constraint, Set)
    data = {}
    for name, expr in constraint.data().items():
        data[name] = evaluate(expr, local, z)
    rows = z  # (B, n) or (B, m, n): named sets act on the last axis
    n = rows.shape[-1]

    def per_item(row_violation: torch.Tensor) -> torch.Tensor:
        return row_violation.reshape(batch, -1).amax(-1)

    if isinstance(constraint, Box):
        for name, expr in constraint.data().items():
            bound = data[name]
            if expr.ndim == 0 and bound.ndim:
                # A per-sample scalar bound has shape (B,), so align it with the entries of each row.
                data[name] = bound.reshape(bound.shape + (1,) * (rows.ndim - bound.ndim))
        worst = torch.zeros_like(rows)
        if "lo" in data:
            worst = torch.maximum(worst, data["lo"] - rows)
        if "hi" in data:
            worst = torch.maximum(worst, rows - data["hi"])
        return per_item(worst)
    if isinstance(constraint, Simplex):
        below = (-rows).relu().amax(-1)
        total = (rows.sum(-1) - _row_scalar(data["radius"], rows)).abs()
        return per_item(torch.maximum(below, total))
    if isinstance(constraint, (L1Ball, L2Ball, LinfBall)):
        if isinstance(constraint, L1Ball):
            norm = rows.abs().sum(-1)
        elif isinstance(constraint, L2Ball):
            norm = rows.pow(2).sum(-1).sqrt()
        else:
            norm = rows.abs().amax(-1)
        return per_item((norm - _row_scalar(data["radius"], rows)).relu())
    if isinstance(constraint, Affine):
        residual = (data["A"] @ rows.unsqueeze(-1)).squeeze(-1) - data["b"]
        return per_item(residual.abs())
    if isinstance(constraint, Sphere):
        norm = rows.pow(2).sum(-1).sqrt()
        return per_item((norm - _row_scalar(data["radius"], rows)).abs())
    if isinstance(constraint, CenteredSphere):
        norm = rows.pow(2).sum(-1).sqrt()
        off_norm = (norm - float(np.sqrt(n))).abs()
        return per_item(torch.maximum(off_norm, rows.sum(-1).abs()))
    raise TypeError(f"no violation measure for {constraint!r}")


def _row_scalar(value: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Align a scalar set datum (shape ``()`` or ``(B,)``) with per-row reductions."""
    if value.ndim == 0:
        return value
    return value.reshape(value.shape + (1,) * (rows.ndim - 1 - value.ndim))


def check_constant_feasibility(
    variable: Variable, constraints: Sequence[Constraint], row_count: int | None = None
) -> None:
    """Raise EmptySetError when constant convex constraints have no common point.

    Only constraints whose data are constants are checked (Parameter data are known only
    at call time). The check solves a feasibility problem with cvxpy.
    """
    constant = [c for c in constraints if c.convex and not c.parameters()]
    needs_check = len(constant) >= 2 or any(isinstance(c, Equality) for c in constant)
    if not needs_check:
        return
    shape = (variable.size,) if variable.scope == "sample" else (row_count or 1, variable.size)
    point = cp.Variable(shape)
    leaves = {id(variable): point}
    lowered = [item for c in constant for item in lower_constraint(c, point, leaves)]
    problem = cp.Problem(cp.Minimize(0), lowered)
    problem.solve(solver=cp.CLARABEL)
    if problem.status in (cp.INFEASIBLE, cp.INFEASIBLE_INACCURATE):
        listed = ", ".join(repr(c) for c in constant)
        raise EmptySetError(
            f"the constraint set is empty: no point satisfies {listed} together "
            f"(cvxpy status {problem.status!r}). Remove or relax one of them."
        )
