"""Choosing a backend for a prox problem and recording why.

The automatic plan tries :data:`~proxopt.backends.base.BACKEND_ORDER`: ``closed_form``,
then ``quadratic``, then ``cvxpy``, then ``smooth`` (only when the layer allows it,
because an inner iterative solve of a nonconvex problem finds a local minimizer).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from proxopt.backends.base import BACKEND_ORDER, BackendOptions, CompiledProx, Unsupported, get_backend
from proxopt.compile.analysis import ProxProblem
from proxopt.errors import DeclarationError, NoRouteError, NotDCPError

__all__ = ["Plan", "make_plan"]


@dataclass
class Plan:
    """The backend chosen for a layer and the reasons the others were passed over.

    Attributes:
        compiled: the compiled prox map.
        requested: the ``backend`` argument, ``"auto"`` or a forced name.
        rejected: ``(backend name, reason)`` for every backend tried before the chosen one.
    """

    compiled: CompiledProx
    requested: str
    rejected: list[tuple[str, str]] = field(default_factory=list)

    @property
    def backend(self) -> str:
        return self.compiled.backend


def _available() -> list[str]:
    return [name for name in BACKEND_ORDER if get_backend(name) is not None]


def make_plan(problem: ProxProblem, backend: str, lam: float | None, options: BackendOptions) -> Plan:
    """Compile ``problem`` with the requested backend, or the first that applies.

    Raises:
        NotDCPError: ``backend="cvxpy"`` on a problem that is not DCP.
        NoRouteError: a forced backend cannot solve the problem, or none can.
    """
    available = _available()
    if backend != "auto" and backend not in BACKEND_ORDER:
        raise DeclarationError(f"unknown backend {backend!r}; expected 'auto' or one of {', '.join(BACKEND_ORDER)}.")
    if backend != "auto":
        implementation = get_backend(backend)
        if implementation is None:
            raise NoRouteError(
                f"the {backend!r} backend is not available in this installation; available: {', '.join(available)}."
            )
        try:
            return Plan(implementation.compile(problem, lam, options), backend)
        except Unsupported as rejection:
            if backend == "cvxpy" and rejection.not_dcp:
                raise NotDCPError(
                    f"the problem is not DCP, so the cvxpy backend cannot solve it: "
                    f"{rejection.reason}. Rewrite the offending term, or use backend='auto' "
                    "to let proxopt look for an exact closed form or the smooth backend."
                ) from None
            raise NoRouteError(
                f"the {backend!r} backend cannot solve {problem.describe()}: {rejection.reason}. "
                "Use backend='auto' to pick a backend that can."
            ) from None

    rejected: list[tuple[str, str]] = []
    for name in available:
        if name == "smooth" and not options.allow_smooth:
            rejected.append((name, "not allowed: pass allow_smooth=True or backend='smooth' to use it"))
            continue
        implementation = get_backend(name)
        assert implementation is not None
        try:
            compiled = implementation.compile(problem, lam, options)
        except Unsupported as rejection:
            rejected.append((name, rejection.reason))
            continue
        return Plan(compiled, "auto", rejected)

    reasons = "\n".join(f"  - {name}: {reason}" for name, reason in rejected)
    if not problem.is_convex:
        issues = "; ".join(problem.convexity_issues)
        raise NoRouteError(
            f"the problem is nonconvex ({issues}) and no exact route solves it:\n{reasons}\n"
            "The smooth backend (allow_smooth=True or backend='smooth') takes a problem "
            "without constraints whose terms are all twice differentiable (smooth(), "
            "sum_squares, quad_form, laplacian_quadratic, logistic, huber, neg_entropy, "
            "binary_neg_entropy, linear terms); it returns a local minimizer."
        )
    raise NoRouteError(f"no backend can solve {problem.describe()}:\n{reasons}")
