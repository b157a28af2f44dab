"""Exact projections onto convex sets, for problems with ``R' = 0``.

With no residual terms, the merged objective ``(a/2)||z||^2 - y^T z`` over ``C`` is
minimized by the Euclidean projection ``P_C(v)`` of ``v = y / a``. This module computes
the projections onto the nonnegative orthant (ReLU), a box (clamp, which is hard tanh
for ``[-1, 1]``), the simplex (sparsemax for radius 1), the L1, L2 and L-infinity balls
and an affine set ``{z : A z = b}``. It registers one recognizer for each.

Each projection acts on the last dimension of ``v``. Radii are floats or tensors of
shape ``()`` or ``v.shape[:-1]`` (one radius per row). Gradients are exact: autograd
through ``clamp``, ``where`` and matrix products, and for the simplex a custom backward
with the Jacobian of the projection (see :func:`project_simplex`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from proxopt.backends.base import ProxCall
from proxopt.backends.closed_form.canonical import CanonicalProblem, canonical_form
from proxopt.backends.closed_form.merged_point import (
    check_compile_weight,
    fast_merged_point,
    has_merged_terms,
    merged_point,
    per_row,
)
from proxopt.backends.closed_form.registry import ClosedFormMatch, register
from proxopt.compile.analysis import ProxProblem, set_values
from proxopt.compile.evaluate import constant_tensor
from proxopt.dsl.expressions import Constant, Expression
from proxopt.dsl.sets import Affine, Box, L1Ball, L2Ball, LinfBall, Set, Simplex
from proxopt.errors import EmptySetError

__all__ = [
    "project_nonnegative",
    "project_box",
    "project_simplex",
    "project_l1_ball",
    "project_l2_ball",
    "project_linf_ball",
    "project_affine",
]

Radius = torch.Tensor | float


def _check_radius(radius: Radius, set_name: str) -> None:
    # The layer validates tensor radii (Set.validate_values), because a check here would
    # synchronize with the device on every call.
    if not isinstance(radius, torch.Tensor) and radius < 0:
        raise EmptySetError(
            f"{set_name} radius is {radius:g}, but a set with a negative radius is empty. Pass radius >= 0."
        )


# -- kernels ---------------------------------------------------------------------------


def project_nonnegative(v: torch.Tensor) -> torch.Tensor:
    """Project onto ``{z : z >= 0}``: ``argmin_{z >= 0} ||z - v||^2 = max(v, 0)`` (ReLU)."""
    return torch.relu(v)


def project_box(v: torch.Tensor, lo: Radius | None, hi: Radius | None) -> torch.Tensor:
    """Project onto ``{z : lo <= z <= hi}``: ``min(max(v, lo), hi)`` elementwise.

    Args:
        v: points, shape ``(..., n)``.
        lo, hi: bounds broadcastable to ``v`` (floats or tensors), or None for no bound.
            Tensor bounds receive gradients (``dz/dlo = 1`` where ``v < lo``).
    """
    if isinstance(lo, torch.Tensor) != isinstance(hi, torch.Tensor) and lo is not None and hi is not None:
        # torch.clamp takes two numbers or two tensors, not one of each.
        lo = torch.as_tensor(lo, dtype=v.dtype, device=v.device)
        hi = torch.as_tensor(hi, dtype=v.dtype, device=v.device)
    return torch.clamp(v, min=lo, max=hi)


_RANKS: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}


def _ranks(n: int, like: torch.Tensor) -> torch.Tensor:
    """Return ``[1, 2, ..., n]`` in the dtype and device of ``like`` (cached)."""
    key = (n, like.dtype, like.device)
    ranks = _RANKS.get(key)
    if ranks is None:
        with torch.inference_mode(False):
            ranks = torch.arange(1, n + 1, dtype=like.dtype, device=like.device)
        _RANKS[key] = ranks
    return ranks


def _simplex_threshold(shifted: torch.Tensor, radius: Radius) -> torch.Tensor:
    """Return ``tau`` with ``sum_i max(shifted_i - tau, 0) = radius`` for each row.

    With the entries sorted in decreasing order ``u_1 >= ... >= u_n`` and partial sums
    ``c_k``, ``f(k) = (c_k - radius) / k`` satisfies ``f(k) - f(k-1) = (u_k - f(k-1)) / k``,
    so it increases exactly while ``k`` is in the support and decreases after it. Hence
    ``tau = max_k f(k)``, which needs no support count. For ``radius = 0`` it gives
    ``tau = max_i shifted_i``.
    """
    ordered = torch.sort(shifted, dim=-1, descending=True).values
    averages = (ordered.cumsum(-1) - radius) / _ranks(shifted.shape[-1], shifted)
    return averages.amax(-1, keepdim=True)


def _simplex_projection(v: torch.Tensor, radius: Radius) -> torch.Tensor:
    """Project rows onto the simplex; ``radius`` is a float, a 0-dim tensor or a ``(B, 1)`` column.

    The support ``S = {i : v_i >= tau}`` is found without gradients. On it the projection
    is ``v_S - tau`` with ``tau = (sum_S v - r) / |S|``, and evaluating that formula with
    the support held fixed gives autograd the exact Jacobian ``diag(1_S) - 1_S 1_S^T / |S|``
    and ``dz/dr = 1_S / |S|`` (also in forward mode and to higher order).
    """
    # The projection commutes with adding a constant to a row, so subtracting the row
    # maximum (held constant) loses nothing and keeps the partial sums small. Without it,
    # float32 rows near 1e8 lose the threshold to rounding. Entries of -inf get 0.
    shifted = v - v.detach().amax(-1, keepdim=True)
    with torch.no_grad():
        support = (shifted >= _simplex_threshold(shifted, radius)).to(v.dtype)
        count = support.sum(-1, keepdim=True)
    # -inf entries lie outside the support; a finite floor avoids 0 * inf = NaN there.
    finite = shifted.clamp_min(torch.finfo(v.dtype).min)
    tau = ((finite * support).sum(-1, keepdim=True) - radius) / count
    return (finite - tau) * support


def project_simplex(v: torch.Tensor, radius: Radius = 1.0) -> torch.Tensor:
    """Project the rows of ``v`` onto the simplex ``{z : z >= 0, sum(z) = radius}``.

    The projection is ``max(v - tau, 0)`` with the threshold ``tau`` that makes the row
    sum to ``radius``. For ``radius = 1`` it is sparsemax.
    It is computed by sorting each row after subtracting its maximum, which is exact for
    ties and for large offsets. Entries equal to ``-inf`` get 0; a row with ``+inf`` or
    NaN entries, or with every entry ``-inf``, gives NaN.

    Gradients are exact: ``dz/dv = diag(1_S) - 1_S 1_S^T / |S|`` and ``dz/dradius =
    1_S / |S|`` on the support ``S = {i : v_i >= tau}``.

    Args:
        v: points, shape ``(..., n)``.
        radius: a float ``>= 0``, or a tensor of shape ``()`` or ``v.shape[:-1]``.
    """
    _check_radius(radius, "Simplex")
    return _simplex_projection(v, per_row(radius))


def project_l1_ball(v: torch.Tensor, radius: Radius) -> torch.Tensor:
    """Project the rows of ``v`` onto ``{z : ||z||_1 <= radius}``.

    A row inside the ball is returned unchanged. For a row outside,
    ``z = sign(v) * P_simplex(|v|, radius)``, because the projection keeps the signs of
    ``v`` and lies on the boundary ``||z||_1 = radius``.

    Args:
        v: points, shape ``(..., n)``.
        radius: a float ``>= 0``, or a tensor of shape ``()`` or ``v.shape[:-1]``.
    """
    _check_radius(radius, "L1Ball")
    row_radius = per_row(radius)
    magnitude = v.abs()
    outside = magnitude.sum(-1, keepdim=True) > row_radius
    boundary = torch.sign(v) * _simplex_projection(magnitude, row_radius)
    return torch.where(outside, boundary, v)


def project_l2_ball(v: torch.Tensor, radius: Radius) -> torch.Tensor:
    """Project the rows of ``v`` onto ``{z : ||z||_2 <= radius}``: ``v min(1, radius / ||v||)``.

    The division happens only for rows outside the ball, so ``v = 0`` has finite
    gradients.

    Args:
        v: points, shape ``(..., n)``.
        radius: a float ``>= 0``, or a tensor of shape ``()`` or ``v.shape[:-1]``.
    """
    _check_radius(radius, "L2Ball")
    row_radius = per_row(radius)
    norm = torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    outside = norm > row_radius
    return torch.where(outside, v * row_radius / torch.where(outside, norm, 1.0), v)


def project_linf_ball(v: torch.Tensor, radius: Radius) -> torch.Tensor:
    """Project the rows of ``v`` onto ``{z : ||z||_inf <= radius}``: ``clamp(v, -radius, radius)``.

    Args:
        v: points, shape ``(..., n)``.
        radius: a float ``>= 0``, or a tensor of shape ``()`` or ``v.shape[:-1]``.
    """
    _check_radius(radius, "LinfBall")
    row_radius = per_row(radius)
    return torch.clamp(v, min=-row_radius, max=row_radius)


def project_affine(
    v: torch.Tensor,
    matrix: torch.Tensor,
    rhs: torch.Tensor,
    pseudo_inverse: torch.Tensor | None = None,
) -> torch.Tensor:
    """Project the rows of ``v`` onto ``{z : A z = b}``: ``z = v - A^+ (A v - b)``.

    ``A^+`` is the Moore-Penrose pseudo-inverse, so the formula holds for any consistent
    system, including rank-deficient ``A``. Gradients with respect to ``A`` go through
    ``torch.linalg.pinv`` and are exact where the rank of ``A`` is locally constant.

    Args:
        v: points, shape ``(B, n)``.
        matrix: ``A``, shape ``(p, n)`` (shared) or ``(B, p, n)``.
        rhs: ``b``, shape ``(p,)`` or ``(B, p)``.
        pseudo_inverse: ``A^+`` when known (shape ``(n, p)`` or ``(B, n, p)``); computed
            with ``torch.linalg.pinv`` otherwise.
    """
    if pseudo_inverse is None:
        pseudo_inverse = torch.linalg.pinv(matrix)
    if matrix.ndim == 2:
        residual = v @ matrix.mT - rhs
    else:
        residual = (matrix @ v.unsqueeze(-1)).squeeze(-1) - rhs
    if pseudo_inverse.ndim == 2:
        correction = residual @ pseudo_inverse.mT
    else:
        correction = (pseudo_inverse @ residual.unsqueeze(-1)).squeeze(-1)
    return v - correction


# -- recognizers -----------------------------------------------------------------------


def _single_set(problem: ProxProblem, kind: type) -> tuple[CanonicalProblem, Set] | None:
    """Return the canonical view when ``R' = 0`` and ``C`` is one set of type ``kind``."""
    if problem.residual_terms:
        return None
    canonical = canonical_form(problem)
    if canonical is None or canonical.terms or len(canonical.sets) != 1:
        return None
    (found,) = canonical.sets
    if not isinstance(found, kind):
        return None
    return canonical, found


