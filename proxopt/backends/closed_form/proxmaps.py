"""Exact prox maps of one norm-like or piecewise-quadratic term.

For a residual ``R'(z) = t f(s z + c)`` (a constant or nonnegative-Parameter weight
``t``, constant scalars ``s != 0`` and ``c``), the merged objective has the minimizer

    z = (prox_{theta f}(s v + c) - c) / s,    v = y / a,  theta = t s^2 / a,

where ``prox_{theta f}(u) = argmin_w theta f(w) + (1/2)||w - u||^2``. This module computes
``prox_{theta f}`` for these ``f``: ``norm1`` (soft-threshold), ``norm1(pos(.))`` and
``norm1(neg(.))`` (hinges), ``sum_squares(neg(.))`` (leaky ReLU) and
``sum_squares(pos(.))``, ``huber``, ``norm2`` (block soft-threshold), ``group_norm``
(group soft-threshold) and ``norm_inf`` (by the Moreau identity). For the separable ones
a :class:`~proxopt.Box` constraint may be added: a convex function of one variable is
minimized over an interval by clamping its unconstrained minimizer, so the result is
``clamp(prox, lo, hi)``.

Thresholds ``theta`` are floats or tensors of shape ``()`` or ``v.shape[:-1]`` (one per
row). Gradients are exact, by autograd through ``where``, ``clamp`` and the simplex
projection's custom backward. At the kinks (``|v| = theta`` for the soft-threshold) they
take one of the one-sided values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from proxopt.backends.base import ProxCall
from proxopt.backends.closed_form.canonical import CanonicalTerm, canonical_form
from proxopt.backends.closed_form.merged_point import (
    check_compile_weight,
    fast_merged_point,
    merged_point,
    per_row,
)
from proxopt.backends.closed_form.projections import (
    box_bounds,
    constant_box_clamp,
    project_box,
    project_l1_ball,
)
from proxopt.backends.closed_form.registry import ClosedFormMatch, register
from proxopt.compile.analysis import ProxProblem
from proxopt.dsl.atoms import Atom, GroupNorm, Huber, Norm1, Norm2, NormInf, SumSquares
from proxopt.dsl.expressions import Constant
from proxopt.dsl.sets import Box
from proxopt.errors import DeclarationError

__all__ = [
    "soft_threshold",
    "nonnegative_soft_threshold",
    "prox_hinge",
    "prox_negative_hinge",
    "prox_negative_square",
    "prox_positive_square",
    "prox_huber",
    "block_soft_threshold",
    "group_soft_threshold",
    "prox_norm_inf",
]

Threshold = torch.Tensor | float
Kernel = Callable[[torch.Tensor, Threshold], torch.Tensor]


# -- kernels ---------------------------------------------------------------------------


def soft_threshold(v: torch.Tensor, threshold: Threshold) -> torch.Tensor:
    """Return ``argmin_z theta ||z||_1 + (1/2)||z - v||^2 = sign(v) max(|v| - theta, 0)``.

    A float ``theta`` uses ``torch.nn.functional.softshrink``, which computes the same.
    """
    if not isinstance(threshold, torch.Tensor):
        return F.softshrink(v, threshold)
    return torch.sign(v) * torch.relu(v.abs() - per_row(threshold))


def nonnegative_soft_threshold(v: torch.Tensor, threshold: Threshold) -> torch.Tensor:
    """Return ``argmin_{z >= 0} theta ||z||_1 + (1/2)||z - v||^2 = max(v - theta, 0)``."""
    return torch.relu(v - per_row(threshold))


def prox_hinge(v: torch.Tensor, threshold: Threshold) -> torch.Tensor:
    """Return the prox of ``theta sum_i max(z_i, 0)``: ``v - min(max(v, 0), theta)``.

    That is ``v - theta`` for ``v > theta``, ``0`` for ``0 <= v <= theta``, ``v`` for ``v < 0``.
    """
    return v - torch.clamp(torch.relu(v), max=per_row(threshold))


def prox_negative_hinge(v: torch.Tensor, threshold: Threshold) -> torch.Tensor:
    """Return the prox of ``theta sum_i max(-z_i, 0)``: ``v + min(max(-v, 0), theta)``."""
    return v + torch.clamp(torch.relu(-v), max=per_row(threshold))


def _square_slope(threshold: Threshold) -> Threshold:
    # Minimizing theta z^2 + (1/2)(z - v)^2 over z gives z = v / (1 + 2 theta).
    return 1.0 / (1.0 + 2.0 * per_row(threshold))


def prox_negative_square(v: torch.Tensor, threshold: Threshold) -> torch.Tensor:
    """Return the prox of ``theta sum_i min(z_i, 0)^2``: leaky ReLU with slope ``1 / (1 + 2 theta)``.

    The result is ``v`` for ``v > 0`` and ``v / (1 + 2 theta)`` otherwise. A float
    ``theta`` uses ``torch.nn.functional.leaky_relu``, which computes the same.
    """
    slope = _square_slope(threshold)
    if not isinstance(slope, torch.Tensor):
        return F.leaky_relu(v, slope)
    return torch.where(v > 0, v, v * slope)


def prox_positive_square(v: torch.Tensor, threshold: Threshold) -> torch.Tensor:
    """Return the prox of ``theta sum_i max(z_i, 0)^2``: ``v`` for ``v < 0``, else ``v / (1 + 2 theta)``."""
    return torch.where(v < 0, v, v * _square_slope(threshold))


def prox_huber(v: torch.Tensor, threshold: Threshold, delta: float) -> torch.Tensor:
    """Return the prox of ``theta sum_i h(z_i)`` for the Huber function ``h`` with parameter ``delta``.

    With ``h(w) = w^2 / 2`` for ``|w| <= delta`` and ``delta (|w| - delta / 2)`` otherwise,
    the prox is ``v / (1 + theta)`` for ``|v| <= delta (1 + theta)`` and
    ``v - theta delta sign(v)`` otherwise, which is ``v - theta clamp(v / (1 + theta), -delta, delta)``.
    """
    theta = per_row(threshold)
    return v - theta * torch.clamp(v / (1.0 + theta), -delta, delta)


def _group_scale(norm: torch.Tensor, shrink: Threshold) -> torch.Tensor:
    """Return ``max(1 - shrink / norm, 0)``, with 1 where ``shrink = 0`` (even at ``norm = 0``).

    Both divisions are guarded, so rows or groups with ``norm = 0`` get finite gradients.
    """
    safe_norm = torch.where(norm > 0, norm, 1.0)
    if isinstance(shrink, torch.Tensor):
        keep = (norm > shrink) | (shrink == 0)
    elif shrink == 0:
        return torch.ones_like(norm)
    else:
        keep = norm > shrink
    return torch.where(keep, 1.0 - shrink / safe_norm, 0.0)


def block_soft_threshold(v: torch.Tensor, threshold: Threshold) -> torch.Tensor:
    """Return ``argmin_z theta ||z||_2 + (1/2)||z - v||^2 = v max(1 - theta / ||v||_2, 0)`` per row."""
    norm = torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    return v * _group_scale(norm, per_row(threshold))


@dataclass(frozen=True)
class GroupLayout:
    """Disjoint index groups of a row of length ``n``, with one weight per group.

    Attributes:
        size: the row length ``n``.
        groups: the index lists.
        weights: ``w_g >= 0``, one per group.
        block: the block size when the groups are consecutive blocks covering the row.
    """

    size: int
    groups: tuple[tuple[int, ...], ...]
    weights: tuple[float, ...]
    block: int | None

    @classmethod
    def build(cls, size: int, groups: Sequence[Sequence[int]], weights: Sequence[float] | None = None) -> GroupLayout:
        """Validate groups and weights for rows of length ``size`` and detect equal blocks."""
        index_groups = tuple(tuple(int(i) for i in group) for group in groups)
        flat = [i for group in index_groups for i in group]
        if not index_groups or any(not group for group in index_groups):
            raise DeclarationError("group soft-threshold groups must be non-empty index lists.")
        if any(i < 0 or i >= size for i in flat) or len(set(flat)) != len(flat):
            raise DeclarationError(
                f"group soft-threshold groups must be disjoint indices in [0, {size}), got {sorted(flat)}."
            )
        weight_values = (1.0,) * len(index_groups) if weights is None else tuple(float(w) for w in weights)
        if len(weight_values) != len(index_groups) or any(not w >= 0 for w in weight_values):
            raise DeclarationError(f"group soft-threshold weights must be {len(index_groups)} numbers >= 0.")
        width = len(index_groups[0])
        blocks = tuple(tuple(range(start, start + width)) for start in range(0, size, width))
        return cls(size, index_groups, weight_values, width if index_groups == blocks else None)

    @classmethod
    def from_atom(cls, atom: GroupNorm) -> GroupLayout:
        return cls.build(int(atom.argument.shape[-1]), atom.groups, atom.weights)  # type: ignore[arg-type]

    def entry_groups(self) -> np.ndarray:
        """Return the group of each entry, with ``len(groups)`` for entries in no group."""
        owner = np.full(self.size, len(self.groups), dtype=np.int64)
        for index, group in enumerate(self.groups):
            owner[list(group)] = index
        return owner


def group_soft_threshold(
    v: torch.Tensor,
    threshold: Threshold,
    groups: Sequence[Sequence[int]],
    weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """Return the prox of ``theta sum_g w_g ||z_g||_2`` for disjoint groups ``g``.

    Each group is shrunk on its own, ``z_g = v_g max(1 - theta w_g / ||v_g||_2, 0)``, and
    entries in no group are returned unchanged.

    Args:
        v: points, shape ``(..., n)``.
        threshold: ``theta >= 0``, a float or a tensor of shape ``()`` or ``v.shape[:-1]``.
        groups: disjoint lists of indices into the last dimension.
        weights: ``w_g >= 0`` per group (all 1 when None).
    """
    layout = GroupLayout.build(v.shape[-1], groups, weights)
    return _GroupShrinker(layout)(v, threshold)


class _GroupShrinker:
    """The group soft-threshold for one layout, with its index tensors cached per device."""

    def __init__(self, layout: GroupLayout) -> None:
        self.layout = layout
        self._owner = torch.from_numpy(layout.entry_groups())
        self._cache: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    def _tensors(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (like.dtype, like.device)
        cached = self._cache.get(key)
        if cached is None:
            weights = torch.tensor(self.layout.weights, dtype=like.dtype, device=like.device)
            cached = (self._owner.to(like.device), weights)
            self._cache[key] = cached
        return cached

    def __call__(self, v: torch.Tensor, threshold: Threshold) -> torch.Tensor:
        owner, weights = self._tensors(v)
        shrink = per_row(threshold) * weights  # (..., G)
        count = len(self.layout.groups)
        block = self.layout.block
        if block is not None:
            grouped = v.reshape(*v.shape[:-1], count, block)
            norm = torch.linalg.vector_norm(grouped, dim=-1)
            return (grouped * _group_scale(norm, shrink).unsqueeze(-1)).reshape(v.shape)
        # Sum the squares of each group's entries. Entries in no group go to the extra slot `count`.
        squares = v.new_zeros(*v.shape[:-1], count + 1).index_add(-1, owner, v * v)
        total = squares[..., :count]
        positive = total > 0
        norm = torch.where(positive, torch.sqrt(torch.where(positive, total, 1.0)), 0.0)
        scale = torch.cat([_group_scale(norm, shrink), v.new_ones(*v.shape[:-1], 1)], dim=-1)
        return v * scale.index_select(-1, owner)


def prox_norm_inf(v: torch.Tensor, threshold: Threshold) -> torch.Tensor:
    """Return ``argmin_z theta ||z||_inf + (1/2)||z - v||^2 = v - P_{||.||_1 <= theta}(v)`` per row.

    This is the Moreau identity: the L1 ball of radius ``theta`` is the unit ball of the
    dual norm scaled by ``theta``.
    """
    return v - project_l1_ball(v, threshold)


# -- recognizers -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    """A catalog entry: which term it matches and how to build its kernel.

    Attributes:
        name: registry name.
        atom: the atom class of the single residual term.
        part: ``"pos"``, ``"neg"`` or None, the part the atom applies to.
        separable: whether a Box may be added (then the result is clamped).
        nonnegative_only: whether the entry matches only with the bound ``z >= 0``.
        summary: the formula, for ``explain``.
        kernel: builds ``prox_{theta f}`` from the matched atom.
    """

    name: str
    atom: type
    part: str | None
    separable: bool
    summary: str
    kernel: Callable[[Atom], Kernel]
    nonnegative_only: bool = False


def _fixed(kernel: Kernel) -> Callable[[Atom], Kernel]:
    def build(atom: Atom) -> Kernel:
        return kernel

    return build


def _huber_kernel(atom: Atom) -> Kernel:
    assert isinstance(atom, Huber)
    delta = atom.delta

    def kernel(v: torch.Tensor, threshold: Threshold) -> torch.Tensor:
        return prox_huber(v, threshold, delta)

    return kernel


def _group_kernel(atom: Atom) -> Kernel:
    assert isinstance(atom, GroupNorm)
    return _GroupShrinker(GroupLayout.from_atom(atom))


_ENTRIES = [
    _Entry(
        "nonnegative_soft_threshold",
        Norm1,
        None,
        True,
        "soft-threshold on z >= 0: max(v - theta, 0), theta = t / a",
        _fixed(nonnegative_soft_threshold),
        nonnegative_only=True,
    ),
    _Entry(
        "soft_threshold",
        Norm1,
        None,
        True,
        "soft-threshold sign(v) max(|v| - theta, 0), theta = t / a",
        _fixed(soft_threshold),
    ),
    _Entry("hinge", Norm1, "pos", True, "v - min(max(v, 0), theta), theta = t / a", _fixed(prox_hinge)),
    _Entry(
        "negative_hinge", Norm1, "neg", True, "v + min(max(-v, 0), theta), theta = t / a", _fixed(prox_negative_hinge)
    ),
    _Entry(
        "leaky_relu",
        SumSquares,
        "neg",
        True,
        "leaky ReLU: v for v > 0, else a v / (a + 2 c)",
        _fixed(prox_negative_square),
    ),
    _Entry(
        "positive_part_square",
        SumSquares,
        "pos",
        True,
        "v for v < 0, else a v / (a + 2 c)",
        _fixed(prox_positive_square),
    ),
    _Entry(
        "huber",
        Huber,
        None,
        True,
        "v - theta clamp(v / (1 + theta), -delta, delta), theta = t / a",
        _huber_kernel,
    ),
    _Entry(
        "block_soft_threshold",
        Norm2,
        None,
        False,
        "block soft-threshold v max(1 - theta / ||v||_2, 0), theta = t / a",
        _fixed(block_soft_threshold),
    ),
    _Entry(
        "group_soft_threshold",
        GroupNorm,
        None,
        False,
        "group soft-threshold v_g max(1 - theta w_g / ||v_g||_2, 0) per group, theta = t / a",
        _group_kernel,
    ),
    _Entry(
        "norm_inf",
        NormInf,
        None,
        False,
        "Moreau identity v - P_{||.||_1 <= theta}(v), theta = t / a",
        _fixed(prox_norm_inf),
    ),
]


def _is_nonnegative_bound(box: Box) -> bool:
    return box.hi is None and isinstance(box.lo, Constant) and box.lo.shape == () and float(box.lo.value) == 0.0


def _matching_term(entry: _Entry, problem: ProxProblem) -> tuple[CanonicalTerm, Box | None] | None:
    """Return the term and optional box when ``problem`` has the entry's pattern."""
    if len(problem.residual_terms) != 1:
        return None
    canonical = canonical_form(problem)
    if canonical is None or len(canonical.terms) != 1:
        return None
    (term,) = canonical.terms
    if term.kind is not entry.atom or term.part != entry.part or term.coefficient.sign <= 0:
        return None
    if not canonical.sets:
        return None if entry.nonnegative_only else (term, None)
    if len(canonical.sets) != 1 or not entry.separable or not isinstance(canonical.sets[0], Box):
        return None
    box = canonical.sets[0]
    if entry.nonnegative_only:
        return (term, None) if _is_nonnegative_bound(box) else None
    return term, box


