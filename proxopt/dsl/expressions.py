"""Affine expressions of the prox DSL: variables, parameters, constants and affine maps.

An expression has a static ``shape`` that is checked when the expression is built. A
dimension is an ``int`` or the symbol :data:`BATCH`, which stands for the mini-batch
size of a per-batch variable and is resolved when a layer is called.

Scalar-valued atoms (``norm1``, ``sum_squares``, ...) live in :mod:`proxopt.dsl.atoms`;
they share the arithmetic defined here, so a regularizer is written as ordinary Python
arithmetic on expressions, for example ``0.1 * norm1(z) + 0.5 * sum_squares(z - 1)``.
"""

from __future__ import annotations

import itertools
import keyword
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from proxopt.errors import DeclarationError, ShapeError

if TYPE_CHECKING:
    from proxopt.dsl.sets import Equality, Inequality

__all__ = [
    "BATCH",
    "Dim",
    "Shape",
    "Expression",
    "Leaf",
    "Variable",
    "Parameter",
    "Constant",
    "AddExpression",
    "MultiplyExpression",
    "MatMulExpression",
    "IndexExpression",
    "SumExpression",
    "as_expression",
    "format_shape",
    "sum",
]


class _BatchDim:
    """The symbolic mini-batch size of a per-batch variable (a singleton)."""

    _instance: _BatchDim | None = None

    def __new__(cls) -> _BatchDim:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "BATCH"

    def __reduce__(self) -> str:
        return "BATCH"


BATCH = _BatchDim()
"""Symbolic dimension: the mini-batch size ``m`` of a per-batch variable."""

Dim = int | _BatchDim
Shape = tuple[Dim, ...]

_RESERVED_NAMES = frozenset({"x", "lam", "input"})
_name_counter = itertools.count()


def format_shape(shape: Shape) -> str:
    """Format a shape the way torch prints sizes, e.g. ``(3, BATCH)``."""
    if len(shape) == 1:
        return f"({shape[0]!r},)"
    return "(" + ", ".join(repr(d) for d in shape) + ")"


def _check_dim(dim: object, what: str) -> Dim:
    if dim is BATCH:
        return BATCH
    if isinstance(dim, (bool, np.bool_)) or not isinstance(dim, (int, np.integer)):
        raise ShapeError(
            f"{what} has a dimension {dim!r} of type {type(dim).__name__}; expected a positive int or proxopt.BATCH."
        )
    if dim < 1:
        raise ShapeError(f"{what} has a dimension {dim}; expected a positive size.")
    return int(dim)


def _normalize_shape(shape: int | Sequence[Dim] | _BatchDim, what: str) -> Shape:
    if isinstance(shape, (int, np.integer, _BatchDim)):
        return (_check_dim(shape, what),)
    return tuple(_check_dim(d, what) for d in shape)


def _broadcast_shapes(left: Shape, right: Shape, operation: str) -> Shape:
    """Return the shape of ``left (op) right``: equal shapes, or one side a scalar."""
    if left == right:
        return left
    if left == ():
        return right
    if right == ():
        return left
    raise ShapeError(
        f"cannot {operation} expressions of shapes {format_shape(left)} and "
        f"{format_shape(right)}; expected equal shapes or a scalar on one side."
    )


