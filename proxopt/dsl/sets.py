"""Constraint sets of the prox DSL.

Two kinds of constraints may appear in a layer's ``constraints``:

* comparisons of affine expressions, ``z >= 0``, ``A @ z == b``, ``sum(z) <= 1``;
* named sets that apply to the layer's variable, one row at a time for a per-batch
  variable: :class:`Box`, :class:`Simplex`, :class:`L1Ball`, :class:`L2Ball`,
  :class:`LinfBall`, :class:`Affine`, and the nonconvex :class:`Sphere` and
  :class:`CenteredSphere`.

Set data (bounds, radii, ``A`` and ``b``) is a number, an array or a :class:`Parameter`.
Constant data is checked when the set is built, so an empty set such as ``Box(1, 0)``
raises :class:`EmptySetError` at once; Parameter data is checked when the layer is called.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from proxopt.dsl.expressions import (
    Constant,
    Expression,
    Parameter,
    as_expression,
    format_shape,
)
from proxopt.errors import DeclarationError, EmptySetError, ShapeError

__all__ = [
    "Constraint",
    "Inequality",
    "Equality",
    "Set",
    "Box",
    "Simplex",
    "L1Ball",
    "L2Ball",
    "LinfBall",
    "Affine",
    "Sphere",
    "CenteredSphere",
]


def _set_data(value: Any, what: str) -> Expression:
    """Wrap set data as a Constant or Parameter; reject expressions of the variable."""
    expr = as_expression(value)
    if not isinstance(expr, (Constant, Parameter)):
        raise DeclarationError(f"{what} must be a number, an array or a Parameter, got the expression {expr!r}.")
    return expr


def _scalar_radius(value: Any, what: str) -> Expression:
    radius = _set_data(value, what)
    if radius.shape != ():
        raise ShapeError(f"{what} must be a scalar, got shape {format_shape(radius.shape)}.")
    if isinstance(radius, Constant) and float(radius.value) < 0:
        raise EmptySetError(
            f"{what} is {float(radius.value):g}; a ball of negative radius is empty. Pass a radius >= 0."
        )
    return radius


class Constraint:
    """Base class of comparison constraints and named sets."""

    convex: bool = True

    def parameters(self) -> list[Parameter]:
        raise NotImplementedError


class _Comparison(Constraint):
    operator = ""

    def __init__(self, left: Expression, right: Expression) -> None:
        for side in (left, right):
            if not side.is_affine:
                raise DeclarationError(
                    f"constraint sides must be affine expressions, got {side!r}; put convex "
                    "functions in the regularizer or use a named set such as L1Ball."
                )
        if not (left.depends_on_variable or right.depends_on_variable):
            raise DeclarationError(f"the constraint {left!r} {self.operator} {right!r} does not involve the variable.")
        if left.shape != right.shape and left.shape != () and right.shape != ():
            raise ShapeError(
                f"constraint {left!r} {self.operator} {right!r} compares shapes "
                f"{format_shape(left.shape)} and {format_shape(right.shape)}; expected "
                "equal shapes or a scalar on one side."
            )
        self.left = left
        self.right = right

    def parameters(self) -> list[Parameter]:
        found = {id(p): p for p in self.left.parameters() + self.right.parameters()}
        return list(found.values())

    def __bool__(self) -> bool:
        raise DeclarationError(
            f"the truth value of the constraint {self!r} is undefined; pass constraints "
            "to ProxLayer(constraints=...) instead of testing them."
        )

    def __repr__(self) -> str:
        return f"{self.left!r} {self.operator} {self.right!r}"


class Inequality(_Comparison):
    """``left <= right``, elementwise."""

    operator = "<="


class Equality(_Comparison):
    """``left == right``, elementwise."""

    operator = "=="


class Set(Constraint):
    """A named set constraining the layer's variable (each row of a per-batch variable)."""

    def data(self) -> dict[str, Expression]:
        """Return the set's data expressions by name (bounds, radius, ``A``, ``b``)."""
        return {}

    def parameters(self) -> list[Parameter]:
        return [value for value in self.data().values() if isinstance(value, Parameter)]

    def check_size(self, n: int) -> None:
        """Raise ShapeError if the set's data does not fit a row of length ``n``."""

    def validate_values(self, values: dict[str, torch.Tensor]) -> None:
        """Raise EmptySetError if runtime data makes the set empty (Parameters only)."""


