"""Evaluation of DSL expressions on torch tensors.

Every value carries leading dimensions before the expression's own shape: a tensor for an
expression of shape ``s`` has shape ``(*lead, *s)``. Leading dimensions broadcast like
torch's, so a parameter shared by the batch (``lead = ()``) combines with a variable
value of ``lead = (B,)``. Evaluation is differentiable with respect to every input.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

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
)

__all__ = ["Values", "evaluate", "constant_tensor", "linear_gradient", "affine_coefficients"]

Values = Mapping[int, torch.Tensor]
"""Tensors for the leaves of an expression, keyed by ``id(leaf)``."""


def constant_tensor(constant: Constant, like: torch.Tensor) -> torch.Tensor:
    """Return a constant's value as a tensor with the dtype and device of ``like``."""
    cache = constant.__dict__.setdefault("_tensor_cache", {})
    key = (like.dtype, like.device)
    tensor = cache.get(key)
    if tensor is None:
        # A tensor created under inference mode could not be saved for backward later.
        with torch.inference_mode(False):
            tensor = torch.as_tensor(constant.value, dtype=like.dtype, device=like.device)
        cache[key] = tensor
    return tensor


def _unsqueeze_trailing(value: torch.Tensor, count: int) -> torch.Tensor:
    for _ in range(count):
        value = value.unsqueeze(-1)
    return value


def evaluate(expr: Expression, values: Values, like: torch.Tensor) -> torch.Tensor:
    """Evaluate ``expr`` with leaf tensors from ``values``; ``like`` fixes dtype and device."""
    if isinstance(expr, Leaf):
        if isinstance(expr, Constant):
            return constant_tensor(expr, like)
        return values[id(expr)]

    if isinstance(expr, AddExpression):
        left, right = (evaluate(arg, values, like) for arg in expr.args)
        left = _unsqueeze_trailing(left, expr.ndim - expr.args[0].ndim)
        right = _unsqueeze_trailing(right, expr.ndim - expr.args[1].ndim)
        return left + right

    if isinstance(expr, MultiplyExpression):
        factor = evaluate(expr.factor, values, like)
        inner = evaluate(expr.expr, values, like)
        factor = _unsqueeze_trailing(factor, expr.ndim - expr.factor.ndim)
        return factor * inner

    if isinstance(expr, MatMulExpression):
        left_expr, right_expr = expr.args
        left = evaluate(left_expr, values, like)
        right = evaluate(right_expr, values, like)
        if left_expr.ndim == 2 and right_expr.ndim == 1:
            return (left @ right.unsqueeze(-1)).squeeze(-1)
        if left_expr.ndim == 1 and right_expr.ndim == 2:
            return (left.unsqueeze(-2) @ right).squeeze(-2)
        if left_expr.ndim == 1 and right_expr.ndim == 1:
            return (left * right).sum(-1)
        return left @ right

    if isinstance(expr, IndexExpression):
        inner = evaluate(expr.args[0], values, like)
        key = tuple(
            torch.as_tensor(item, device=inner.device) if not isinstance(item, (int, slice)) else item
            for item in expr.key
        )
        return inner[(Ellipsis, *key)]

    if isinstance(expr, SumExpression):
        inner = evaluate(expr.args[0], values, like)
        dims = tuple(range(-expr.args[0].ndim, 0))
        return inner.sum(dim=dims) if dims else inner

    if isinstance(expr, PartExpression):
        return expr.torch_value(evaluate(expr.args[0], values, like))

    if isinstance(expr, Atom):
        argument_values = [evaluate(arg, values, like) for arg in expr.args]
        if isinstance(expr.argument, PartExpression):
            # The atom applies the part itself, so it receives the affine value.
            argument_values[0] = evaluate(expr.argument.args[0], values, like)
        return expr.torch_value(*argument_values)

    raise TypeError(f"cannot evaluate expression node {type(expr).__name__}")


def linear_gradient(
    expr: Expression, variable_id: int, values: Values, template: torch.Tensor, lead_ndim: int
) -> torch.Tensor:
    """Return the gradient of a scalar affine ``expr`` with respect to the variable.

    ``template`` is a tensor of the variable's unbatched shape and ``lead_ndim`` the
    number of leading dims of the parameter tensors (see :func:`affine_coefficients`).
    The result has shape ``(*lead, *variable_shape)`` and stays differentiable with
    respect to the parameters. It is built from evaluations on a basis rather than by
    autograd, so it also works under ``torch.inference_mode``.
    """
    matrix, _ = affine_coefficients(expr, variable_id, values, template, lead_ndim)
    return matrix[..., 0, :].reshape(*matrix.shape[:-2], *template.shape)


def affine_coefficients(
    expr: Expression, variable_id: int, values: Values, template: torch.Tensor, lead_ndim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(F, f)`` with ``expr(z) = F vec(z) + f`` for an affine ``expr``.

    ``template`` is any tensor of the variable's unbatched shape and ``lead_ndim`` the
    number of leading dims of the parameter tensors in ``values`` (0 when all are shared).
    ``F`` has shape ``(*lead, p, d)`` and ``f`` shape ``(*lead, p)``, where ``p`` is the
    number of entries of ``expr`` and ``d`` that of the variable.
    """
    size = template.numel()
    basis = torch.eye(size, dtype=template.dtype, device=template.device)
    basis = basis.reshape(size, *(1 for _ in range(lead_ndim)), *template.shape)
    origin = torch.zeros_like(template)

    local = dict(values)
    local[variable_id] = origin
    offset = evaluate(expr, local, template)
    local[variable_id] = basis
    columns = evaluate(expr, local, template) - offset

    own = expr.ndim
    offset = offset.flatten(offset.ndim - own) if own else offset.unsqueeze(-1)
    columns = columns.flatten(columns.ndim - own) if own else columns.unsqueeze(-1)
    # columns: (size, *lead, p) -> F: (*lead, p, size)
    matrix = columns.movedim(0, -1)
    return matrix, offset
