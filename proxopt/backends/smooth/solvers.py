"""Batched inner solvers of the smooth backend: damped Newton and L-BFGS, in torch.

Both minimize the per-item objective ``F`` of :mod:`.objective` for a whole batch at once.
Every item has its own step length, memory and status, and an item stops when it
converges, fails or runs out of iterations while the others go on. All state stays on
the input's device, and each iteration synchronizes with it once, to test whether any
item is still running.

The line search is backtracking (step halving) from step 1 until the Armijo condition

    F(z + t p) <= F(z) + c1 t grad F(z)^T p + 10 eps (|F(z)| + 1)

is met, ``F`` and its gradient are finite at the trial point, and the point is inside the
domain box. So every iterate stays where ``F`` is defined (for example ``z > 0`` for the
dilogarithm of softplus). The last term forgives rounding error near a minimizer, where
``F`` changes by less than its own precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from proxopt.backends.smooth.objective import Objective, hessian_diagonal, hessian_matrix

__all__ = ["SolverOutcome", "minimize", "STATUS_NAMES"]

RUNNING, CONVERGED, MAX_ITER, LINE_SEARCH_FAILED = 0, 1, 2, 3
STATUS_NAMES = {
    RUNNING: "running",
    CONVERGED: "converged",
    MAX_ITER: "iteration limit reached",
    LINE_SEARCH_FAILED: "line search failed",
}

ARMIJO_C1 = 1e-4


@dataclass(frozen=True)
class SolverOutcome:
    """The result of one batched inner solve; tensors have one entry per batch item.

    Attributes:
        method: ``"newton"`` or ``"lbfgs"``.
        tol: the gradient tolerance (max abs entry).
        converged: bool tensor, True where the gradient reached ``tol``.
        iterations: int64 tensor, the iterations each item ran.
        gradient_norm: the max abs entry of the final gradient of each item.
        status: int8 tensor of codes, named by :data:`STATUS_NAMES`.
    """

    method: str
    tol: float
    converged: torch.Tensor
    iterations: torch.Tensor
    gradient_norm: torch.Tensor
    status: torch.Tensor

    @property
    def all_converged(self) -> bool:
        return bool(self.converged.all())

    @property
    def statuses(self) -> list[str]:
        """The status of each item in words."""
        return [STATUS_NAMES[int(code)] for code in self.status.cpu()]

    @property
    def failed_items(self) -> list[int]:
        return [int(i) for i in torch.nonzero(~self.converged).flatten().cpu()]

    def describe_failure(self) -> str:
        """Return a sentence with the count, status, iterations and residual of the failures."""
        failed = self.failed_items
        first = failed[0]
        listed = ", ".join(map(str, failed[:10])) + (" ..." if len(failed) > 10 else "")
        return (
            f"the {self.method} solver did not converge on {len(failed)} of {self.converged.numel()} "
            f"batch items ({listed}). Item {first}: status {STATUS_NAMES[int(self.status[first])]!r} after "
            f"{int(self.iterations[first])} iterations, gradient norm (max abs) "
            f"{float(self.gradient_norm[first]):.3g} > tol {self.tol:.3g}"
        )


def _inside(z: torch.Tensor, lower: float, upper: float) -> torch.Tensor:
    inside = torch.ones(z.shape[0], dtype=torch.bool, device=z.device)
    if lower > -float("inf"):
        inside &= (z > lower).all(-1)
    if upper < float("inf"):
        inside &= (z < upper).all(-1)
    return inside


def _line_search(
    objective: Objective,
    z: torch.Tensor,
    value: torch.Tensor,
    gradient: torch.Tensor,
    direction: torch.Tensor,
    pending: torch.Tensor,
    domain: tuple[float, float],
    max_backtracks: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backtrack from step 1 along ``direction`` for the ``pending`` items (module docstring).

    Returns the new point, value and gradient (unchanged for items that did not move) and
    a mask of the items that found a step.
    """
    slope = (gradient * direction).sum(-1)
    slack = 10 * torch.finfo(z.dtype).eps * (value.abs() + 1)
    step = torch.ones_like(value)
    accepted = torch.zeros_like(pending)
    todo = pending.clone()
    new_z, new_value, new_gradient = z.clone(), value.clone(), gradient.clone()
    for _ in range(max_backtracks):
        if not bool(todo.any()):
            break
        trial = torch.where(todo.unsqueeze(-1), z + step.unsqueeze(-1) * direction, z)
        trial_value, trial_gradient = objective.value_and_gradient(trial)
        finite = torch.isfinite(trial_value) & torch.isfinite(trial_gradient).all(-1) & _inside(trial, *domain)
        ok = todo & finite & (trial_value <= value + ARMIJO_C1 * step * slope + slack)
        new_z = torch.where(ok.unsqueeze(-1), trial, new_z)
        new_value = torch.where(ok, trial_value, new_value)
        new_gradient = torch.where(ok.unsqueeze(-1), trial_gradient, new_gradient)
        accepted |= ok
        todo &= ~ok
        step = torch.where(todo, 0.5 * step, step)
    return new_z, new_value, new_gradient, accepted