class Box(Set):
    """``{z : lo <= z <= hi}``; a bound of ``None`` is infinite.

    Args:
        lo: lower bound: a number, an array of shape ``(n,)``, a Parameter, or None.
        hi: upper bound, the same forms as ``lo``.
    """

    def __init__(self, lo: Any = None, hi: Any = None) -> None:
        if lo is None and hi is None:
            raise DeclarationError("Box needs at least one finite bound; got lo=None and hi=None.")
        self.lo = None if lo is None else _set_data(lo, "Box lower bound")
        self.hi = None if hi is None else _set_data(hi, "Box upper bound")
        if isinstance(self.lo, Constant) and isinstance(self.hi, Constant):
            lo_value, hi_value = np.broadcast_arrays(np.atleast_1d(self.lo.value), np.atleast_1d(self.hi.value))
            bad = np.argwhere(lo_value > hi_value)
            if bad.size:
                where = tuple(int(i) for i in bad[0])
                raise EmptySetError(
                    f"Box({lo!r}, {hi!r}) is empty: lower bound {lo_value[where]:g} exceeds "
                    f"upper bound {hi_value[where]:g} at index {where}. Pass lo <= hi."
                )

    def data(self) -> dict[str, Expression]:
        return {name: value for name, value in (("lo", self.lo), ("hi", self.hi)) if value is not None}

    def check_size(self, n: int) -> None:
        for name, value in self.data().items():
            if value.shape not in ((), (n,)):
                raise ShapeError(
                    f"Box {name} has shape {format_shape(value.shape)}; expected a scalar or "
                    f"({n},) to match the variable."
                )

    def validate_values(self, values: dict[str, torch.Tensor]) -> None:
        if "lo" in values and "hi" in values:
            gap = values["hi"] - values["lo"]
            if bool((gap < 0).any()):
                raise EmptySetError(
                    f"Box is empty for the given bounds: lower bound exceeds upper bound by up "
                    f"to {float(-gap.min()):.3g}. Pass lo <= hi."
                )

    def __repr__(self) -> str:
        return f"Box({self.lo!r}, {self.hi!r})"


class Simplex(Set):
    """``{z : z >= 0, sum(z) = radius}``, the probability simplex for ``radius = 1``."""

    def __init__(self, radius: Any = 1.0) -> None:
        self.radius = _scalar_radius(radius, "Simplex radius")

    def data(self) -> dict[str, Expression]:
        return {"radius": self.radius}

    def validate_values(self, values: dict[str, torch.Tensor]) -> None:
        if bool((values["radius"] < 0).any()):
            raise EmptySetError("Simplex radius is negative, so the set is empty; pass radius >= 0.")

    def __repr__(self) -> str:
        return f"Simplex({self.radius!r})"


class _Ball(Set):
    norm = ""

    def __init__(self, radius: Any = 1.0) -> None:
        self.radius = _scalar_radius(radius, f"{type(self).__name__} radius")

    def data(self) -> dict[str, Expression]:
        return {"radius": self.radius}

    def validate_values(self, values: dict[str, torch.Tensor]) -> None:
        if bool((values["radius"] < 0).any()):
            raise EmptySetError(f"{type(self).__name__} radius is negative, so the ball is empty; pass radius >= 0.")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.radius!r})"


class L1Ball(_Ball):
    """``{z : ||z||_1 <= radius}``."""

    norm = "l1"


class L2Ball(_Ball):
    """``{z : ||z||_2 <= radius}``."""

    norm = "l2"


