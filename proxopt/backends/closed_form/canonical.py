"""A normalized view of a problem for closed-form recognizers.

Recognizers match patterns such as "one norm1 term and a nonnegativity bound". The
same pattern can be declared in several ways (``z >= 0`` or ``Box(0, None)``, a bound
``0 <= z`` or ``-z <= 0``), so this module rewrites the problem once into
:class:`CanonicalProblem`:

* ``terms``: the residual terms ``R'`` (after merging), each a separable or known atom
  whose argument is the variable itself, with a constant or Parameter coefficient;
* ``sets``: named sets only; comparisons on the variable become :class:`Box` (bounds,
  merged into one box) or :class:`Affine` (equalities ``A z == b``); a nonnegativity bound
  together with ``sum(z) == r`` becomes :class:`Simplex`.

A problem that cannot be put in this form (an atom of ``A z``, a comparison between two
different expressions of ``z``) has no canonical view, and recognizers skip it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from proxopt.compile.analysis import Coefficient, ProxProblem, Term, scaled_variable_form
from proxopt.compile.evaluate import evaluate
from proxopt.dsl.atoms import Atom, PartExpression
from proxopt.dsl.expressions import (
    Constant,
    Expression,
    MatMulExpression,
    Parameter,
    SumExpression,
    Variable,
)
from proxopt.dsl.sets import Affine, Box, Equality, Inequality, Set, Simplex

__all__ = ["CanonicalTerm", "CanonicalProblem", "canonical_form"]


@dataclass
class CanonicalTerm:
    """A residual term ``coefficient * atom(scale * z + shift)``.

    ``scale`` and ``shift`` are constant scalars (1 and 0 when the argument is ``z``).
    ``part`` is ``"pos"`` or ``"neg"`` for ``atom(pos(.))`` / ``atom(neg(.))``, else None.
    """

    coefficient: Coefficient
    atom: Atom
    part: str | None = None
    scale: float = 1.0
    shift: float = 0.0

    @property
    def on_variable(self) -> bool:
        """Whether the argument is the variable itself (scale 1, shift 0)."""
        return self.scale == 1.0 and self.shift == 0.0

    @property
    def kind(self) -> type:
        return type(self.atom)


@dataclass
class CanonicalProblem:
    """Residual terms and named sets of a problem (see the module docstring)."""

    problem: ProxProblem
    terms: list[CanonicalTerm]
    sets: list[Set]

    def only(self, *kinds: type) -> bool:
        """Return whether the terms are exactly one of each given atom class, in any order."""
        return sorted(t.kind.__name__ for t in self.terms) == sorted(k.__name__ for k in kinds)


def _bound_from_inequality(constraint: Inequality, variable: Variable) -> Box | None:
    """Turn ``s z + t <= c`` (or ``c <= s z + t``) into a Box, for constants s, t, c."""
    left = scaled_variable_form(constraint.left, variable)
    right = scaled_variable_form(constraint.right, variable)
    if left is None or right is None:
        return None
    scale = left.scale - right.scale  # (left - right) = scale * z + offset <= 0
    if scale == 0:
        return None
    offset = 0.0
    for form, sign in ((left, 1.0), (right, -1.0)):
        if form.offset is None:
            continue
        if not isinstance(form.offset, Constant):
            return None
        offset = offset + sign * form.offset.value
    bound = Constant(-np.asarray(offset) / scale)
    return Box(None, bound) if scale > 0 else Box(bound, None)


def _equality_as_affine(constraint: Equality, variable: Variable) -> Affine | None:
    """Turn ``sum(z) == r`` or ``A @ z == b`` (constants) into an Affine set."""
    left, right = constraint.left, constraint.right
    if not left.depends_on_variable:
        left, right = right, left
    if right.depends_on_variable or not isinstance(right, Constant):
        return None
    n = variable.size
    if isinstance(left, SumExpression) and left.args[0] is variable:
        return Affine(np.ones((1, n)), np.atleast_1d(right.value))
    if isinstance(left, MatMulExpression) and left.args[1] is variable and isinstance(left.args[0], Constant):
        matrix = left.args[0].value
        if matrix.ndim == 2:
            return Affine(matrix, np.broadcast_to(right.value, (matrix.shape[0],)).copy())
    return None


def _merge_boxes(boxes: list[Box]) -> Box | None:
    """Intersect boxes with constant data (None when a bound is a Parameter)."""
    lows: list[np.ndarray] = []
    highs: list[np.ndarray] = []
    for box in boxes:
        for bound, into in ((box.lo, lows), (box.hi, highs)):
            if bound is None:
                continue
            if not isinstance(bound, Constant):
                return None
            into.append(bound.value)
    low = None if not lows else Constant(np.maximum.reduce(np.broadcast_arrays(*lows)))
    high = None if not highs else Constant(np.minimum.reduce(np.broadcast_arrays(*highs)))
    return Box(low, high)


def _is_zero_lower_box(box: Box) -> bool:
    return box.hi is None and isinstance(box.lo, Constant) and box.lo.shape == () and float(box.lo.value) == 0.0


def _is_sum_equality(affine: Affine, n: int) -> bool:
    matrix = affine.A
    return isinstance(matrix, Constant) and matrix.value.shape == (1, n) and bool(np.all(matrix.value == 1))


def canonical_form(problem: ProxProblem) -> CanonicalProblem | None:
    """Return the canonical view of ``problem``, or None when it has none."""
    variable = problem.variable
    if problem.per_batch:
        return None

    terms: list[CanonicalTerm] = []
    for term in problem.residual_terms:
        canonical = _canonical_term(term, variable)
        if canonical is None:
            return None
        terms.append(canonical)

    boxes: list[Box] = []
    sets: list[Set] = []
    for constraint in problem.constraints:
        if isinstance(constraint, Box):
            boxes.append(constraint)
        elif isinstance(constraint, Inequality):
            box = _bound_from_inequality(constraint, variable)
            if box is None:
                return None
            boxes.append(box)
        elif isinstance(constraint, Equality):
            affine = _equality_as_affine(constraint, variable)
            if affine is None:
                return None
            sets.append(affine)
        else:
            assert isinstance(constraint, Set)
            sets.append(constraint)

    if len(boxes) == 1:
        merged: Box | None = boxes[0]
    elif boxes:
        merged = _merge_boxes(boxes)
        if merged is None:
            return None
    else:
        merged = None

    # A nonnegativity bound with sum(z) == r is the simplex of radius r.
    sums = [s for s in sets if isinstance(s, Affine) and _is_sum_equality(s, variable.size)]
    if merged is not None and _is_zero_lower_box(merged) and len(sums) == 1:
        sets.remove(sums[0])
        radius = sums[0].b
        assert isinstance(radius, Constant)
        sets.append(Simplex(float(radius.value[0])))
        merged = None
    if merged is not None:
        sets.insert(0, merged)
    return CanonicalProblem(problem, terms, sets)


def _constant_scalar(expr: Expression) -> float | None:
    """Return the value of a scalar built from Constants only, such as the ``-1`` of ``z - 1``."""
    if isinstance(expr, Constant):
        return float(expr.value) if expr.shape == () else None
    if expr.shape != () or expr.parameters() or expr.depends_on_variable:
        return None
    return float(evaluate(expr, {}, torch.zeros((), dtype=torch.float64)))


def _canonical_term(term: Term, variable: Variable) -> CanonicalTerm | None:
    atom = term.atom
    if atom is None:
        return None
    argument: Expression = atom.argument
    part = None
    if isinstance(argument, PartExpression):
        part = argument.kind
        argument = argument.args[0]
    form = scaled_variable_form(argument, variable)
    if form is None or form.scale == 0:
        return None
    shift = 0.0
    if form.offset is not None:
        offset = _constant_scalar(form.offset)
        if offset is None:
            return None
        shift = offset
    for factor in term.coefficient.factors:
        if not isinstance(factor, Parameter) or factor.shape != ():
            return None
    return CanonicalTerm(term.coefficient, atom, part, form.scale, shift)