class Expression:
    """Base class of every DSL expression.

    Subclasses set ``shape`` and ``args``. The arithmetic operators build new expression
    nodes and check shapes on the spot; comparison operators build constraints.
    """

    shape: Shape
    args: tuple[Expression, ...] = ()
    # Operator priority over numpy arrays and torch tensors on the left of an operator.
    __array_priority__ = 1000
    __array_ufunc__ = None

    # Identity semantics: == builds a constraint, so hashing must not depend on it.
    __hash__ = object.__hash__

    # -- structure -------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def is_scalar(self) -> bool:
        return self.shape == ()

    def leaves(self) -> list[Leaf]:
        """Return the leaves below this node, each once, in first-seen order."""
        seen: dict[int, Leaf] = {}
        stack: list[Expression] = [self]
        while stack:
            node = stack.pop()
            if isinstance(node, Leaf):
                seen.setdefault(id(node), node)
            stack.extend(reversed(node.args))
        return list(seen.values())

    def variables(self) -> list[Variable]:
        return [leaf for leaf in self.leaves() if isinstance(leaf, Variable)]

    def parameters(self) -> list[Parameter]:
        return [leaf for leaf in self.leaves() if isinstance(leaf, Parameter)]

    @property
    def depends_on_variable(self) -> bool:
        return bool(self.variables())

    @property
    def is_affine(self) -> bool:
        """Whether the expression is affine in the variable (no atom below it)."""
        return all(arg.is_affine for arg in self.args)

    # -- arithmetic ------------------------------------------------------------------
    def __add__(self, other: Any) -> Expression:
        return AddExpression(self, as_expression(other))

    def __radd__(self, other: Any) -> Expression:
        if isinstance(other, (int, float)) and other == 0:
            # Lets the builtin sum() start from 0 over a list of terms.
            return self
        return AddExpression(as_expression(other), self)

    def __sub__(self, other: Any) -> Expression:
        return AddExpression(self, MultiplyExpression(Constant(-1.0), as_expression(other)))

    def __rsub__(self, other: Any) -> Expression:
        return AddExpression(as_expression(other), MultiplyExpression(Constant(-1.0), self))

    def __neg__(self) -> Expression:
        return MultiplyExpression(Constant(-1.0), self)

    def __pos__(self) -> Expression:
        return self

    def __mul__(self, other: Any) -> Expression:
        return _multiply(self, as_expression(other))

    def __rmul__(self, other: Any) -> Expression:
        return _multiply(as_expression(other), self)

    def __truediv__(self, other: Any) -> Expression:
        divisor = as_expression(other)
        if not isinstance(divisor, Constant):
            raise DeclarationError(
                f"cannot divide by {divisor!r}: only division by a constant is supported; "
                "multiply by a Parameter holding the reciprocal instead."
            )
        if np.any(divisor.value == 0):
            raise DeclarationError(f"cannot divide {self!r} by zero.")
        return _multiply(Constant(1.0 / divisor.value), self)

    def __matmul__(self, other: Any) -> Expression:
        return MatMulExpression(self, as_expression(other))

    def __rmatmul__(self, other: Any) -> Expression:
        return MatMulExpression(as_expression(other), self)

    def __getitem__(self, key: Any) -> Expression:
        return IndexExpression(self, key)

    def __pow__(self, power: Any) -> Expression:
        raise DeclarationError(f"cannot raise {self!r} to a power; write sum_squares(...) for a squared norm.")

    # -- constraints -----------------------------------------------------------------
    def __le__(self, other: Any) -> Inequality:
        from proxopt.dsl.sets import Inequality

        return Inequality(self, as_expression(other))

    def __ge__(self, other: Any) -> Inequality:
        from proxopt.dsl.sets import Inequality

        return Inequality(as_expression(other), self)

    def __eq__(self, other: Any) -> Equality:  # type: ignore[override]
        from proxopt.dsl.sets import Equality

        return Equality(self, as_expression(other))

    def __lt__(self, other: Any) -> Any:
        raise DeclarationError("strict inequalities are not supported; use <= or >=.")

    __gt__ = __lt__

    def __bool__(self) -> bool:
        raise DeclarationError(
            f"the truth value of {self!r} is undefined: an expression is symbolic. "
            "Compare expressions only to build constraints, e.g. `z >= 0`."
        )


class Leaf(Expression):
    """An expression with no arguments: a variable, a parameter or a constant."""

    name: str

    @property
    def is_affine(self) -> bool:
        return True


class Variable(Leaf):
    """The optimization variable of a prox problem: the layer's output.

    Args:
        size: length ``n`` of one sample's output vector.
        scope: ``"sample"`` (default) for a variable of shape ``(n,)`` solved independently
            for every row of the input; ``"batch"`` for the whole mini-batch matrix of
            shape ``(BATCH, n)``, for regularizers that couple samples (a graph Laplacian
            over the samples, the multiview CCA prox).
        name: display name used in messages.

    Example:
        >>> z = Variable(5)
        >>> z.shape
        (5,)
    """

    def __init__(self, size: int, *, scope: Literal["sample", "batch"] = "sample", name: str = "z") -> None:
        length = _check_dim(size, "Variable")
        if length is BATCH:
            raise ShapeError(
                "Variable(size) needs the sample size n as an int; for a variable that "
                "spans the mini-batch pass scope='batch'."
            )
        if scope not in ("sample", "batch"):
            raise DeclarationError(f"Variable scope {scope!r} is invalid; use 'sample' or 'batch'.")
        self.size: int = int(length)
        self.scope = scope
        self.name = name
        self.shape = (length,) if scope == "sample" else (BATCH, length)

    def __repr__(self) -> str:
        return self.name


