"""The backend protocol and the plan that picks one backend per layer.

A backend turns an analysed :class:`~proxopt.compile.analysis.ProxProblem` into a
:class:`CompiledProx`, a callable computing the prox map on a validated, flattened batch
(:class:`ProxCall`), or raises :class:`Unsupported` saying why it cannot. The plan tries
the backends from fastest to most general and keeps every reason, so that ``explain``
can report why the faster routes did not apply.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from proxopt.compile.analysis import ProxProblem
from proxopt.compile.evaluate import Values

__all__ = [
    "BACKEND_ORDER",
    "BackendOptions",
    "CompiledProx",
    "ProxCall",
    "Unsupported",
    "register_backend",
    "get_backend",
]

BACKEND_ORDER = ("closed_form", "quadratic", "cvxpy", "smooth")
"""Backends in the order the automatic plan tries them."""


class Unsupported(Exception):
    """Raised by a backend that cannot solve a problem. The message gives the reason.

    ``not_dcp`` marks a cvxpy rejection caused by DCP rules, which becomes
    :class:`~proxopt.errors.NotDCPError` when the cvxpy backend was forced.
    """

    def __init__(self, reason: str, *, not_dcp: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.not_dcp = not_dcp


@dataclass
class BackendOptions:
    """Settings that reach the backends from :class:`~proxopt.ProxLayer`.

    Attributes:
        solver_args: extra keyword arguments for diffcp (cvxpy backend), merged over the
            defaults documented in :mod:`proxopt.backends.cvxpy_backend`.
        allow_smooth: allow the automatic plan to fall back to the smooth backend.
        smooth: settings of the smooth backend (see :mod:`proxopt.backends.smooth`).
    """

    solver_args: dict[str, Any] = field(default_factory=dict)
    allow_smooth: bool = False
    smooth: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProxCall:
    """One validated forward call, flattened to a single batch dimension.

    Attributes:
        x: input of shape ``(B, *shape)``, where ``shape`` is the variable's shape with
            :data:`~proxopt.BATCH` resolved.
        lam: a float, or a tensor of shape ``()`` or ``(B,)``.
        values: parameter tensors keyed by ``id(parameter)``, shared or with leading ``B``.
        tensors: the same tensors keyed by parameter name.
        batch_size: the mini-batch size ``m`` for a per-batch variable, else None.
        lead_ndim: 1 when some parameter tensor has the leading batch dim ``B``, else 0.
    """

    x: torch.Tensor
    lam: torch.Tensor | float
    values: Values
    tensors: dict[str, torch.Tensor]
    batch_size: int | None
    lead_ndim: int = 0
    _merged: tuple[torch.Tensor, torch.Tensor | float] | None = None

    def merged(self, problem: ProxProblem) -> tuple[torch.Tensor, torch.Tensor | float]:
        """Return ``(y, a)`` of the merged objective, computed once per call."""
        if self._merged is None:
            self._merged = problem.merged_linear_quadratic(self.x, self.lam, self.values, self.lead_ndim)
        return self._merged


class CompiledProx(ABC):
    """A prox map compiled by one backend.

    Attributes:
        backend: name of the backend that produced it.
        summary: one line saying what is computed, for ``explain``.
        notes: further facts for ``explain`` (device moves, solver settings).
    """

    backend: str = ""

    def __init__(self, summary: str, notes: list[str] | None = None) -> None:
        self.summary = summary
        self.notes = list(notes or [])

    @abstractmethod
    def __call__(self, call: ProxCall) -> torch.Tensor:
        """Return the prox map of ``call.x``, of the same shape, dtype and device."""

    def fast_path(self) -> Callable[[torch.Tensor, float], torch.Tensor] | None:
        """Return a function ``f(x, lam)`` for calls with no Parameters and a float lam.

        Backends return None when they have no such shortcut; the layer then builds a
        :class:`ProxCall` for every call.
        """
        return None


class Backend(ABC):
    """A strategy that compiles prox problems it can solve exactly."""

    name: str = ""

    @abstractmethod
    def compile(self, problem: ProxProblem, lam: float | None, options: BackendOptions) -> CompiledProx:
        """Compile ``problem`` or raise :class:`Unsupported`.

        ``lam`` is the layer's weight when it is a fixed float, else None.
        """


_REGISTRY: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    """Add ``backend`` to the registry under its name (replacing an older entry)."""
    _REGISTRY[backend.name] = backend
    return backend


def get_backend(name: str) -> Backend | None:
    return _REGISTRY.get(name)
