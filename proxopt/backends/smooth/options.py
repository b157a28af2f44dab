"""Settings of the smooth backend, read from ``ProxLayer(smooth_options={...})``."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch

from proxopt.errors import DeclarationError

__all__ = ["SmoothOptions", "NEWTON_MAX_SIZE", "default_tolerance"]

NEWTON_MAX_SIZE = 64
"""Largest number of entries per item for which ``method="auto"`` uses Newton's method
and ``linear_solver="auto"`` forms the Hessian of a problem that is not separable,
because both build a dense ``d x d`` Hessian per item from ``d`` Hessian-vector products."""

_DEFAULT_TOLERANCES = {torch.float64: 1e-10, torch.float32: 1e-4}


def default_tolerance(dtype: torch.dtype) -> float:
    """Return the default gradient tolerance (max abs of the gradient) for ``dtype``.

    The values leave about two orders of magnitude above the rounding error of a gradient
    whose summands are of order 10: 1e-10 in float64, 1e-4 in float32, 1e-2 otherwise.
    """
    return _DEFAULT_TOLERANCES.get(dtype, 1e-2)


@dataclass(frozen=True)
class SmoothOptions:
    """Settings of the smooth backend.

    Attributes:
        method: ``"newton"`` (damped Newton with per-item Hessians), ``"lbfgs"``, or
            ``"auto"``: Newton when the problem is separable or an item has at most
            :data:`NEWTON_MAX_SIZE` entries, else L-BFGS.
        tol: stop an item when the max abs entry of the objective's gradient is at most
            ``tol``; None picks :func:`default_tolerance` for the input's dtype.
        max_iter: iteration limit per item; None gives 100 for Newton, 1000 for L-BFGS.
        history: number of correction pairs that L-BFGS keeps.
        max_backtracks: step halvings a line search tries before it gives up on an item.
        gradient: ``"implicit"`` (solve ``(lam I + H) w = g``) or ``"perturbation"``
            (central differences of two warm-started solves).
        linear_solver: for the implicit gradient: ``"cg"`` (conjugate gradients with
            Hessian-vector products), ``"direct"`` (dense Hessian and Cholesky), or
            ``"auto"``: the diagonal Hessian when the problem is separable, else direct
            when an item has at most :data:`NEWTON_MAX_SIZE` entries, else cg.
        cg_tol: conjugate gradients stop when ``||r|| <= cg_tol * ||g||``; None gives
            1e-12 in float64 and 1e-6 otherwise.
        cg_max_iter: conjugate-gradient iteration limit; None gives ``2 d + 20``.
        perturbation_step: the step ``h`` of the perturbation gradient, in units of the
            input; None derives it from ``tol`` (see :mod:`.gradients`).
        on_failure: ``"warn"`` (issue a :class:`~proxopt.SolverWarning`) or ``"raise"``
            (raise :class:`~proxopt.SolverFailedError`) when a solve does not converge.
        domain: ``(lower, upper)`` bounds, each a float or None, on every entry of the
            variable: the solver starts inside and never steps outside the open box.
        initial: a function mapping the input ``x`` of shape ``(B, *shape)`` to a starting
            point of the same shape; None starts at ``x`` moved inside ``domain``.
        separable: whether ``R`` is a sum of scalar functions of single entries, so that
            its Hessian is diagonal and one Hessian-vector product gives all of it. Then
            Newton's method costs one product per iteration at any size, and the implicit
            gradient is a division. None infers it from the terms (never for ``smooth()``
            terms, whose structure is opaque); True declares it, and the backend checks
            the claim at each solution with a random Hessian-vector product.
    """

    method: str = "auto"
    tol: float | None = None
    max_iter: int | None = None
    history: int = 10
    max_backtracks: int = 60
    gradient: str = "implicit"
    linear_solver: str = "auto"
    cg_tol: float | None = None
    cg_max_iter: int | None = None
    perturbation_step: float | None = None
    on_failure: str = "warn"
    domain: tuple[float | None, float | None] | None = None
    initial: Callable[[torch.Tensor], torch.Tensor] | None = None
    separable: bool | None = None

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any]) -> SmoothOptions:
        """Validate ``smooth_options`` and return them as :class:`SmoothOptions`.

        Raises:
            DeclarationError: an unknown key or an invalid value.
        """
        known = [item.name for item in fields(cls)]
        unknown = [key for key in settings if key not in known]
        if unknown:
            raise DeclarationError(
                f"unknown smooth_options {', '.join(map(repr, unknown))}; expected any of {', '.join(known)}."
            )
        options = cls(**dict(settings))
        options._validate()
        return options

    def _validate(self) -> None:
        choices = {
            "method": ("auto", "lbfgs", "newton"),
            "gradient": ("implicit", "perturbation"),
            "linear_solver": ("auto", "cg", "direct"),
            "on_failure": ("warn", "raise"),
        }
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise DeclarationError(
                    f"smooth_options[{name!r}] is {value!r}; expected one of {', '.join(map(repr, allowed))}."
                )
        for name in ("tol", "cg_tol", "perturbation_step"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise DeclarationError(f"smooth_options[{name!r}] must be a positive number or None, got {value!r}.")
        for name, minimum in (("max_iter", 1), ("cg_max_iter", 1), ("history", 1), ("max_backtracks", 1)):
            value = getattr(self, name)
            if value is None and name in ("max_iter", "cg_max_iter"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise DeclarationError(f"smooth_options[{name!r}] must be an int >= {minimum}, got {value!r}.")
        if self.separable not in (None, True, False):
            raise DeclarationError(f"smooth_options['separable'] must be True, False or None, got {self.separable!r}.")
        if self.initial is not None and not callable(self.initial):
            raise DeclarationError(f"smooth_options['initial'] must be a callable x -> z0, got {self.initial!r}.")
        if self.domain is not None:
            self._validate_domain(self.domain)

    @staticmethod
    def _validate_domain(domain: Any) -> None:
        message = f"smooth_options['domain'] must be a pair (lower, upper) of floats or None, got {domain!r}."
        if not isinstance(domain, (tuple, list)) or len(domain) != 2:
            raise DeclarationError(message)
        lower, upper = domain
        for bound in (lower, upper):
            if bound is not None and (isinstance(bound, bool) or not isinstance(bound, (int, float))):
                raise DeclarationError(message)
        low = -math.inf if lower is None else float(lower)
        high = math.inf if upper is None else float(upper)
        if not low < high:
            raise DeclarationError(f"smooth_options['domain'] = {domain!r} is empty; expected lower < upper.")

    def tolerance(self, dtype: torch.dtype) -> float:
        """Return the gradient tolerance for ``dtype``."""
        return float(self.tol) if self.tol is not None else default_tolerance(dtype)

    def cg_tolerance(self, dtype: torch.dtype) -> float:
        """Return the relative residual tolerance of conjugate gradients for ``dtype``."""
        if self.cg_tol is not None:
            return float(self.cg_tol)
        return 1e-12 if dtype == torch.float64 else 1e-6

    def iteration_limit(self, method: str) -> int:
        """Return the iteration limit of ``method`` (``"newton"`` or ``"lbfgs"``)."""
        if self.max_iter is not None:
            return self.max_iter
        return 100 if method == "newton" else 1000

    def resolve_method(self, size: int, separable: bool) -> str:
        """Return ``"newton"`` or ``"lbfgs"`` for items of ``size`` entries."""
        if self.method != "auto":
            return self.method
        return "newton" if separable or size <= NEWTON_MAX_SIZE else "lbfgs"

    def resolve_linear_solver(self, size: int, separable: bool) -> str:
        """Return ``"diagonal"``, ``"direct"`` or ``"cg"`` for items of ``size`` entries."""
        if self.linear_solver != "auto":
            return self.linear_solver
        if separable:
            return "diagonal"
        return "direct" if size <= NEWTON_MAX_SIZE else "cg"