class Parameter(Leaf):
    """A tensor given when the layer is called, as a keyword argument named ``name``.

    The tensor passed at call time has shape ``shape`` (shared by the whole batch) or
    ``(*batch_shape, *shape)`` (one value per sample); gradients flow to it when it
    requires grad.

    Args:
        shape: static shape; ``()`` for a scalar. :data:`BATCH` may appear for parameters
            of per-batch problems, such as a sample-graph weight matrix ``(BATCH, BATCH)``.
        name: keyword under which the tensor is passed to ``forward``.
        nonneg: declare the values nonnegative; the layer checks this at call time and the
            sign lets a parameter scale a convex term.
    """

    def __init__(self, shape: int | Sequence[Dim] | _BatchDim = (), *, name: str, nonneg: bool = False) -> None:
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise DeclarationError(
                f"Parameter name {name!r} is invalid; expected a Python identifier, "
                "because the tensor is passed to forward() as a keyword argument."
            )
        if name in _RESERVED_NAMES:
            raise DeclarationError(f"Parameter name {name!r} is reserved by ProxLayer.forward; choose another name.")
        self.shape = _normalize_shape(shape, f"Parameter {name!r}")
        self.name = name
        self.nonneg = bool(nonneg)

    def __repr__(self) -> str:
        return self.name


