"""Scalar atoms of the prox DSL: the building blocks of a regularizer ``R``.

Every atom maps its affine argument(s) to a scalar and is convex, except :func:`smooth`,
which wraps an arbitrary differentiable torch function. Atoms on a matrix argument (a
per-batch variable) sum over all entries, except :func:`group_norm` and :func:`tv1d`,
which act on each row and sum the results.

Each atom class describes itself once: its formula (``torch_value``), its cvxpy form
(``to_cvxpy``), whether it is quadratic (so that analysis can merge it with the
proximity term) and its domain.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from proxopt.dsl.expressions import (
    BATCH,
    Constant,
    DeclarationError,
    Expression,
    Parameter,
    ShapeError,
    as_expression,
    format_shape,
)

__all__ = [
    "Atom",
    "PartExpression",
    "pos",
    "neg",
    "sum_squares",
    "norm1",
    "norm2",
    "norm_inf",
    "quad_form",
    "neg_entropy",
    "binary_neg_entropy",
    "logistic",
    "huber",
    "group_norm",
    "tv1d",
    "laplacian_quadratic",
    "smooth",
    "SumSquares",
    "Norm1",
    "Norm2",
    "NormInf",
    "QuadForm",
    "NegEntropy",
    "BinaryNegEntropy",
    "Logistic",
    "Huber",
    "GroupNorm",
    "TV1D",
    "LaplacianQuadratic",
    "Smooth",
]


def _trailing_sum(value: torch.Tensor, ndim: int) -> torch.Tensor:
    """Sum the last ``ndim`` dimensions (the expression's own), keeping leading ones."""
    if ndim == 0:
        return value
    return value.sum(dim=tuple(range(-ndim, 0)))


class PartExpression(Expression):
    """The elementwise positive part ``max(u, 0)`` or negative part ``max(-u, 0)``.

    It is convex and nonnegative, so it may appear inside :func:`sum_squares` and
    :func:`norm1` (for example ``sum_squares(neg(z))``, the regularizer of leaky ReLU),
    and nowhere else.
    """

    def __init__(self, expr: Expression, kind: str) -> None:
        if not expr.is_affine:
            raise DeclarationError(f"{kind}() needs an affine argument, got the atom {expr!r}.")
        self.kind = kind
        self.shape = expr.shape
        self.args = (expr,)

    @property
    def is_affine(self) -> bool:
        return False

    def _reject(self, *_: Any) -> Expression:
        raise DeclarationError(f"{self!r} can only be used as the argument of sum_squares() or norm1().")

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _reject
    __matmul__ = __rmatmul__ = __getitem__ = _reject  # type: ignore[assignment]

    def torch_value(self, value: torch.Tensor) -> torch.Tensor:
        return torch.relu(value) if self.kind == "pos" else torch.relu(-value)

    def __repr__(self) -> str:
        return f"{self.kind}({self.args[0]!r})"


def pos(expr: Any) -> PartExpression:
    """Return the elementwise positive part ``max(expr, 0)`` (inside sum_squares/norm1)."""
    return PartExpression(as_expression(expr), "pos")


def neg(expr: Any) -> PartExpression:
    """Return the elementwise negative part ``max(-expr, 0)`` (inside sum_squares/norm1)."""
    return PartExpression(as_expression(expr), "neg")


class Atom(Expression):
    """A scalar-valued function of affine arguments.

    Class attributes:
        convex: whether the atom is convex in its arguments.
        quadratic: whether the atom is a quadratic form of an affine argument, so that
            analysis may merge it with the proximity term.
        separable: whether it is a sum of the same scalar function over entries.
    """

    convex: bool = True
    quadratic: bool = False
    separable: bool = False
    allow_parts: bool = False

    def __init__(self, *args: Expression) -> None:
        for arg in args:
            if isinstance(arg, PartExpression):
                if not self.allow_parts:
                    raise DeclarationError(
                        f"{type(self).__name__} does not accept {arg!r}; pos() and neg() "
                        "are allowed only inside sum_squares() and norm1()."
                    )
            elif not arg.is_affine:
                raise DeclarationError(
                    f"the argument {arg!r} of {self.label} is not affine; atoms take affine "
                    "arguments (compose atoms by adding scaled terms instead)."
                )
            if not arg.depends_on_variable:
                raise DeclarationError(
                    f"the argument {arg!r} of {self.label} does not depend on the variable, "
                    "so the term is a constant; remove it."
                )
        self.shape = ()
        self.args = args

    @property
    def label(self) -> str:
        return type(self).__name__.lower()

    @property
    def is_affine(self) -> bool:
        return False

    @property
    def argument(self) -> Expression:
        return self.args[0]

    def torch_value(self, value: torch.Tensor) -> torch.Tensor:
        """Evaluate the atom on a batch of argument values of shape ``(*lead, *arg_shape)``."""
        raise NotImplementedError

    def to_cvxpy(self, argument: Any) -> Any:
        """Return the cvxpy expression of the atom applied to a cvxpy ``argument``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{self.label}({self.argument!r})"


class SumSquares(Atom):
    """``sum_squares(u) = sum_i u_i^2`` (the squared Frobenius norm for matrices)."""

    separable = True
    allow_parts = True

    @property
    def quadratic(self) -> bool:  # type: ignore[override]
        return not isinstance(self.argument, PartExpression)

    @property
    def label(self) -> str:
        return "sum_squares"

    def torch_value(self, value: torch.Tensor) -> torch.Tensor:
        if isinstance(self.argument, PartExpression):
            value = self.argument.torch_value(value)
        return _trailing_sum(value * value, self.argument.ndim)

    def to_cvxpy(self, argument: Any) -> Any:
        import cvxpy as cp

        return cp.sum_squares(argument)


class Norm1(Atom):
    """``norm1(u) = sum_i |u_i|``; with ``pos(u)`` inside it is the hinge ``sum max(u_i, 0)``."""

    separable = True
    allow_parts = True

    def torch_value(self, value: torch.Tensor) -> torch.Tensor:
        if isinstance(self.argument, PartExpression):
            value = self.argument.torch_value(value)
        return _trailing_sum(value.abs(), self.argument.ndim)

    def to_cvxpy(self, argument: Any) -> Any:
        import cvxpy as cp

        return cp.sum(cp.abs(argument))


class Norm2(Atom):
    """``norm2(u) = sqrt(sum_i u_i^2)`` (the Frobenius norm for matrices)."""

    def torch_value(self, value: torch.Tensor) -> torch.Tensor:
        return _trailing_sum(value * value, self.argument.ndim).sqrt()

    def to_cvxpy(self, argument: Any) -> Any:
        import cvxpy as cp

        return cp.norm(cp.vec(argument, order="F"), 2)


class NormInf(Atom):
    """``norm_inf(u) = max_i |u_i|``."""

    @property
    def label(self) -> str:
        return "norm_inf"

    def torch_value(self, value: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(-self.argument.ndim, 0))
        return value.abs().amax(dim=dims) if dims else value.abs()

    def to_cvxpy(self, argument: Any) -> Any:
        import cvxpy as cp

        return cp.max(cp.abs(argument))


class QuadForm(Atom):
    """``quad_form(u, M) = u^T M u`` with a constant PSD ``M``, or ``||G^T u||^2``.

    When the matrix is a :class:`Parameter` ``G`` of shape ``(n, k)``, the atom is the
    factored form ``||G^T u||^2 = u^T G G^T u``, convex for every value of ``G``.
    """

    quadratic = True

    def __init__(self, argument: Expression, matrix: Expression) -> None:
        super().__init__(argument)
        if argument.ndim != 1:
            raise ShapeError(
                f"quad_form needs a vector argument, got {argument!r} of shape {format_shape(argument.shape)}."
            )
        n = argument.shape[0]
        if isinstance(matrix, Constant):
            m = matrix.value
            if m.shape != (n, n):
                raise ShapeError(f"quad_form matrix has shape {m.shape}; expected ({n}, {n}) to match {argument!r}.")
            if not np.allclose(m, m.T, atol=1e-12, rtol=1e-10):
                raise DeclarationError("quad_form matrix is not symmetric; pass (M + M.T) / 2.")
            lowest = float(np.linalg.eigvalsh(m)[0])
            scale = max(1.0, float(np.abs(m).max()))
            if lowest < -1e-10 * scale:
                raise DeclarationError(
                    f"quad_form matrix is not positive semidefinite (smallest eigenvalue "
                    f"{lowest:.3g}); write a negative-definite part as a negatively scaled "
                    "PSD term so analysis can merge it with the proximity term."
                )
            self.factored = False
        elif isinstance(matrix, Parameter):
            if len(matrix.shape) != 2 or matrix.shape[0] != n:
                raise ShapeError(
                    f"quad_form factor {matrix!r} has shape {format_shape(matrix.shape)}; "
                    f"expected ({n}, k) for the form ||G^T u||^2."
                )
            self.factored = True
        else:
            raise DeclarationError(f"quad_form needs a constant PSD matrix or a Parameter factor G, got {matrix!r}.")
        self.matrix = matrix
        self.args = (argument, matrix)

    @property
    def label(self) -> str:
        return "quad_form"

    def torch_value(self, value: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if self.factored:
            projected = (value.unsqueeze(-2) @ matrix).squeeze(-2)
            return (projected * projected).sum(-1)
        return (value * (value @ matrix)).sum(-1)

    def to_cvxpy(self, argument: Any, matrix: Any) -> Any:  # type: ignore[override]
        import cvxpy as cp

        if self.factored:
            return cp.sum_squares(matrix.T @ argument)
        return cp.quad_form(argument, cp.psd_wrap(matrix))

    def __repr__(self) -> str:
        return f"quad_form({self.argument!r}, {self.matrix!r})"


class NegEntropy(Atom):
    """``neg_entropy(u) = sum_i u_i log u_i`` on ``u >= 0`` (with ``0 log 0 = 0``)."""

    separable = True

    @property
    def label(self) -> str:
        return "neg_entropy"

    def torch_value(self, value: torch.Tensor) -> torch.Tensor:
        return _trailing_sum(torch.special.xlogy(value, value), self.argument.ndim)

    def to_cvxpy(self, argument: Any) -> Any:
        import cvxpy as cp

        return -cp.sum(cp.entr(argument))


class BinaryNegEntropy(Atom):
    """``binary_neg_entropy(u) = sum_i u_i log u_i + (1 - u_i) log(1 - u_i)`` on ``[0, 1]``."""

    separable = True

    @property
    def label(self) -> str:
        return "binary_neg_entropy"

    def torch_value(self, value: torch.Tensor) -> torch.Tensor:
        other = 1 - value
        terms = torch.special.xlogy(value, value) + torch.special.xlogy(other, other)
        return _trailing_sum(terms, self.argument.ndim)

    def to_cvxpy(self, argument: Any) -> Any:
        import cvxpy as cp

        return -cp.sum(cp.entr(argument) + cp.entr(1 - argument))


class Logistic(Atom):
    """``logistic(u) = sum_i log(1 + exp(u_i))``."""

    separable = True

    def torch_value(self, value: torch.Tensor) -> torch.Tensor:
        return _trailing_sum(torch.nn.functional.softplus(value), self.argument.ndim)

    def to_cvxpy(self, argument: Any) -> Any:
        import cvxpy as cp

        return cp.sum(cp.logistic(argument))


class Huber(Atom):
    """``huber(u, delta) = sum_i h(u_i)``, ``h(t) = t^2 / 2`` if ``|t| <= delta``, else
    ``delta (|t| - delta / 2)`` (the definition of ``torch.nn.functional.huber_loss``)."""

    separable = True

    def __init__(self, argument: Expression, delta: float) -> None:
        super().__init__(argument)
        if not np.isfinite(delta) or delta <= 0:
            raise DeclarationError(f"huber delta must be a positive number, got {delta!r}.")
        self.delta = float(delta)

    def torch_value(self, value: torch.Tensor) -> torch.Tensor:
        losses = torch.nn.functional.huber_loss(value, torch.zeros_like(value), reduction="none", delta=self.delta)
        return _trailing_sum(losses, self.argument.ndim)

    def to_cvxpy(self, argument: Any) -> Any:
        import cvxpy as cp

        # cvxpy's huber(t, M) is t^2 or 2M|t| - M^2, twice the definition used here.
        return 0.5 * cp.sum(cp.huber(argument, self.delta))

    def __repr__(self) -> str:
        return f"huber({self.argument!r}, delta={self.delta:g})"


class GroupNorm(Atom):
    """``group_norm(u, groups) = sum_g w_g ||u_g||_2`` over index groups of each row.

    ``groups`` is a block size ``k`` (consecutive blocks of ``k`` entries, ``k`` dividing
    ``n``) or a sequence of disjoint index lists covering some entries.
    """

    def __init__(
        self,
        argument: Expression,
        groups: int | Sequence[Sequence[int]],
        weights: Sequence[float] | None,
    ) -> None:
        super().__init__(argument)
        if argument.ndim not in (1, 2) or argument.shape[-1] is BATCH:
            raise ShapeError(
                f"group_norm needs a vector or a matrix with a fixed last dimension, got "
                f"{argument!r} of shape {format_shape(argument.shape)}."
            )
        n = int(argument.shape[-1])  # type: ignore[arg-type]
        if isinstance(groups, (int, np.integer)):
            if groups < 1 or n % groups:
                raise ShapeError(
                    f"group_norm block size {groups} does not divide the length {n}; "
                    "pass a divisor of n or explicit index groups."
                )
            index_groups = [list(range(start, start + groups)) for start in range(0, n, groups)]
        else:
            index_groups = [[int(i) for i in group] for group in groups]
            flat = [i for group in index_groups for i in group]
            if not index_groups or any(not group for group in index_groups):
                raise DeclarationError("group_norm groups must be non-empty index lists.")
            if any(i < 0 or i >= n for i in flat):
                raise ShapeError(f"group_norm indices must lie in [0, {n}), got {sorted(flat)}.")
            if len(set(flat)) != len(flat):
                raise DeclarationError("group_norm groups overlap; each index may belong to one group only.")
        if weights is None:
            weight_array = np.ones(len(index_groups))
        else:
            weight_array = np.asarray(weights, dtype=np.float64)
            if weight_array.shape != (len(index_groups),) or np.any(weight_array < 0):
                raise DeclarationError(f"group_norm weights must be {len(index_groups)} nonnegative numbers.")
        self.groups = index_groups
        self.weights = weight_array

    @property
    def label(self) -> str:
        return "group_norm"

    @property
    def uniform_blocks(self) -> int | None:
        """The block size when the groups are consecutive equal blocks covering all entries."""
        n = int(self.argument.shape[-1])  # type: ignore[arg-type]
        size = len(self.groups[0])
        expected = [list(range(start, start + size)) for start in range(0, n, size)]
        return size if self.groups == expected else None

    def torch_value(self, value: torch.Tensor) -> torch.Tensor:
        total = value.new_zeros(value.shape[: value.ndim - self.argument.ndim])
        for weight, group in zip(self.weights, self.groups, strict=True):
            block = value[..., group]
            total = total + float(weight) * _trailing_sum(block.pow(2).sum(-1).sqrt(), self.argument.ndim - 1)
        return total

    def to_cvxpy(self, argument: Any) -> Any:
        import cvxpy as cp

        rows = [argument] if self.argument.ndim == 1 else [argument[i, :] for i in range(argument.shape[0])]
        terms = [
            float(weight) * cp.norm(row[group], 2)
            for row in rows
            for weight, group in zip(self.weights, self.groups, strict=True)
        ]
        return cp.sum(cp.hstack(terms))

    def __repr__(self) -> str:
        return f"group_norm({self.argument!r}, {len(self.groups)} groups)"


class TV1D(Atom):
    """``tv1d(u) = sum_i |u_{i+1} - u_i|``, the 1-D total variation of each row."""

    def __init__(self, argument: Expression) -> None:
        super().__init__(argument)
        if argument.ndim not in (1, 2) or argument.shape[-1] is BATCH:
            raise ShapeError(
                f"tv1d needs a vector or a matrix with a fixed last dimension, got "
                f"{argument!r} of shape {format_shape(argument.shape)}."
            )

    def torch_value(self, value: torch.Tensor) -> torch.Tensor:
        jumps = (value[..., 1:] - value[..., :-1]).abs().sum(-1)
        return _trailing_sum(jumps, self.argument.ndim - 1)

    def to_cvxpy(self, argument: Any) -> Any:
        import cvxpy as cp

        if self.argument.ndim == 1:
            return cp.norm1(cp.diff(argument))
        return cp.sum(cp.abs(cp.diff(argument, axis=1)))


class LaplacianQuadratic(Atom):
    """``laplacian_quadratic(u, W) = sum_{i,j} W_ij ||u_i - u_j||^2`` over entries or rows.

    For a vector ``u`` the ``u_i`` are its entries; for a matrix they are its rows (the
    samples of a per-batch variable). With ``W >= 0`` the atom is the convex quadratic
    ``u^T (D_r + D_c - W - W^T) u``, where ``D_r`` and ``D_c`` are the diagonal matrices of
    row and column sums of ``W``; for symmetric ``W`` that is ``2 u^T L u`` with the graph
    Laplacian ``L = D - W``. ``W`` is a constant with nonnegative entries or a Parameter
    declared ``nonneg=True``. On a per-batch variable of shape ``(BATCH, n)`` a constant ``W``
    of shape ``(k, k)`` is allowed and the layer then accepts mini-batches of ``k`` rows only.
    """

    quadratic = True

    def __init__(self, argument: Expression, weights: Expression) -> None:
        super().__init__(argument)
        if argument.ndim not in (1, 2):
            raise ShapeError(
                f"laplacian_quadratic needs a vector or matrix, got {argument!r} of shape "
                f"{format_shape(argument.shape)}."
            )
        m = argument.shape[0]
        # A constant k x k graph over the rows of a per-batch variable fixes the mini-batch size to k.
        square = weights.ndim == 2 and weights.shape[0] == weights.shape[1]
        fixed_rows = m is BATCH and isinstance(weights, Constant) and square
        if weights.shape != (m, m) and not fixed_rows:
            raise ShapeError(
                f"laplacian_quadratic weights have shape {format_shape(weights.shape)}; "
                f"expected {format_shape((m, m))} to match {argument!r}."
            )
        if isinstance(weights, Constant):
            if np.any(weights.value < 0):
                raise DeclarationError("laplacian_quadratic weights must be nonnegative, so the term is convex.")
        elif isinstance(weights, Parameter):
            if not weights.nonneg:
                raise DeclarationError(
                    f"laplacian_quadratic weight Parameter {weights!r} must be declared "
                    "nonneg=True, so the term is convex."
                )
        else:
            raise DeclarationError(f"laplacian_quadratic weights must be a constant or a Parameter, got {weights!r}.")
        self.weights = weights
        self.args = (argument, weights)

    @property
    def label(self) -> str:
        return "laplacian_quadratic"

    @staticmethod
    def laplacian_matrix(weights: torch.Tensor) -> torch.Tensor:
        """Return ``D_r + D_c - W - W^T``, the matrix of the quadratic form (batched)."""
        degree = torch.diag_embed(weights.sum(-1) + weights.sum(-2))
        return degree - weights - weights.transpose(-1, -2)

    def torch_value(self, value: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        laplacian = self.laplacian_matrix(weights)
        if self.argument.ndim == 1:
            return (value * (laplacian @ value.unsqueeze(-1)).squeeze(-1)).sum(-1)
        return (value * (laplacian @ value)).sum((-2, -1))

    def to_cvxpy(self, argument: Any, weights: Any) -> Any:  # type: ignore[override]
        import cvxpy as cp

        m = int(argument.shape[0])
        first, second = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
        differences = argument[first.ravel()] - argument[second.ravel()]
        if isinstance(self.weights, Constant):
            laplacian = self.laplacian_matrix(torch.from_numpy(self.weights.value)).numpy()
            if self.argument.ndim == 1:
                return cp.quad_form(argument, cp.psd_wrap(laplacian))
            return cp.sum(
                cp.hstack([cp.quad_form(argument[:, j], cp.psd_wrap(laplacian)) for j in range(argument.shape[1])])
            )
        flat_weights = cp.vec(weights, order="C")
        if self.argument.ndim == 1:
            return flat_weights @ cp.square(differences)
        return flat_weights @ cp.sum(cp.square(differences), axis=1)

    def __repr__(self) -> str:
        return f"laplacian_quadratic({self.argument!r}, {self.weights!r})"


class Smooth(Atom):
    """A term given by a differentiable torch function of the variable.

    ``fn`` receives the variable's value with shape ``(*lead, *variable_shape)`` and
    returns one scalar per leading index, shape ``(*lead,)``. Declare ``convex=True`` only
    when it is; a nonconvex smooth term needs the ``smooth`` backend.
    """

    def __init__(
        self, fn: Callable[[torch.Tensor], torch.Tensor], argument: Expression, convex: bool, name: str
    ) -> None:
        if not callable(fn):
            raise DeclarationError(f"smooth() needs a callable, got {fn!r}.")
        super().__init__(argument)
        self.fn = fn
        self.convex = bool(convex)  # type: ignore[misc]
        self.name = name

    @property
    def label(self) -> str:
        return f"smooth[{self.name}]"

    def torch_value(self, value: torch.Tensor) -> torch.Tensor:
        return self.fn(value)

    def to_cvxpy(self, argument: Any) -> Any:
        raise NotImplementedError("a smooth() term has no cvxpy form")


# -- constructors ----------------------------------------------------------------------


def sum_squares(expr: Any) -> Expression:
    """Return ``sum_i u_i^2``; ``expr`` is affine, or ``pos(u)`` / ``neg(u)``."""
    return SumSquares(as_expression(expr))


def norm1(expr: Any) -> Expression:
    """Return ``||u||_1 = sum_i |u_i|``."""
    return Norm1(as_expression(expr))


def norm2(expr: Any) -> Expression:
    """Return ``||u||_2`` (Frobenius norm for matrices)."""
    return Norm2(as_expression(expr))


def norm_inf(expr: Any) -> Expression:
    """Return ``||u||_inf = max_i |u_i|``."""
    return NormInf(as_expression(expr))


def quad_form(expr: Any, matrix: Any) -> Expression:
    """Return ``u^T M u`` for a constant PSD ``M``, or ``||G^T u||^2`` for a Parameter ``G``."""
    return QuadForm(as_expression(expr), as_expression(matrix))


def neg_entropy(expr: Any) -> Expression:
    """Return ``sum_i u_i log u_i`` (domain ``u >= 0``)."""
    return NegEntropy(as_expression(expr))


def binary_neg_entropy(expr: Any) -> Expression:
    """Return ``sum_i u_i log u_i + (1 - u_i) log(1 - u_i)`` (domain ``0 <= u <= 1``)."""
    return BinaryNegEntropy(as_expression(expr))


def logistic(expr: Any) -> Expression:
    """Return ``sum_i log(1 + exp(u_i))``."""
    return Logistic(as_expression(expr))


def huber(expr: Any, delta: float = 1.0) -> Expression:
    """Return the Huber function ``sum_i h_delta(u_i)`` (see :class:`Huber`)."""
    return Huber(as_expression(expr), delta)


def group_norm(
    expr: Any,
    groups: int | Sequence[Sequence[int]],
    weights: Sequence[float] | None = None,
) -> Expression:
    """Return ``sum_g w_g ||u_g||_2`` over blocks of size ``groups`` or given index groups."""
    return GroupNorm(as_expression(expr), groups, weights)


def tv1d(expr: Any) -> Expression:
    """Return the 1-D total variation ``sum_i |u_{i+1} - u_i|``."""
    return TV1D(as_expression(expr))


def laplacian_quadratic(expr: Any, weights: Any) -> Expression:
    """Return ``sum_{i,j} W_ij ||u_i - u_j||^2`` (see :class:`LaplacianQuadratic`)."""
    return LaplacianQuadratic(as_expression(expr), as_expression(weights))


def smooth(
    fn: Callable[[torch.Tensor], torch.Tensor],
    expr: Any,
    *,
    convex: bool = False,
    name: str | None = None,
) -> Expression:
    """Return a term ``fn(u)`` given by a differentiable torch function.

    Args:
        fn: maps a tensor of shape ``(*lead, *expr.shape)`` to shape ``(*lead,)``.
        expr: the affine argument, usually the variable itself.
        convex: whether ``fn`` is convex; nonconvex terms need ``backend="smooth"``.
        name: label used in messages (defaults to the function's name).
    """
    label = name or getattr(fn, "__name__", "fn")
    return Smooth(fn, as_expression(expr), convex, label)