def _newton_direction(hessian: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """Return ``-(H + mu I)^{-1} g`` with the smallest ``mu`` in a x10 ladder that makes it definite.

    ``mu = 0`` when ``H`` is positive definite, which gives the plain Newton step. For an
    indefinite ``H`` (a nonconvex ``R`` far from a minimizer) the shift gives a descent direction.
    Items whose Hessian is not finite get the steepest-descent direction ``-g``.
    """
    size = hessian.shape[-1]
    identity = torch.eye(size, dtype=hessian.dtype, device=hessian.device)
    scale = hessian.diagonal(dim1=-2, dim2=-1).abs().amax(-1).clamp_min(1.0)
    first_shift = torch.finfo(hessian.dtype).eps ** 0.5 * scale
    shift = torch.zeros_like(scale)
    factor, info = torch.linalg.cholesky_ex(hessian)
    for _ in range(40):
        failed = info != 0
        if not bool(failed.any()):
            break
        shift = torch.where(failed, torch.where(shift == 0, first_shift, 10 * shift), shift)
        factor, info = torch.linalg.cholesky_ex(hessian + shift[:, None, None] * identity)
    usable = info == 0
    safe_factor = torch.where(usable[:, None, None], factor, identity)
    direction = -torch.cholesky_solve(gradient.unsqueeze(-1), safe_factor).squeeze(-1)
    return torch.where(usable.unsqueeze(-1), direction, -gradient)


def _diagonal_newton_direction(diagonal: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """Return ``-g_i / h_i`` per entry, for a separable ``F`` with Hessian diagonal ``h``.

    Entries with ``h_i <= sqrt(eps)`` (nonconvex or flat there) divide by ``|h_i| + 1``
    instead, and entries with a non-finite ``h_i`` by 1, which keeps a descent direction.
    """
    floor = torch.finfo(diagonal.dtype).eps ** 0.5
    denominator = torch.where(diagonal > floor, diagonal, diagonal.abs() + 1.0)
    denominator = torch.where(torch.isfinite(diagonal), denominator, 1.0)
    return -gradient / denominator


def _check_convergence(
    status: torch.Tensor, gradient: torch.Tensor, tol: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    norm = gradient.abs().amax(-1)
    status = torch.where((status == RUNNING) & (norm <= tol), torch.full_like(status, CONVERGED), status)
    return status, norm, status == RUNNING


def _newton(
    objective: Objective,
    z: torch.Tensor,
    tol: float,
    max_iter: int,
    domain: tuple[float, float],
    backtracks: int,
    separable: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    value, gradient = objective.value_and_gradient(z)
    status = torch.zeros(z.shape[0], dtype=torch.int8, device=z.device)
    iterations = torch.zeros(z.shape[0], dtype=torch.int64, device=z.device)
    for iteration in range(max_iter + 1):
        status, norm, running = _check_convergence(status, gradient, tol)
        if not bool(running.any()):
            break
        if iteration == max_iter:
            status = torch.where(running, torch.full_like(status, MAX_ITER), status)
            break
        point, graph = objective.gradient_graph(z)
        if separable:
            direction = _diagonal_newton_direction(hessian_diagonal(point, graph), gradient)
        else:
            direction = _newton_direction(hessian_matrix(point, graph), gradient)
        z, value, gradient, moved = _line_search(objective, z, value, gradient, direction, running, domain, backtracks)
        iterations += running.long()
        status = torch.where(running & ~moved, torch.full_like(status, LINE_SEARCH_FAILED), status)
    return z, status, iterations, norm


def _two_loop(
    gradient: torch.Tensor,
    steps: torch.Tensor,
    changes: torch.Tensor,
    inverse_curvature: torch.Tensor,
    scale: torch.Tensor,
    newest: int,
) -> torch.Tensor:
    """Return ``-H_k grad`` by the L-BFGS two-loop recursion over the ring buffer.

    ``steps[i]`` and ``changes[i]`` are the pairs ``s = z_{k+1} - z_k`` and
    ``y = g_{k+1} - g_k``. ``inverse_curvature[i]`` is ``1 / s^T y``, or 0 for an empty or
    rejected slot, so that the slot drops out of both loops.
    """
    memory = steps.shape[0]
    order = [(newest - j) % memory for j in range(memory)]
    q = gradient.clone()
    alphas = {}
    for i in order:
        alphas[i] = inverse_curvature[i] * (steps[i] * q).sum(-1)
        q = q - alphas[i].unsqueeze(-1) * changes[i]
    r = scale.unsqueeze(-1) * q
    for i in reversed(order):
        beta = inverse_curvature[i] * (changes[i] * r).sum(-1)
        r = r + (alphas[i] - beta).unsqueeze(-1) * steps[i]
    return -r


def _lbfgs(
    objective: Objective,
    z: torch.Tensor,
    tol: float,
    max_iter: int,
    history: int,
    domain: tuple[float, float],
    backtracks: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    batch, size = z.shape
    value, gradient = objective.value_and_gradient(z)
    status = torch.zeros(batch, dtype=torch.int8, device=z.device)
    iterations = torch.zeros(batch, dtype=torch.int64, device=z.device)
    steps = z.new_zeros(history, batch, size)
    changes = z.new_zeros(history, batch, size)
    inverse_curvature = z.new_zeros(history, batch)
    scale = z.new_ones(batch)
    has_pairs = torch.zeros(batch, dtype=torch.bool, device=z.device)
    head = 0
    eps = torch.finfo(z.dtype).eps
    for iteration in range(max_iter + 1):
        status, norm, running = _check_convergence(status, gradient, tol)
        if not bool(running.any()):
            break
        if iteration == max_iter:
            status = torch.where(running, torch.full_like(status, MAX_ITER), status)
            break

        # Without curvature pairs, a steepest-descent step of max length 1 per entry.
        first_scale = 1.0 / norm.clamp_min(1.0)
        initial_scale = torch.where(has_pairs, scale, first_scale)
        direction = _two_loop(gradient, steps, changes, inverse_curvature, initial_scale, head - 1)
        descent = (gradient * direction).sum(-1) < 0
        direction = torch.where(descent.unsqueeze(-1), direction, -first_scale.unsqueeze(-1) * gradient)
        had_pairs = has_pairs & descent

        new_z, new_value, new_gradient, moved = _line_search(
            objective, z, value, gradient, direction, running, domain, backtracks
        )
        iterations += running.long()
        # A failed search with memory retries once as steepest descent from a cleared memory.
        retry = running & ~moved & had_pairs
        status = torch.where(running & ~moved & ~retry, torch.full_like(status, LINE_SEARCH_FAILED), status)
        keep = ~(retry | (running & ~descent))
        inverse_curvature = inverse_curvature * keep
        has_pairs = has_pairs & keep

        step, change = new_z - z, new_gradient - gradient
        curvature = (step * change).sum(-1)
        # Skip pairs without positive curvature (nonconvex regions, rounding), which keeps
        # the inverse Hessian approximation positive definite.
        valid = moved & (curvature > eps * step.norm(dim=-1) * change.norm(dim=-1))
        steps[head] = torch.where(valid.unsqueeze(-1), step, 0.0)
        changes[head] = torch.where(valid.unsqueeze(-1), change, 0.0)
        inverse_curvature[head] = torch.where(valid, 1.0 / torch.where(valid, curvature, 1.0), 0.0)
        scale = torch.where(valid, curvature / (change * change).sum(-1).clamp_min(torch.finfo(z.dtype).tiny), scale)
        has_pairs = has_pairs | valid
        head = (head + 1) % history
        z, value, gradient = new_z, new_value, new_gradient
    return z, status, iterations, norm


def minimize(
    objective: Objective,
    start: torch.Tensor,
    method: str,
    tol: float,
    max_iter: int,
    history: int,
    domain: tuple[float, float],
    max_backtracks: int,
    separable: bool = False,
) -> tuple[torch.Tensor, SolverOutcome]:
    """Minimize ``objective`` for every item from ``start`` (shape ``(B, d)``).

    ``start`` must be a point where ``F`` and its gradient are finite, inside the open
    ``domain`` box. ``separable`` makes Newton's method use the Hessian's diagonal only
    (exact when ``F`` is separable). Returns the last iterate and the outcome; an item
    that did not converge keeps its last accepted iterate.
    """
    if method == "newton":
        z, status, iterations, norm = _newton(objective, start, tol, max_iter, domain, max_backtracks, separable)
    else:
        z, status, iterations, norm = _lbfgs(objective, start, tol, max_iter, history, domain, max_backtracks)
    outcome = SolverOutcome(method, tol, status == CONVERGED, iterations, norm, status)
    return z, outcome