class Constant(Leaf):
    """A constant array, stored in float64."""

    def __init__(self, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            if value.requires_grad:
                raise DeclarationError(
                    "a tensor that requires grad was used as a constant; declare a "
                    "Parameter and pass the tensor when calling the layer so gradients flow."
                )
            value = value.detach().cpu().numpy()
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise DeclarationError(
                f"cannot use {value!r} in an expression: expected a number, an array, a tensor or a proxopt expression."
            ) from error
        if not np.all(np.isfinite(array)):
            raise DeclarationError(f"constant {array} has non-finite entries.")
        self.value = array
        self.shape = tuple(int(d) for d in array.shape)
        self.name = "const"

    def __repr__(self) -> str:
        if self.value.ndim == 0:
            return f"{float(self.value):g}"
        return f"const{format_shape(self.shape)}"


def as_expression(value: Any) -> Expression:
    """Wrap numbers, arrays and tensors as :class:`Constant`; pass expressions through."""
    if isinstance(value, Expression):
        return value
    return Constant(value)


class AddExpression(Expression):
    """The sum of two expressions of equal shape (or a scalar and an array)."""

    def __init__(self, left: Expression, right: Expression) -> None:
        self.shape = _broadcast_shapes(left.shape, right.shape, "add")
        if left.is_affine != right.is_affine and not (left.is_scalar and right.is_scalar):
            raise ShapeError(
                f"cannot add {left!r} and {right!r}: terms of the regularizer are scalars, "
                "so an atom can only be added to another scalar."
            )
        self.args = (left, right)

    def __repr__(self) -> str:
        return f"{self.args[0]!r} + {self.args[1]!r}"


def _multiply(left: Expression, right: Expression) -> Expression:
    """Build ``left * right``; the factor is the side that does not depend on the variable."""
    if left.depends_on_variable and right.depends_on_variable:
        raise DeclarationError(
            f"cannot multiply {left!r} by {right!r}: both depend on the variable, so the "
            "product is not affine. Use an atom such as sum_squares for a quadratic."
        )
    if left.is_affine and not left.depends_on_variable:
        return MultiplyExpression(left, right)
    if right.is_affine and not right.depends_on_variable:
        return MultiplyExpression(right, left)
    raise DeclarationError(
        f"cannot multiply {left!r} by {right!r}: an atom can only be scaled by a number or a scalar Parameter."
    )


class MultiplyExpression(Expression):
    """``factor * expr``: a scalar factor, or an elementwise factor of the same shape.

    ``factor`` does not depend on the variable. When ``expr`` is an atom (a scalar term
    of the regularizer), ``factor`` must be a scalar.
    """

    def __init__(self, factor: Expression, expr: Expression) -> None:
        if factor.depends_on_variable:
            raise DeclarationError(f"the factor {factor!r} must not depend on the variable.")
        if not factor.is_scalar and factor.shape != expr.shape:
            raise ShapeError(
                f"cannot multiply {expr!r} of shape {format_shape(expr.shape)} by a factor "
                f"of shape {format_shape(factor.shape)}; expected a scalar factor or the "
                "same shape (elementwise). Use @ for a matrix product."
            )
        if not expr.is_affine and not factor.is_scalar:
            raise ShapeError(f"an atom such as {expr!r} can only be scaled by a scalar.")
        self.shape = expr.shape
        self.args = (factor, expr)

    @property
    def factor(self) -> Expression:
        return self.args[0]

    @property
    def expr(self) -> Expression:
        return self.args[1]

    def __repr__(self) -> str:
        factor, expr = self.args
        if isinstance(factor, Constant) and factor.value.ndim == 0 and float(factor.value) == -1:
            return f"-({expr!r})"
        return f"{factor!r} * ({expr!r})"


class MatMulExpression(Expression):
    """``left @ right`` with numpy's rules for vectors and matrices (no batching).

    One side must not depend on the variable, so the product stays affine.
    """

    def __init__(self, left: Expression, right: Expression) -> None:
        for side in (left, right):
            if not side.is_affine:
                raise DeclarationError(f"cannot use the atom {side!r} in a matrix product.")
            if side.ndim not in (1, 2):
                raise ShapeError(
                    f"matrix product needs vectors or matrices, got {side!r} of shape {format_shape(side.shape)}."
                )
        if left.depends_on_variable and right.depends_on_variable:
            raise DeclarationError(f"cannot form {left!r} @ {right!r}: both sides depend on the variable.")
        inner_left = left.shape[-1]
        inner_right = right.shape[0]
        if inner_left != inner_right:
            raise ShapeError(
                f"matrix product {left!r} @ {right!r} has mismatched inner dimensions: "
                f"{format_shape(left.shape)} @ {format_shape(right.shape)}."
            )
        self.shape = left.shape[:-1] + right.shape[1:]
        self.args = (left, right)

    def __repr__(self) -> str:
        return f"{self.args[0]!r} @ {self.args[1]!r}"


class IndexExpression(Expression):
    """``expr[key]`` for ints, slices and integer lists on concrete dimensions."""

    def __init__(self, expr: Expression, key: Any) -> None:
        if not expr.is_affine:
            raise DeclarationError(f"cannot index the atom {expr!r}.")
        if any(d is BATCH for d in expr.shape):
            raise ShapeError(
                f"cannot index {expr!r} of shape {format_shape(expr.shape)}: indexing along "
                "the symbolic BATCH dimension is not supported."
            )
        key = key if isinstance(key, tuple) else (key,)
        normalized: list[Any] = []
        for item in key:
            if isinstance(item, (list, np.ndarray, torch.Tensor)):
                normalized.append(np.asarray(item, dtype=np.int64))
            elif item is None or item is Ellipsis:
                raise ShapeError("None and ... are not supported when indexing an expression.")
            else:
                normalized.append(item)
        probe = np.empty(tuple(int(d) for d in expr.shape))  # type: ignore[arg-type]
        try:
            self.shape = tuple(int(d) for d in probe[tuple(normalized)].shape)
        except (IndexError, TypeError) as error:
            raise ShapeError(
                f"invalid index {key!r} for {expr!r} of shape {format_shape(expr.shape)}: {error}"
            ) from error
        self.key = tuple(normalized)
        self.args = (expr,)

    def __repr__(self) -> str:
        return f"{self.args[0]!r}[{self.key!r}]"


class SumExpression(Expression):
    """The sum of all entries of an affine expression (a scalar)."""

    def __init__(self, expr: Expression) -> None:
        if not expr.is_affine:
            raise DeclarationError(f"sum() of the atom {expr!r} is not supported; atoms are already scalars.")
        self.shape = ()
        self.args = (expr,)

    def __repr__(self) -> str:
        return f"sum({self.args[0]!r})"


def sum(expr: Any) -> Expression:  # noqa: A001 - mirrors cvxpy.sum and torch.sum
    """Return the sum of all entries of an affine expression."""
    return SumExpression(as_expression(expr))
