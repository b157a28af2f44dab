"""The smooth backend: an inner solve in torch for objectives given by differentiable terms.

The backend computes a local minimizer

    P(x) = argmin_z  R(z) + (lam / 2) ||z - x||^2

by minimizing the merged form ``F(z) = R'(z) + (a / 2) ||z||^2 - y^T z`` (see
:mod:`proxopt.compile.analysis`) with batched damped Newton or L-BFGS
(:mod:`.solvers`), starting at ``z = x``. ``R`` may be nonconvex; the result is then a
local minimizer, unique near ``z`` when ``lam I + hess R(z)`` is positive definite there.
Supported terms are the twice-differentiable ones: :func:`~proxopt.smooth` terms,
``sum_squares``, ``quad_form``, ``laplacian_quadratic``, ``logistic``, ``huber``,
``neg_entropy`` and ``binary_neg_entropy`` (whose iterates stay inside their domains),
and linear terms. Nonsmooth atoms and constraints are rejected.

Gradients with respect to ``x``, ``lam`` and the Parameters come from implicit
differentiation or from perturbation (:mod:`.gradients`), chosen per layer with
``smooth_options={"gradient": ...}``. The backward pass is not differentiable itself, so
second derivatives through the layer are not available. Every solve records its outcome per batch item on
the compiled object, as ``last_outcome`` and ``last_backward_outcome``, and the layer
exposes the first as ``ProxLayer.solver_outcome``. A solve that does not converge warns
(:class:`~proxopt.SolverWarning`) or raises (:class:`~proxopt.SolverFailedError`).
All settings are listed in :class:`~proxopt.backends.smooth.options.SmoothOptions`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from proxopt.backends.base import Backend, BackendOptions, CompiledProx, ProxCall, Unsupported, register_backend
from proxopt.backends.smooth.gradients import (
    BackwardOutcome,
    adjoint_gradients,
    implicit_solve,
    perturbation_solve,
    perturbation_step,
)
from proxopt.backends.smooth.objective import (
    Objective,
    hessian_diagonal,
    hessian_vector_product,
    is_separable,
    residual_parameters,
    term_domain,
    unsupported_reasons,
)
from proxopt.backends.smooth.options import NEWTON_MAX_SIZE, SmoothOptions
from proxopt.backends.smooth.solvers import SolverOutcome, minimize
from proxopt.compile.analysis import ProxProblem
from proxopt.dsl.expressions import Parameter
from proxopt.errors import InvalidInputError, SolverFailedError, SolverWarning

__all__ = ["SmoothBackend", "SmoothProx", "SmoothOptions", "SolverOutcome", "BackwardOutcome"]


def _problem_domain(problem: ProxProblem, options: SmoothOptions) -> tuple[float, float]:
    """Intersect the entropy terms' domains with ``options.domain``, or raise Unsupported if empty."""
    lower, upper = -math.inf, math.inf
    sources: list[str] = []
    for term in problem.residual_terms:
        interval = term_domain(term)
        if interval is not None:
            lower, upper = max(lower, interval[0]), min(upper, interval[1])
            sources.append(f"{term.describe()} needs {interval[0]:g} < z < {interval[1]:g}")
    if options.domain is not None:
        low, high = options.domain
        lower = lower if low is None else max(lower, float(low))
        upper = upper if high is None else min(upper, float(high))
        sources.append(f"smooth_options['domain'] = {options.domain!r}")
    if not lower < upper:
        raise Unsupported(
            "the domains of the terms do not intersect, so R is undefined everywhere: " + "; ".join(sources)
        )
    return lower, upper


def _move_inside(z: torch.Tensor, lower: float, upper: float) -> torch.Tensor:
    """Move entries on or outside the open box ``(lower, upper)`` to a margin inside it.

    The margin is 1, or a quarter of the box's width when that is smaller.
    """
    margin = min(1.0, (upper - lower) / 4)
    if lower > -math.inf:
        z = torch.where(z <= lower, lower + margin, z)
    if upper < math.inf:
        z = torch.where(z >= upper, upper - margin, z)
    return z