class LinfBall(_Ball):
    """``{z : ||z||_inf <= radius}``."""

    norm = "linf"


class Affine(Set):
    """``{z : A z = b}``.

    Constant data is checked for consistency when the set is built: contradictory
    equations raise :class:`EmptySetError` naming the least-squares residual.
    """

    def __init__(self, A: Any, b: Any) -> None:  # noqa: N803 - the standard name of the matrix
        self.A = _set_data(A, "Affine matrix A")
        self.b = _set_data(b, "Affine vector b")
        if self.A.ndim != 2 or self.b.ndim != 1 or self.A.shape[0] != self.b.shape[0]:
            raise ShapeError(
                f"Affine needs A of shape (p, n) and b of shape (p,), got "
                f"{format_shape(self.A.shape)} and {format_shape(self.b.shape)}."
            )
        if isinstance(self.A, Constant) and isinstance(self.b, Constant):
            residual = _affine_residual(self.A.value, self.b.value)
            if residual > 1e-9 * max(1.0, float(np.abs(self.b.value).max(initial=0.0))):
                raise EmptySetError(
                    f"Affine(A, b) is empty: the equations A z = b are inconsistent "
                    f"(least-squares residual {residual:.3g}). Check that b lies in the range of A."
                )

    def data(self) -> dict[str, Expression]:
        return {"A": self.A, "b": self.b}

    def check_size(self, n: int) -> None:
        if self.A.shape[1] != n:
            raise ShapeError(f"Affine matrix A has {self.A.shape[1]} columns; expected {n} to match the variable.")

    def validate_values(self, values: dict[str, torch.Tensor]) -> None:
        matrix, rhs = torch.broadcast_tensors(values["A"], values["b"].unsqueeze(-1))
        solution = torch.linalg.lstsq(matrix.detach().double().cpu(), rhs[..., :1].detach().double().cpu()).solution
        residual = (values["A"].detach().double().cpu() @ solution).squeeze(-1) - values["b"].detach().double().cpu()
        worst = float(residual.abs().max()) if residual.numel() else 0.0
        scale = max(1.0, float(values["b"].detach().abs().max()) if values["b"].numel() else 1.0)
        if worst > 1e-7 * scale:
            raise EmptySetError(
                f"Affine(A, b) is empty for the given values: A z = b is inconsistent "
                f"(least-squares residual {worst:.3g}). Check that b lies in the range of A."
            )

    def __repr__(self) -> str:
        return f"Affine({self.A!r}, {self.b!r})"


def _affine_residual(matrix: np.ndarray, rhs: np.ndarray) -> float:
    solution, *_ = np.linalg.lstsq(matrix, rhs, rcond=None)
    return float(np.abs(matrix @ solution - rhs).max(initial=0.0))


class Sphere(Set):
    """``{z : ||z||_2 = radius}`` (nonconvex; solved by exact projection)."""

    convex = False

    def __init__(self, radius: Any = 1.0) -> None:
        self.radius = _scalar_radius(radius, "Sphere radius")

    def data(self) -> dict[str, Expression]:
        return {"radius": self.radius}

    def validate_values(self, values: dict[str, torch.Tensor]) -> None:
        if bool((values["radius"] < 0).any()):
            raise EmptySetError("Sphere radius is negative, so the set is empty; pass radius >= 0.")

    def __repr__(self) -> str:
        return f"Sphere({self.radius!r})"


class CenteredSphere(Set):
    """``{z : 1^T z = 0, ||z||_2 = sqrt(n)}`` (nonconvex).

    The projection onto it is batch normalization without the affine part,
    ``(x - mean(x)) / std(x)`` with the population standard deviation.
    """

    convex = False

    def check_size(self, n: int) -> None:
        if n < 2:
            raise EmptySetError(
                "CenteredSphere needs n >= 2: for n = 1 the constraints 1^T z = 0 and ||z|| = 1 contradict each other."
            )

    def __repr__(self) -> str:
        return "CenteredSphere()"
