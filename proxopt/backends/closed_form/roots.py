"""Batched scalar root finders for the entropic closed forms.

Each function solves one strictly increasing scalar equation per tensor entry, in the
dtype and on the device of its input, without autograd (callers differentiate the root
by the implicit function theorem). An entry counts as converged when the last step is
below the rounding error of evaluating the equation there, so the root is as accurate
as floating point allows; an entry that does not converge within ``max_iterations``
raises :class:`~proxopt.errors.SolverFailedError`.
"""

from __future__ import annotations

from typing import NoReturn

import torch

from proxopt.errors import SolverFailedError

__all__ = ["MAX_ITERATIONS", "solve_linear_sigmoid", "solve_linear_exp", "raise_unconverged"]

MAX_ITERATIONS = 200
"""Iteration limit of the root finders. Bisection alone halves the bracket each step, so
200 steps cover any bracket of width up to 2^200 times the tolerance."""

Scalar = torch.Tensor | float

# Multiple of the dtype's epsilon in the noise estimate of an equation's value.
_NOISE_FACTOR = 8.0


def _failed_items(unconverged: torch.Tensor) -> list[int]:
    """Return the indices along the first dim of the entries that did not converge."""
    if unconverged.ndim == 0:
        return [0]
    rows = unconverged.reshape(unconverged.shape[0], -1).any(-1)
    return [int(i) for i in torch.nonzero(rows).flatten()[:10]]


def raise_unconverged(what: str, iterations: int, unconverged: torch.Tensor, residual: torch.Tensor) -> NoReturn:
    """Raise SolverFailedError for the entries where ``unconverged`` is True."""
    worst = float(residual.abs().masked_fill(~unconverged, 0).max())
    raise SolverFailedError(
        f"{what} did not converge in {iterations} iterations on {int(unconverged.sum())} entries "
        f"(largest residual {worst:.3g}); this points to extreme input or coefficients. "
        "Rescale the input or pass backend='cvxpy'.",
        status="max_iterations",
        failed_items=_failed_items(unconverged),
    )


@torch.no_grad()
def solve_linear_sigmoid(
    alpha: Scalar, beta: Scalar, gamma: torch.Tensor, max_iterations: int = MAX_ITERATIONS
) -> torch.Tensor:
    r"""Solve ``alpha * w + beta * sigmoid(w) = gamma`` for ``w``, entrywise.

    The left side is strictly increasing when ``alpha > 0`` and ``alpha + beta / 4 > 0``
    (``sigmoid' <= 1/4``), which the caller guarantees; ``alpha`` and ``beta`` broadcast
    against ``gamma``. The root lies in the bracket

    .. math::

        \frac{\gamma - \max(\beta, 0)}{\alpha} \le w \le \frac{\gamma - \min(\beta, 0)}{\alpha},

    and is found by Newton's method safeguarded by bisection: a Newton step that leaves the
    bracket, or that does not halve the step before last, is replaced by bisection.

    NaN entries of ``gamma`` give NaN, and ``+-inf`` give ``+-inf``.
    """
    finite = torch.isfinite(gamma)
    target = torch.where(finite, gamma, torch.zeros_like(gamma))
    beta_t = torch.as_tensor(beta, dtype=gamma.dtype, device=gamma.device)
    low = (target - beta_t.clamp(min=0)) / alpha
    high = (target - beta_t.clamp(max=0)) / alpha

    # Start from the root of the equation with sigmoid linearized at 0.
    w = torch.minimum(torch.maximum((target - 0.5 * beta_t) / (alpha + 0.25 * beta_t), low), high)
    eps = torch.finfo(gamma.dtype).eps
    converged = ~finite
    step_before = high - low
    residual = torch.zeros_like(w)
    for _ in range(max_iterations):
        sig = torch.sigmoid(w)
        residual = alpha * w + beta_t * sig - target
        slope = alpha + beta_t * (sig * torch.sigmoid(-w))

        below = residual < 0
        low = torch.where(below, w, low)
        high = torch.where(below, high, w)
        newton = w - residual / slope
        use_bisection = (newton < low) | (newton > high) | (2 * residual.abs() > (step_before * slope).abs())
        candidate = torch.where(use_bisection, 0.5 * (low + high), newton)
        step = candidate - w

        # Rounding error of the residual, in units of w.
        noise = _NOISE_FACTOR * eps * ((alpha * w).abs() + (beta_t * sig).abs() + target.abs()) / slope
        done = (step.abs() <= noise) | (high - low <= noise)
        w = torch.where(converged, w, candidate)
        step_before = torch.where(converged, step_before, step)
        converged = converged | done
        if bool(converged.all()):
            return torch.where(finite, w, gamma)
    raise_unconverged("the Newton solve of alpha w + beta sigmoid(w) = gamma", max_iterations, ~converged, residual)