def _describe_gradient(options: SmoothOptions, separable: bool) -> str:
    if options.gradient == "perturbation":
        return "gradients by perturbation: central differences of two warm-started solves per backward pass"
    solvers = {
        "auto": "division by the Hessian's diagonal"
        if separable
        else f"Cholesky for items of at most {NEWTON_MAX_SIZE} entries, else conjugate gradients",
        "direct": "Cholesky",
        "cg": "conjugate gradients",
    }
    return f"gradients by implicit differentiation: (lam I + H) w = g solved by {solvers[options.linear_solver]}"


class _SmoothProxFunction(torch.autograd.Function):
    """``z* = argmin F`` as an autograd node with inputs ``y``, ``a`` and the Parameters."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        prox: SmoothProx,
        item_shape: tuple[int, ...],
        start: torch.Tensor,
        y: torch.Tensor,
        a: torch.Tensor,
        *parameters: torch.Tensor,
    ) -> torch.Tensor:
        objective = prox.objective(item_shape, y, a, parameters)
        z, outcome = prox.solve(objective, start)
        prox.last_outcome = outcome
        if not outcome.all_converged:
            limit = prox.options.iteration_limit(outcome.method)
            prox.report(
                f"the smooth backend: {outcome.describe_failure()}. The outputs of these items are the "
                f"last iterates. Raise smooth_options['max_iter'] (now {limit}), loosen 'tol', or pick "
                "another 'method'",
                outcome.statuses[outcome.failed_items[0]],
                outcome.failed_items,
            )
        ctx.prox = prox
        ctx.item_shape = item_shape
        ctx.save_for_backward(z, y, a, *parameters)
        return z

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        prox: SmoothProx = ctx.prox
        z, y, a, *parameters = ctx.saved_tensors
        solution = prox.adjoint(ctx.item_shape, z, y, a, parameters, grad_output)
        needs = ctx.needs_input_grad[4:]
        rest = adjoint_gradients(
            lambda a_leaf, parameter_leaves: prox.objective(ctx.item_shape, y, a_leaf, parameter_leaves),
            z,
            solution,
            a,
            parameters,
            needs,
        )
        grad_y = solution if ctx.needs_input_grad[3] else None
        return (None, None, None, grad_y, *rest)


class SmoothProx(CompiledProx):
    """A prox map computed by a batched inner solve; see the module docstring.

    Attributes:
        last_outcome: :class:`SolverOutcome` of the latest forward solve, or None.
        last_backward_outcome: :class:`BackwardOutcome` of the latest backward pass, or None.
    """

    backend = "smooth"

    def __init__(self, problem: ProxProblem, options: SmoothOptions, domain: tuple[float, float]) -> None:
        self.problem = problem
        self.options = options
        self.domain = domain
        self.parameters: list[Parameter] = residual_parameters(problem)
        inferred = is_separable(problem)
        self.separable = inferred if options.separable is None else options.separable
        # A separable R declared by the user is checked at every solution.
        self.check_separable = self.separable and not inferred
        self.last_outcome: SolverOutcome | None = None
        self.last_backward_outcome: BackwardOutcome | None = None
        if options.method == "auto" and not self.separable:
            method = f"damped Newton for items of at most {NEWTON_MAX_SIZE} entries, else L-BFGS"
        elif options.method == "lbfgs":
            method = "L-BFGS"
        else:
            method = "damped Newton" + (" with the diagonal Hessian of a separable R" if self.separable else "")
        tolerance = f"{options.tol:g}" if options.tol is not None else "1e-10 (float64) or 1e-4 (float32)"
        if options.initial is not None:
            start = "smooth_options['initial'](x)"
        elif domain != (-math.inf, math.inf):
            start = "z = x moved inside the domain"
        else:
            start = "z = x"
        notes = [
            f"inner solve by {method}, from {start}, until the gradient's max abs entry is at most {tolerance}",
            _describe_gradient(options, self.separable),
        ]
        if not problem.is_convex:
            notes.append("the problem is nonconvex: the output is a local minimizer reached from z = x")
        if domain != (-math.inf, math.inf):
            notes.append(f"iterates stay inside {domain[0]:g} < z < {domain[1]:g}")
        super().__init__(f"batched inner solve of {problem.describe()}", notes)

    # -- the pieces used by the autograd function -----------------------------------------
    def objective(
        self, item_shape: tuple[int, ...], y: torch.Tensor, a: torch.Tensor, parameters: Sequence[torch.Tensor]
    ) -> Objective:
        values = {id(p): tensor for p, tensor in zip(self.parameters, parameters, strict=True)}
        return Objective(self.problem, item_shape, y, a, values)

    def solve(
        self, objective: Objective, start: torch.Tensor, method: str | None = None
    ) -> tuple[torch.Tensor, SolverOutcome]:
        """Minimize ``objective`` from ``start``; raise InvalidInputError if ``F`` is undefined there."""
        value, gradient = objective.value_and_gradient(start)
        undefined = ~(torch.isfinite(value) & torch.isfinite(gradient).all(-1))
        if bool(undefined.any()):
            items = [int(i) for i in torch.nonzero(undefined).flatten().cpu()]
            raise InvalidInputError(
                f"the smooth backend's objective or its gradient is not finite at the starting point of "
                f"batch items {items[:10]}{' ...' if len(items) > 10 else ''}, so the inner solve cannot "
                "start. Pass smooth_options={'domain': (lower, upper)} with the box on which R is "
                "defined, or {'initial': f} with a function f(x) that returns points where it is."
            )
        size = start.shape[-1]
        method = method or self.options.resolve_method(size, self.separable)
        dtype = start.dtype
        z, outcome = minimize(
            objective,
            start,
            method,
            self.options.tolerance(dtype),
            self.options.iteration_limit(method),
            self.options.history,
            self.domain,
            self.options.max_backtracks,
            self.separable,
        )
        if self.check_separable:
            self._check_diagonal_hessian(objective, z)
        return z, outcome

    def _check_diagonal_hessian(self, objective: Objective, z: torch.Tensor) -> None:
        """Raise InvalidInputError unless ``H v = diag(H) * v`` for a random ``v`` at ``z``.

        For a Hessian with an off-diagonal entry, the two differ for almost every ``v``;
        agreement to ``sqrt(eps)`` relative is accepted as rounding.
        """
        point, gradient = objective.gradient_graph(z)
        generator = torch.Generator().manual_seed(0)
        probe = torch.randn(z.shape, generator=generator, dtype=z.dtype).to(z.device)
        product = hessian_vector_product(point, gradient, probe).detach()
        diagonal = hessian_diagonal(point, gradient).detach() * probe
        mismatch = (product - diagonal).abs().amax(-1)
        scale = torch.maximum(product.abs().amax(-1), diagonal.abs().amax(-1))
        coupled = mismatch > torch.finfo(z.dtype).eps ** 0.5 * scale
        if bool(coupled.any()):
            items = [int(i) for i in torch.nonzero(coupled).flatten().cpu()]
            first = items[0]
            raise InvalidInputError(
                f"smooth_options['separable'] is True, but the Hessian of R is not diagonal at the solution of "
                f"batch items {items[:10]}{' ...' if len(items) > 10 else ''} (item {first}: off-diagonal part "
                f"{float(mismatch[first]):.3g} of {float(scale[first]):.3g}). Remove the option, because R couples "
                "entries."
            )

    def adjoint(
        self,
        item_shape: tuple[int, ...],
        z: torch.Tensor,
        y: torch.Tensor,
        a: torch.Tensor,
        parameters: Sequence[torch.Tensor],
        grad_output: torch.Tensor,
    ) -> torch.Tensor:
        """Return ``w = K^{-1} g`` for the upstream gradient ``g``, and check the solve."""
        objective = self.objective(item_shape, y, a, parameters)
        size = z.shape[-1]
        dtype = z.dtype
        if self.options.gradient == "implicit":
            solver = self.options.resolve_linear_solver(size, self.separable)
            max_iter = self.options.cg_max_iter or 2 * size + 20
            solution, outcome = implicit_solve(
                objective, z, grad_output, solver, self.options.cg_tolerance(dtype), max_iter
            )
        else:
            step = self.options.perturbation_step or perturbation_step(self.options.tolerance(dtype), dtype)

            def solve_shifted(shift: torch.Tensor) -> tuple[torch.Tensor, ...]:
                shifted = self.objective(item_shape, y + shift, a, parameters)
                solved, result = self.solve(shifted, z)
                return solved, result.converged, result.iterations, result.gradient_norm

            point, gradient = objective.gradient_graph(z)
            solution, outcome = perturbation_solve(
                solve_shifted,
                lambda vector: hessian_vector_product(point, gradient, vector).detach(),
                grad_output,
                step,
            )
        self.last_backward_outcome = outcome
        self._check_backward(outcome)
        return solution

    # -- reporting ------------------------------------------------------------------------
    def report(self, message: str, status: str, failed_items: list[int]) -> None:
        """Issue a SolverWarning, or raise SolverFailedError when ``on_failure="raise"``."""
        if self.options.on_failure == "raise":
            raise SolverFailedError(message + ".", status, failed_items)
        warnings.warn(message + ".", SolverWarning, stacklevel=4)

    def _check_backward(self, outcome: BackwardOutcome) -> None:
        indefinite = outcome.not_positive_definite
        if bool(indefinite.any()):
            items = [int(i) for i in torch.nonzero(indefinite).flatten().cpu()]
            first = items[0]
            self.report(
                f"the smooth backend's {outcome.mode} backward found lam I + H not positive definite at the "
                f"solution of batch items {items[:10]}{' ...' if len(items) > 10 else ''} (item {first}: "
                f"curvature {float(outcome.smallest_curvature[first]):.3g}), so the output is not a strict "
                "local minimizer and its gradient is undefined; these items get a zero gradient. Increase "
                "lam so that lam I + H is positive definite near the solution",
                "not positive definite",
                items,
            )
        failed = ~outcome.converged & ~indefinite
        if bool(failed.any()):
            items = [int(i) for i in torch.nonzero(failed).flatten().cpu()]
            first = items[0]
            hint = (
                "Raise smooth_options['cg_max_iter'] or loosen 'cg_tol'"
                if outcome.mode == "cg"
                else "Raise smooth_options['max_iter'] or loosen 'tol'"
            )
            self.report(
                f"the smooth backend's {outcome.mode} backward did not converge on batch items "
                f"{items[:10]}{' ...' if len(items) > 10 else ''} (item {first}: {int(outcome.iterations[first])} "
                f"iterations, residual {float(outcome.residual[first]):.3g}); their gradients are "
                f"approximate. {hint}",
                "not converged",
                items,
            )

    # -- the forward call ------------------------------------------------------------------
    def _starting_point(self, x: torch.Tensor) -> torch.Tensor:
        initial = self.options.initial
        start = x.detach() if initial is None else initial(x.detach())
        if not isinstance(start, torch.Tensor) or start.shape != x.shape:
            shape = tuple(start.shape) if isinstance(start, torch.Tensor) else type(start).__name__
            raise InvalidInputError(
                f"smooth_options['initial'] returned {shape}; expected a tensor of the input's shape {tuple(x.shape)}."
            )
        start = start.detach().to(dtype=x.dtype, device=x.device)
        return _move_inside(start.reshape(x.shape[0], -1), *self.domain)

    def __call__(self, call: ProxCall) -> torch.Tensor:
        x = call.x
        finite = torch.isfinite(x.reshape(x.shape[0], -1)).all(-1)
        if not bool(finite.all()):
            items = [int(i) for i in torch.nonzero(~finite).flatten().cpu()]
            raise InvalidInputError(
                f"the input has non-finite entries (NaN or inf) in batch items {items[:10]}"
                f"{' ...' if len(items) > 10 else ''}; the smooth backend needs finite input. Check the "
                "layers before this one, or mask those items."
            )
        y, a = call.merged(self.problem)
        batch = x.shape[0]
        item_shape = tuple(int(d) for d in x.shape[1:])
        a_tensor = a if isinstance(a, torch.Tensor) else torch.tensor(a, dtype=x.dtype, device=x.device)
        parameters = [call.values[id(p)] for p in self.parameters]
        start = self._starting_point(x)
        z = _SmoothProxFunction.apply(self, item_shape, start, y.reshape(batch, -1), a_tensor, *parameters)
        return z.reshape(x.shape)


class SmoothBackend(Backend):
    name = "smooth"

    def compile(self, problem: ProxProblem, lam: float | None, options: BackendOptions) -> CompiledProx:
        reasons = unsupported_reasons(problem)
        if reasons:
            raise Unsupported(
                "the smooth backend needs twice-differentiable terms and no constraints, but found "
                + "; ".join(reasons)
            )
        settings = SmoothOptions.from_mapping(options.smooth)
        return SmoothProx(problem, settings, _problem_domain(problem, settings))


register_backend(SmoothBackend())
