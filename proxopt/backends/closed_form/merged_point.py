"""The point ``v = y / a`` at which closed-form entries evaluate their prox maps.

The merged objective ``R'(z) + (a/2)||z||^2 - y^T z`` over ``C`` has the minimizer
``prox_{R'/a, C}(v)`` with ``v = y / a``. When ``R`` has no merged terms (no linear term
and no ``c ||s z + t||^2``), ``y = lam x`` and ``a = lam``, so ``v = x`` exactly. The
helpers below then return ``x`` itself, so projections are free of the rounding of
``(lam x) / lam`` and do not depend on ``lam``.

Scalar data that vary per sample (``a``, a coefficient, a radius) arrive with shape
``(B,)``; :func:`per_row` turns them into ``(B, 1)`` columns that broadcast against rows.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from proxopt.backends.base import ProxCall, Unsupported
from proxopt.compile.analysis import ProxProblem
from proxopt.errors import InvalidInputError

__all__ = [
    "FastPoint",
    "check_compile_weight",
    "fast_merged_point",
    "has_merged_terms",
    "merged_point",
    "per_row",
]

FastPoint = Callable[[torch.Tensor, float], tuple[torch.Tensor, float]]
"""``(x, lam) -> (v, a)`` for a layer with no Parameters and a float ``lam``."""


def per_row(value: torch.Tensor | float) -> torch.Tensor | float:
    """Return a scalar datum as a float, a 0-dim tensor, or a ``(B, 1)`` column for ``(B,)``."""
    if isinstance(value, torch.Tensor) and value.ndim:
        return value.unsqueeze(-1)
    return value


def has_merged_terms(problem: ProxProblem) -> bool:
    """Return whether ``R`` has linear or identity-quadratic terms merged into ``y`` and ``a``."""
    return bool(problem.terms_of_kind("linear", "identity_quadratic"))


def _weight_may_be_nonpositive(problem: ProxProblem) -> bool:
    # a = lam + sum 2 c s^2 over identity quadratics; lam > 0 is validated by the layer.
    return any(term.coefficient.sign <= 0 for term in problem.terms_of_kind("identity_quadratic"))


def _raise_nonpositive_weight(value: float) -> None:
    raise InvalidInputError(
        f"the merged quadratic weight a = lam + (weights of the sum_squares terms) is {value:.4g}, "
        "but the closed form needs a > 0, because otherwise the objective is unbounded below or "
        "its minimizer is not unique. Increase lam or the sum_squares weights."
    )


def check_compile_weight(problem: ProxProblem, lam: float | None) -> None:
    """Raise :class:`Unsupported` when a float ``lam`` gives a merged weight ``a <= 0``."""
    if lam is None:
        return
    weight = problem.identity_weight(lam)
    if weight is not None and weight <= 0:
        raise Unsupported(
            f"at lam = {lam:g} the merged quadratic weight a = {weight:g} is not positive, so the "
            "prox objective has no unique minimizer for the closed-form formulas"
        )


def merged_point(problem: ProxProblem, call: ProxCall) -> tuple[torch.Tensor, torch.Tensor | float]:
    """Return ``(v, a)`` for a call: ``v = y / a`` of shape ``(B, n)`` and ``a`` as given.

    Raises:
        InvalidInputError: ``a <= 0`` for some sample (possible only when a sum_squares
            term has a negative or unknown-sign coefficient).
    """
    if not has_merged_terms(problem):
        return call.x, call.lam
    y, a = call.merged(problem)
    if _weight_may_be_nonpositive(problem):
        if isinstance(a, torch.Tensor):
            if bool((a <= 0).any()):
                _raise_nonpositive_weight(float(a.detach().min()))
        elif a <= 0:
            _raise_nonpositive_weight(a)
    return y / per_row(a), a


def fast_merged_point(problem: ProxProblem, lam: float | None) -> FastPoint | None:
    """Return ``(x, lam) -> (v, a)`` for a layer with no Parameters and a float ``lam``.

    ``x`` may have any leading dims. With no merged terms the function returns
    ``(x, lam)``. Otherwise it uses ``a = lam + a0`` and ``y = lam x + y0``, where the
    constants ``a0`` and ``y0`` are the merged terms at ``x = 0``, computed once per dtype
    and device.
    Returns None when the problem has Parameters, or when it has merged terms and the
    layer's ``lam`` is a tensor (``lam is None``), because ``v`` then depends on data that
    the fast path does not receive.
    """
    if problem.parameters:
        return None
    if not has_merged_terms(problem):

        def identity(x: torch.Tensor, lam: float) -> tuple[torch.Tensor, float]:
            return x, lam

        return identity
    if lam is None:
        return None

    weight_offset = problem.identity_weight(0.0)
    assert weight_offset is not None, "a problem without Parameters has constant coefficients"
    offsets: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    def shifted(x: torch.Tensor, lam: float) -> tuple[torch.Tensor, float]:
        a = lam + weight_offset
        if a <= 0:
            _raise_nonpositive_weight(a)
        key = (x.dtype, x.device)
        offset = offsets.get(key)
        if offset is None:
            zero = x.new_zeros(1, x.shape[-1])
            with torch.no_grad():
                offset = problem.merged_linear_quadratic(zero, 1.0, {})[0][0]
            offsets[key] = offset
        return (lam * x + offset) / a, a

    return shifted