@torch.no_grad()
def solve_linear_exp(
    beta: Scalar, gamma: torch.Tensor, start: torch.Tensor | None = None, max_iterations: int = MAX_ITERATIONS
) -> torch.Tensor:
    r"""Solve ``w + beta * exp(w) = gamma`` for ``w``, entrywise.

    For ``beta >= 0`` the left side is convex and increasing and the root is unique; for
    ``beta > 0`` it is ``gamma - omega(gamma + log(beta))`` with the Wright omega function
    ``omega(k) = W(exp(k))`` (principal branch of Lambert W). For ``beta < 0`` the left
    side is concave and increases for ``w < -log(-beta)``; the root sought is the one on
    that side (the principal branch of W), which exists when
    ``gamma < -log(-beta) - 1``. The caller guarantees that.

    Newton's method converges from every start where the slope ``1 + beta exp(w)`` is
    positive: on the convex side the first step lands right of the root and the iterates
    then decrease to it, on the concave side they land left of it and increase. The
    default start is right of the root for ``beta >= 0``
    (``min(gamma, log(max(gamma + log(beta), 1) / beta))``) and left of it for
    ``beta < 0`` (``gamma``). A warm ``start`` (such as the root for a nearby ``gamma``)
    replaces it where it is closer: for ``beta >= 0`` where it lies between the root and
    the default start, for ``beta < 0`` where it lies above the default start (it must
    then be left of ``-log(-beta)``, where the slope is positive).

    NaN entries of ``gamma`` give NaN, and ``+-inf`` give ``+-inf``.
    """
    finite = torch.isfinite(gamma)
    target = torch.where(finite, gamma, torch.zeros_like(gamma))
    beta_t = torch.as_tensor(beta, dtype=gamma.dtype, device=gamma.device)
    convex = beta_t >= 0
    log_beta = torch.log(beta_t.clamp(min=0))  # -inf at beta = 0, where the start is gamma
    right = torch.minimum(target, torch.log((target + log_beta).clamp(min=1)) - log_beta)
    w = torch.where(convex, right, target)
    zero_beta = beta_t == 0  # keeps 0 * exp(w) = 0 where exp(w) overflows
    if start is not None:
        # On the convex side only a start right of the root is safe: from the left, the
        # first step can land near gamma, where exp overflows.
        right_of_root = start + torch.where(zero_beta, 0.0, beta_t * torch.exp(start)) >= target
        warm_convex = torch.where(right_of_root, torch.minimum(start, w), w)
        w = torch.where(convex, warm_convex, torch.maximum(start, w))

    eps = torch.finfo(gamma.dtype).eps
    converged = ~finite
    residual = torch.zeros_like(w)
    for _ in range(max_iterations):
        scaled = torch.where(zero_beta, 0.0, beta_t * torch.exp(w))
        residual = w + scaled - target
        slope = 1 + scaled
        step = residual / slope
        # Rounding error of the residual, in units of w.
        noise = _NOISE_FACTOR * eps * (w.abs() + scaled.abs() + target.abs()) / slope
        w = torch.where(converged, w, w - step)
        converged = converged | (step.abs() <= noise)
        if bool(converged.all()):
            return torch.where(finite, w, gamma)
    raise_unconverged("the Newton solve of w + beta exp(w) = gamma", max_iterations, ~converged, residual)