def _describe(entry: _Entry, term: CanonicalTerm, box: Box | None) -> str:
    summary = entry.summary
    if not term.on_variable:
        summary += (
            f", evaluated at u = s v + c (s = {term.scale:g}, c = {term.shift:g}) with theta = t s^2 / a "
            "and mapped back by z = (prox - c) / s"
        )
    if box is not None:
        summary += f", then clamped to {box!r}"
    return summary


def _make_recognizer(entry: _Entry) -> Callable[[ProxProblem, float | None], ClosedFormMatch | None]:
    def recognize(problem: ProxProblem, lam: float | None) -> ClosedFormMatch | None:
        matched = _matching_term(entry, problem)
        if matched is None:
            return None
        term, box = matched
        check_compile_weight(problem, lam)
        kernel = entry.kernel(term.atom)
        scale, shift = term.scale, term.shift
        on_variable = term.on_variable

        def shrink(v: torch.Tensor, theta: Threshold) -> torch.Tensor:
            if on_variable:
                return kernel(v, theta)
            return (kernel(scale * v + shift, theta) - shift) / scale

        def solve(call: ProxCall) -> torch.Tensor:
            v, a = merged_point(problem, call)
            theta = term.coefficient.value(call.values, call.x) * (scale * scale) / a
            z = shrink(v, theta)
            if box is None:
                return z
            lo, hi = box_bounds(box, call)
            return project_box(z, lo, hi)

        # theta = t s^2 / a depends on lam, so the fast path needs a float lam.
        point = fast_merged_point(problem, lam) if lam is not None else None
        fast: Callable[[torch.Tensor, float], torch.Tensor] | None = None
        if point is not None:
            fast_point = point
            weight = term.coefficient.constant * scale * scale
            clamp = constant_box_clamp(box) if box is not None else None

            def fast(x: torch.Tensor, lam: float) -> torch.Tensor:
                v, a = fast_point(x, lam)
                z = shrink(v, weight / a)
                return z if clamp is None else clamp(z)

        return ClosedFormMatch(entry.name, _describe(entry, term, box), solve, fast)

    return recognize


for _entry in _ENTRIES:
    register(_entry.name)(_make_recognizer(_entry))
