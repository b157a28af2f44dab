"""The registry of exact prox maps and projections used by the closed_form backend.

Each entry is a recognizer: a function that looks at an analysed problem in the merged
form ``R'(z) + (a/2)||z||^2 - y^T z`` over ``C``. It returns a :class:`ClosedFormMatch`
when it has a formula for the exact minimizer, else None. The minimizer of the merged form is the
prox map of ``R' / a`` over ``C`` at ``v = y / a``, so most entries are the textbook
formulas applied to ``v`` with threshold ``1 / a``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from proxopt.backends.base import ProxCall
from proxopt.compile.analysis import ProxProblem

__all__ = ["ClosedFormMatch", "Recognizer", "register", "recognizers"]


@dataclass
class ClosedFormMatch:
    """A recognized closed form.

    Attributes:
        name: registry name, e.g. ``"centered_sphere"``.
        summary: the formula computed, for ``explain``.
        solve: computes the prox map for a validated call.
        fast: optional function ``fast(x, lam)`` used when ``lam`` is a float and the
            layer has no Parameters; it must give the same result as ``solve``.
        propagates_nan: whether NaN input gives NaN output (like the torch op it replaces)
            rather than an error.
        gradient: how the exact gradient is computed, for ``explain``.
    """

    name: str
    summary: str
    solve: Callable[[ProxCall], torch.Tensor]
    fast: Callable[[torch.Tensor, float], torch.Tensor] | None = None
    propagates_nan: bool = True
    gradient: str = "autograd through the formula"


Recognizer = Callable[[ProxProblem, "float | None"], "ClosedFormMatch | None"]

_RECOGNIZERS: list[tuple[str, Recognizer]] = []


def register(name: str) -> Callable[[Recognizer], Recognizer]:
    """Add a recognizer under ``name``; recognizers are tried in registration order."""

    def decorator(recognizer: Recognizer) -> Recognizer:
        _RECOGNIZERS.append((name, recognizer))
        return recognizer

    return decorator


def recognizers() -> list[tuple[str, Recognizer]]:
    return list(_RECOGNIZERS)
