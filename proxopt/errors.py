"""Exceptions and warnings raised by proxopt.

Every error that proxopt raises on purpose derives from :class:`ProxError`, so a caller can
catch the whole family with one ``except`` clause. Each subclass also derives from the
built-in exception a Python programmer would expect (``ValueError`` for bad values,
``RuntimeError`` for a failed solve), so existing handlers keep working.

Messages follow one pattern: what was wrong, what was expected, and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "ProxError",
    "DeclarationError",
    "ShapeError",
    "InvalidInputError",
    "EmptySetError",
    "NotDCPError",
    "NoRouteError",
    "SolverFailedError",
    "ProxWarning",
    "SolverWarning",
]


class ProxError(Exception):
    """Base class of every error raised by proxopt."""


class DeclarationError(ProxError, ValueError):
    """A prox problem was declared in a way the DSL does not accept."""


class ShapeError(ProxError, ValueError):
    """Shapes do not match, when an expression is built or when a layer is called."""


class InvalidInputError(ProxError, ValueError):
    """A runtime value is invalid: non-finite input, ``lam <= 0``, wrong dtype or device."""


class EmptySetError(ProxError, ValueError):
    """The constraint set is empty, so the prox map is undefined."""


class NotDCPError(ProxError, ValueError):
    """A problem forced onto the cvxpy backend is not DCP (or not DPP)."""


class NoRouteError(ProxError, ValueError):
    """No backend can solve the declared problem, or a forced backend cannot."""


class SolverFailedError(ProxError, RuntimeError):
    """An inner solver failed on some items of a batch.

    Attributes:
        status: the solver status of the first failed item, as the solver reports it.
        failed_items: indices (into the flattened batch) of the items that failed.
    """

    def __init__(self, message: str, status: str, failed_items: list[int]) -> None:
        super().__init__(message)
        self.status = status
        self.failed_items = failed_items


class ProxWarning(UserWarning):
    """Base class of the warnings issued by proxopt; filter it to silence them all."""


class SolverWarning(ProxWarning):
    """An inner solver did not converge, or two backends disagree."""
