"""The closed_form backend: exact prox maps and projections with exact gradients.

The backend tries each registered recognizer (see :mod:`.registry`) in turn on the
analysed problem, and compiles the first that has its exact minimizer. Gradients come
from torch's autograd through the formula, or from custom backward functions where the
formula involves a sort or a root.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from proxopt.backends.base import Backend, BackendOptions, CompiledProx, ProxCall, Unsupported, register_backend
from proxopt.backends.closed_form import (  # noqa: F401 - importing registers the recognizers
    entropic,
    projections,
    proxmaps,
    spheres,
    tv1d,
)
from proxopt.backends.closed_form.registry import ClosedFormMatch, recognizers
from proxopt.compile.analysis import ProxProblem

__all__ = ["ClosedFormBackend", "ClosedFormProx"]


class ClosedFormProx(CompiledProx):
    """A prox map evaluated by an exact formula."""

    backend = "closed_form"

    def __init__(self, match: ClosedFormMatch) -> None:
        notes = [f"exact formula; exact gradients ({match.gradient})"]
        if match.propagates_nan:
            notes.append("no input check: NaN or inf input propagates as in the torch op")
        super().__init__(f"{match.name}: {match.summary}", notes)
        self.match = match

    def __call__(self, call: ProxCall) -> torch.Tensor:
        return self.match.solve(call)

    def fast_path(self) -> Callable[[torch.Tensor, float], torch.Tensor] | None:
        return self.match.fast


def _describe_unmatched(problem: ProxProblem) -> str:
    terms = ", ".join(term.describe() for term in problem.residual_terms) or "none"
    sets = ", ".join(repr(c) for c in problem.constraints) or "none"
    return f"no closed form in the catalog matches the terms [{terms}] with constraints [{sets}]"


class ClosedFormBackend(Backend):
    name = "closed_form"

    def compile(self, problem: ProxProblem, lam: float | None, options: BackendOptions) -> CompiledProx:
        for _, recognize in recognizers():
            match = recognize(problem, lam)
            if match is not None:
                return ClosedFormProx(match)
        raise Unsupported(_describe_unmatched(problem))


register_backend(ClosedFormBackend())