def _set_datum(expr: Expression, values: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """Return a set datum aligned with ``(B, n)`` rows.

    A per-sample value of a scalar datum has shape ``(B,)`` and becomes ``(B, 1)``.
    Vector data (``(n,)`` or ``(B, n)``) already broadcast against the rows.
    """
    value = values[name]
    if expr.ndim == 0 and value.ndim == 1:
        return value.unsqueeze(-1)
    return value


def _constant_scalar(expr: Expression | None) -> float | None:
    if isinstance(expr, Constant) and expr.shape == ():
        return float(expr.value)
    return None


def box_bounds(box: Box, call: ProxCall) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Return the bounds of ``box`` for a call, aligned with ``(B, n)`` rows (None if absent)."""
    values = set_values(box, call.values, call.x)
    lo = _set_datum(box.lo, values, "lo") if box.lo is not None else None
    hi = _set_datum(box.hi, values, "hi") if box.hi is not None else None
    return lo, hi


def box_summary(box: Box) -> str:
    """Describe the clamp that projects onto ``box``, for ``explain``."""
    lo, hi = _constant_scalar(box.lo), _constant_scalar(box.hi)
    if lo == 0.0 and box.hi is None:
        return "max(v, 0) (ReLU)"
    if lo == -1.0 and hi == 1.0:
        return "clamp(v, -1, 1) (hard tanh)"
    return f"clamp(v, {box.lo!r}, {box.hi!r})"


def constant_box_clamp(box: Box) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return ``clamp(v)`` for a box with constant bounds, calling the torch op directly.

    Scalar bounds use ``torch.relu``, ``F.hardtanh`` or ``torch.clamp`` with numbers.
    Vector bounds use ``torch.clamp`` with tensors cached per dtype and device.
    """
    lo_value, hi_value = _constant_scalar(box.lo), _constant_scalar(box.hi)
    scalar_lo = box.lo is None or lo_value is not None
    scalar_hi = box.hi is None or hi_value is not None
    if scalar_lo and scalar_hi:
        if lo_value == 0.0 and box.hi is None:
            return torch.relu
        if lo_value == -1.0 and hi_value == 1.0:
            return F.hardtanh

        def clamp_numbers(v: torch.Tensor) -> torch.Tensor:
            return torch.clamp(v, min=lo_value, max=hi_value)

        return clamp_numbers

    lo_expr, hi_expr = box.lo, box.hi
    assert lo_expr is None or isinstance(lo_expr, Constant)
    assert hi_expr is None or isinstance(hi_expr, Constant)

    def clamp_tensors(v: torch.Tensor) -> torch.Tensor:
        lo = None if lo_expr is None else constant_tensor(lo_expr, v)
        hi = None if hi_expr is None else constant_tensor(hi_expr, v)
        return torch.clamp(v, min=lo, max=hi)

    return clamp_tensors


@register("nonnegative")
def _recognize_nonnegative(problem: ProxProblem, lam: float | None) -> ClosedFormMatch | None:
    found = _single_set(problem, Box)
    if found is None:
        return None
    box = found[1]
    assert isinstance(box, Box)
    if not (box.hi is None and _constant_scalar(box.lo) == 0.0):
        return None
    check_compile_weight(problem, lam)

    def solve(call: ProxCall) -> torch.Tensor:
        v, _ = merged_point(problem, call)
        return torch.relu(v)

    point = fast_merged_point(problem, lam)
    fast: Callable[[torch.Tensor, float], torch.Tensor] | None = None
    if point is not None and not has_merged_terms(problem):

        def fast(x: torch.Tensor, lam: float) -> torch.Tensor:
            return torch.relu(x)

    elif point is not None:
        merged_fast_point = point

        def fast(x: torch.Tensor, lam: float) -> torch.Tensor:
            return torch.relu(merged_fast_point(x, lam)[0])

    return ClosedFormMatch("nonnegative", "projection onto z >= 0: max(v, 0) (ReLU)", solve, fast)


@register("box")
def _recognize_box(problem: ProxProblem, lam: float | None) -> ClosedFormMatch | None:
    found = _single_set(problem, Box)
    if found is None:
        return None
    box = found[1]
    assert isinstance(box, Box)
    check_compile_weight(problem, lam)

    def solve(call: ProxCall) -> torch.Tensor:
        v, _ = merged_point(problem, call)
        lo, hi = box_bounds(box, call)
        return project_box(v, lo, hi)

    point = fast_merged_point(problem, lam)
    fast: Callable[[torch.Tensor, float], torch.Tensor] | None = None
    if point is not None and not has_merged_terms(problem):
        clamp = constant_box_clamp(box)

        def fast(x: torch.Tensor, lam: float) -> torch.Tensor:
            return clamp(x)

    elif point is not None:
        clamp = constant_box_clamp(box)
        merged_fast_point = point

        def fast(x: torch.Tensor, lam: float) -> torch.Tensor:
            return clamp(merged_fast_point(x, lam)[0])

    return ClosedFormMatch("box", f"projection onto {box!r}: {box_summary(box)}", solve, fast)


def _radius_of(found: Set, call: ProxCall) -> torch.Tensor:
    values = set_values(found, call.values, call.x)
    return values["radius"]


def _constant_radius(found: Set) -> float | None:
    return _constant_scalar(found.data()["radius"])


def _radius_recognizer(
    kind: type,
    name: str,
    summary: str,
    project: Callable[[torch.Tensor, Radius], torch.Tensor],
    gradient: str = "autograd through the formula",
) -> None:
    """Register the recognizer of a set with one scalar datum, its radius."""

    @register(name)
    def recognize(problem: ProxProblem, lam: float | None) -> ClosedFormMatch | None:
        found = _single_set(problem, kind)
        if found is None:
            return None
        target = found[1]
        check_compile_weight(problem, lam)

        def solve(call: ProxCall) -> torch.Tensor:
            v, _ = merged_point(problem, call)
            return project(v, _radius_of(target, call))

        point = fast_merged_point(problem, lam)
        radius = _constant_radius(target)
        fast: Callable[[torch.Tensor, float], torch.Tensor] | None = None
        if point is not None and radius is not None:
            fast_point, fast_radius = point, radius

            def fast(x: torch.Tensor, lam: float) -> torch.Tensor:
                return project(fast_point(x, lam)[0], fast_radius)

        return ClosedFormMatch(name, f"projection onto {target!r}: {summary}", solve, fast, gradient=gradient)


_SIMPLEX_GRADIENT = "custom backward with the exact Jacobian I_S - 1 1^T / |S| on the support S"
_radius_recognizer(
    Simplex,
    "simplex",
    "max(v - tau, 0) with sum = r, by sorting (sparsemax for r = 1)",
    project_simplex,
    _SIMPLEX_GRADIENT,
)
_radius_recognizer(
    L1Ball,
    "l1_ball",
    "sign(v) * simplex projection of |v| when ||v||_1 > r",
    project_l1_ball,
    _SIMPLEX_GRADIENT,
)
_radius_recognizer(L2Ball, "l2_ball", "v * min(1, r / ||v||_2)", project_l2_ball)
_radius_recognizer(LinfBall, "linf_ball", "clamp(v, -r, r)", project_linf_ball)


@register("affine")
def _recognize_affine(problem: ProxProblem, lam: float | None) -> ClosedFormMatch | None:
    found = _single_set(problem, Affine)
    if found is None:
        return None
    affine = found[1]
    assert isinstance(affine, Affine)
    check_compile_weight(problem, lam)
    pseudo_inverses: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}
    constant_matrix = affine.A.value if isinstance(affine.A, Constant) else None

    def cached_pseudo_inverse(like: torch.Tensor) -> torch.Tensor | None:
        if constant_matrix is None:
            return None
        key = (like.dtype, like.device)
        cached = pseudo_inverses.get(key)
        if cached is None:
            # Computed once in float64 and then cast, so float32 layers do not lose accuracy to
            # a float32 pseudo-inverse.
            cached = torch.as_tensor(np.linalg.pinv(constant_matrix), dtype=like.dtype, device=like.device)
            pseudo_inverses[key] = cached
        return cached

    def project_values(v: torch.Tensor, values: dict[str, torch.Tensor]) -> torch.Tensor:
        return project_affine(v, values["A"], values["b"], cached_pseudo_inverse(v))

    def solve(call: ProxCall) -> torch.Tensor:
        v, _ = merged_point(problem, call)
        return project_values(v, set_values(affine, call.values, call.x))

    point = fast_merged_point(problem, lam)
    fast: Callable[[torch.Tensor, float], torch.Tensor] | None = None
    if point is not None:
        fast_point = point

        def fast(x: torch.Tensor, lam: float) -> torch.Tensor:
            v = fast_point(x, lam)[0]
            return project_values(v, set_values(affine, {}, v))

    return ClosedFormMatch("affine", f"projection onto {affine!r}: v - A^+ (A v - b)", solve, fast)
