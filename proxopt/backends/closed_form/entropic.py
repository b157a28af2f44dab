r"""Exact prox maps of the entropic atoms: sigmoid, tanh, softmax and the logistic loss.

Every entry minimizes the merged objective of :mod:`proxopt.compile.analysis`,

.. math::

    c \, \phi(s z + t) + \frac{a}{2} \|z\|^2 - y^T z,

for one atom ``phi`` with a coefficient ``c`` (a positive constant or a nonnegative scalar
Parameter) and constant scalars ``s != 0`` and ``t``. With ``u = s z + t`` the objective is,
up to a constant, ``c phi(u) + (b/2) ||u||^2 - v^T u`` with ``b = a / s^2`` and
``v = y / s + b t``, so each entry solves for ``u`` and returns ``z = (u - t) / s``:

* ``binary_neg_entropy``, no constraints: ``c logit(u) + b u = v``. At ``a = 0`` this is
  ``u = sigmoid(v / c)``: the sigmoid (``c = s = 1``, ``t = 0``) and tanh
  (``s = t = 1/2``) activations of Li, Ma and Zhang, "Proximal Mapping for Deep
  Regularization" (NeurIPS 2020), which ``lam = 1`` gives.
* ``logistic`` (a sum of softplus), no constraints: ``c sigmoid(u) + b u = v``; needs
  ``a > 0``.
* ``neg_entropy``, no constraints: ``c (log u + 1) + b u = v``, so
  ``u = (c / b) W((b / c) exp(v / c - 1))`` with the Lambert W function, and
  ``u = exp(v / c - 1)`` at ``a = 0``; needs ``a >= 0``.
* ``neg_entropy`` over ``Simplex(r)`` (on ``z`` itself): the KKT system
  ``c (log z_i + 1) + a z_i = y_i - nu``, ``sum(z) = r`` gives ``z_i`` as above at
  ``y_i - nu`` and a monotone scalar equation for ``nu``; at ``a = 0`` it is
  ``r softmax(y / c)``, which is softmax at ``lam = 1``; needs ``a > -c / r``.

Where ``a`` is the Python float 0 the entries call ``torch.sigmoid``, ``torch.tanh`` and
``torch.softmax`` (gradients by torch's autograd). Otherwise the scalar equations are
solved to machine precision by the safeguarded Newton methods of :mod:`.roots`, and the
backward pass differentiates the optimality conditions (implicit function theorem), which
is exact at the computed root.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.autograd.function import FunctionCtx, once_differentiable

from proxopt.backends.base import ProxCall
from proxopt.backends.closed_form.canonical import CanonicalTerm, canonical_form
from proxopt.backends.closed_form.registry import ClosedFormMatch, register
from proxopt.backends.closed_form.roots import (
    MAX_ITERATIONS,
    raise_unconverged,
    solve_linear_exp,
    solve_linear_sigmoid,
)
from proxopt.compile.analysis import ProxProblem, set_values
from proxopt.dsl.atoms import Atom, BinaryNegEntropy, Logistic, NegEntropy
from proxopt.dsl.expressions import Constant
from proxopt.dsl.sets import Set, Simplex
from proxopt.errors import InvalidInputError

__all__ = [
    "binary_entropy_argmin",
    "logistic_argmin",
    "entropy_argmin",
    "simplex_entropy_argmin",
]

Scalar = torch.Tensor | float


# -- helpers --------------------------------------------------------------------------
def _column(value: Scalar, like: torch.Tensor) -> Scalar:
    """Give a per-sample tensor of shape ``(B,)`` trailing dims to broadcast against ``like``."""
    if isinstance(value, torch.Tensor) and 0 < value.ndim < like.ndim:
        return value.reshape(value.shape + (1,) * (like.ndim - value.ndim))
    return value


def _as_tensor(value: Scalar, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(value, dtype=like.dtype, device=like.device)


def _minimum(value: Scalar) -> float:
    return float(value.detach().min()) if isinstance(value, torch.Tensor) else float(value)


def _is_zero(value: Scalar) -> bool:
    """Return whether ``value`` is the number 0 (a tensor never counts, so its gradient is kept)."""
    return not isinstance(value, torch.Tensor) and value == 0


def _check_coefficient(coefficient: Scalar, atom: str, allow_zero: bool = False) -> None:
    lowest = _minimum(coefficient)
    if lowest > 0 or (allow_zero and lowest == 0):
        return
    bound = ">= 0" if allow_zero else "> 0"
    raise InvalidInputError(
        f"the coefficient of {atom} must be {bound} for its closed-form prox, got minimum {lowest:.4g}; "
        "pass a positive coefficient, or backend='cvxpy' for a zero one."
    )


def _substitute(y: torch.Tensor, a: Scalar, scale: float, shift: float) -> tuple[torch.Tensor, Scalar]:
    """Return ``(v, b)`` of the problem in ``u = scale * z + shift`` (module docstring)."""
    if scale == 1.0 and shift == 0.0:
        return y, a
    b = a / (scale * scale)
    v = y / scale
    if shift != 0.0:
        v = v + b * shift
    return v, b


def _back_substitute(u: torch.Tensor, scale: float, shift: float) -> torch.Tensor:
    """Return ``z = (u - shift) / scale``."""
    if shift != 0.0:
        u = u - shift
    return u if scale == 1.0 else u / scale


def _sum_to(grad: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
    return grad.sum_to_size(tensor.shape)


# -- binary negative entropy: sigmoid and tanh ----------------------------------------
class _BinaryEntropyRoot(torch.autograd.Function):
    """``u`` in (0, 1) with ``c logit(u) + b u = v``, solved on the logit scale ``w``.

    Differentiating ``c w + b sigmoid(w) = v`` gives ``dw = (dv - sigmoid(w) db - w dc) / D``
    with ``D = c + b p``, ``p = sigmoid(w) sigmoid(-w)``, and ``du = p dw``.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, v: torch.Tensor, b: Scalar, c: Scalar) -> torch.Tensor:
        b_t, c_t = _as_tensor(b, v), _as_tensor(c, v)
        logit = solve_linear_sigmoid(c_t, b_t, v)
        ctx.save_for_backward(logit, b_t, c_t)
        return torch.sigmoid(logit)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        logit, b, c = ctx.saved_tensors  # type: ignore[attr-defined]
        u = torch.sigmoid(logit)
        p = u * torch.sigmoid(-logit)
        grad_v = grad * p / (c + b * p)
        needs = ctx.needs_input_grad  # type: ignore[attr-defined]
        grad_b = _sum_to(-grad_v * u, b) if needs[1] else None
        # grad_v is 0 where the input was infinite (logit = +-inf); keep 0 * inf out.
        grad_c = _sum_to(torch.where(grad_v == 0, 0.0, -grad_v * logit), c) if needs[2] else None
        return grad_v, grad_b, grad_c


def binary_entropy_argmin(
    y: torch.Tensor, a: Scalar, coefficient: Scalar = 1.0, scale: float = 1.0, shift: float = 0.0
) -> torch.Tensor:
    r"""Minimize ``c * binary_neg_entropy(s z + t) + (a/2) ||z||^2 - y^T z`` entrywise.

    .. math::

        z^\star = \operatorname{argmin}_z \sum_i c\,h(s z_i + t) + \frac{a}{2} z_i^2 - y_i z_i,
        \qquad h(u) = u \log u + (1 - u) \log(1 - u),

    the root of ``c s logit(s z + t) + a z = y``. It is unique when ``c > 0`` and
    ``a > -4 c s^2``, because ``h'' >= 4``. At ``a = 0`` it is
    ``z = (sigmoid(y / (c s)) - t) / s``: ``torch.sigmoid(y)`` for ``c = s = 1, t = 0``
    and ``torch.tanh(y)`` for ``c = 1, s = t = 1/2``.

    Args:
        y: the linear coefficient, shape ``(*batch, n)``.
        a: the quadratic weight: a float, or a tensor of shape ``()`` or ``(B,)``.
        coefficient: ``c``, a float or a tensor of shape ``()`` or ``(B,)``.
        scale, shift: the constants ``s != 0`` and ``t``.

    Returns:
        ``z`` of the shape of ``y``, differentiable with respect to ``y``, ``a`` and ``c``.

    Raises:
        InvalidInputError: ``c <= 0`` or ``a <= -4 c s^2``.
    """
    _check_coefficient(coefficient, "binary_neg_entropy")
    a = _column(a, y)
    c = _column(coefficient, y)
    if _is_zero(a):
        if not isinstance(c, torch.Tensor) and c == 1.0:
            if scale == 1.0 and shift == 0.0:
                return torch.sigmoid(y)
            if abs(scale) == 0.5 and shift == 0.5:
                return torch.tanh(y)
        v = y / scale
        return _back_substitute(torch.sigmoid(v / c), scale, shift)

    curvature = 4.0 * c * scale * scale
    if _minimum(a + curvature) <= 0:
        raise InvalidInputError(
            f"the merged quadratic weight a (minimum {_minimum(a):.4g}) must exceed -4 c s^2 "
            f"(-{_minimum(curvature):.4g}) for c * binary_neg_entropy(s z + t) + (a/2) ||z||^2 to be "
            "strictly convex; increase lam or reduce the negative sum_squares term."
        )
    v, b = _substitute(y, a, scale, shift)
    u = _BinaryEntropyRoot.apply(v, b, c)
    return _back_substitute(u, scale, shift)


# -- logistic (softplus) --------------------------------------------------------------
class _LogisticRoot(torch.autograd.Function):
    """``u`` with ``b u + c sigmoid(u) = v``; ``du = (dv - u db - sigmoid(u) dc) / (b + c p)``."""

    @staticmethod
    def forward(ctx: FunctionCtx, v: torch.Tensor, b: Scalar, c: Scalar) -> torch.Tensor:
        b_t, c_t = _as_tensor(b, v), _as_tensor(c, v)
        u = solve_linear_sigmoid(b_t, c_t, v)
        ctx.save_for_backward(u, b_t, c_t)
        return u

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        u, b, c = ctx.saved_tensors  # type: ignore[attr-defined]
        sig = torch.sigmoid(u)
        grad_v = grad / (b + c * (sig * torch.sigmoid(-u)))
        needs = ctx.needs_input_grad  # type: ignore[attr-defined]
        grad_b = _sum_to(torch.where(grad_v == 0, 0.0, -grad_v * u), b) if needs[1] else None
        grad_c = _sum_to(-grad_v * sig, c) if needs[2] else None
        return grad_v, grad_b, grad_c


def logistic_argmin(
    y: torch.Tensor, a: Scalar, coefficient: Scalar = 1.0, scale: float = 1.0, shift: float = 0.0
) -> torch.Tensor:
    r"""Minimize ``c * logistic(s z + t) + (a/2) ||z||^2 - y^T z`` entrywise.

    .. math::

        z^\star = \operatorname{argmin}_z \sum_i c \log(1 + e^{s z_i + t}) + \frac{a}{2} z_i^2 - y_i z_i,

    the root of ``c s sigmoid(s z + t) + a z = y``, unique for ``a > 0`` and ``c >= 0``
    (for ``a <= 0`` the objective is unbounded below or has no minimizer in general).
    Arguments and returns as in :func:`binary_entropy_argmin`.

    Raises:
        InvalidInputError: ``c < 0`` or ``a <= 0``.
    """
    _check_coefficient(coefficient, "logistic", allow_zero=True)
    if _minimum(a) <= 0:
        raise InvalidInputError(
            f"the merged quadratic weight a must be > 0 for the prox of c * logistic(s z + t), "
            f"got minimum {_minimum(a):.4g}; otherwise the objective has no minimizer. Increase lam "
            "or reduce the negative sum_squares term."
        )
    a = _column(a, y)
    c = _column(coefficient, y)
    v, b = _substitute(y, a, scale, shift)
    u = _LogisticRoot.apply(v, b, c)
    return _back_substitute(u, scale, shift)


# -- negative entropy, unconstrained ---------------------------------------------------
def _entropy_root(
    v: torch.Tensor, b: torch.Tensor, c: torch.Tensor, start: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(u, log u)`` with ``c (log u + 1) + b u = v``; ``log u`` can warm-start the next call.

    With ``l = log u`` the equation is ``l + (b / c) exp(l) = v / c - 1``. For ``b < 0``
    the root is the one with ``u < c / (-b)`` (see :func:`.roots.solve_linear_exp`).
    """
    log_u = solve_linear_exp(b / c, v / c - 1, start)
    return torch.exp(log_u), log_u


class _EntropyRoot(torch.autograd.Function):
    """``u > 0`` with ``c (log u + 1) + b u = v``.

    ``du = (dv - u db - (log u + 1) dc) u / (c + b u)``.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, v: torch.Tensor, b: Scalar, c: Scalar) -> torch.Tensor:
        b_t, c_t = _as_tensor(b, v), _as_tensor(c, v)
        with torch.no_grad():
            u, _ = _entropy_root(v, b_t, c_t)
        ctx.save_for_backward(u, b_t, c_t)
        return u

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        u, b, c = ctx.saved_tensors  # type: ignore[attr-defined]
        scaled = grad / (c + b * u)
        grad_v = scaled * u
        needs = ctx.needs_input_grad  # type: ignore[attr-defined]
        grad_b = _sum_to(-grad_v * u, b) if needs[1] else None
        grad_c = _sum_to(-scaled * (torch.special.xlogy(u, u) + u), c) if needs[2] else None
        return grad_v, grad_b, grad_c


def entropy_argmin(
    y: torch.Tensor, a: Scalar, coefficient: Scalar = 1.0, scale: float = 1.0, shift: float = 0.0
) -> torch.Tensor:
    r"""Minimize ``c * neg_entropy(s z + t) + (a/2) ||z||^2 - y^T z`` entrywise.

    .. math::

        z^\star = \operatorname{argmin}_z \sum_i c\,u_i \log u_i + \frac{a}{2} z_i^2 - y_i z_i,
        \qquad u = s z + t,

    whose ``u`` solves ``c (log u + 1) + b u = v`` (``b = a / s^2``, ``v = y / s + b t``):
    ``u = (c / b) W((b / c) exp(v / c - 1))`` with the Lambert W function, and
    ``u = exp(v / c - 1)`` at ``a = 0``. Unique for ``c > 0`` and ``a >= 0``.
    Arguments and returns as in :func:`binary_entropy_argmin`.

    Raises:
        InvalidInputError: ``c <= 0`` or ``a < 0``.
    """
    _check_coefficient(coefficient, "neg_entropy")
    if _minimum(a) < 0:
        raise InvalidInputError(
            f"the merged quadratic weight a must be >= 0 for the prox of c * neg_entropy(s z + t) "
            f"without constraints, got minimum {_minimum(a):.4g}; otherwise the objective is unbounded "
            "below. Increase lam, reduce the negative sum_squares term or add a constraint such as Simplex()."
        )
    a = _column(a, y)
    c = _column(coefficient, y)
    v, b = _substitute(y, a, scale, shift)
    if _is_zero(b):
        u = torch.exp(v / c - 1)
    else:
        u = _EntropyRoot.apply(v, b, c)
    return _back_substitute(u, scale, shift)


# -- negative entropy over the simplex: softmax -----------------------------------------
@torch.no_grad()
def _solve_simplex_entropy(y: torch.Tensor, a: torch.Tensor, c: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Solve the KKT system of :func:`simplex_entropy_argmin` along the last dim.

    ``a``, ``c`` and ``radius`` are tensors of shape ``()`` or ``(*batch, 1)``, with
    ``a > -c / r``. With ``phi(z) = c (log z + 1) + a z``, increasing on ``(0, r]``,
    each ``z_i(nu) = phi^{-1}(y_i - nu)`` and the multiplier ``nu`` of each row is the
    root of ``G(nu) = log(sum_i z_i(nu)) - log(r)``, which decreases. Points left of the
    root (``G >= 0``): ``min(y) - phi(r / n)``, where every ``z_i >= r / n``, and
    ``max(y) - phi(r)``, where the largest ``z_i`` is ``r``; right of it (``G <= 0``):
    ``max(y) - phi(r / n)``. The multiplier for ``a = 0``,
    ``c (logsumexp(y / c) - 1 - log r)``, is right of the root for ``a >= 0`` and left of
    it for ``a < 0``, because ``a z_i`` lowers (raises) every ``z_i``. Newton's method on
    ``G`` starts there and falls back to bisection as in
    :func:`.roots.solve_linear_sigmoid`; keeping ``nu`` above ``max(y) - phi(r)`` keeps
    every ``z_i <= r``, where ``phi`` is invertible. Rows with non-finite entries give NaN.
    """
    finite_rows = torch.isfinite(y).all(-1, keepdim=True)
    y = torch.where(finite_rows, y, torch.zeros_like(y))
    n = y.shape[-1]
    log_radius = torch.log(radius)

    def phi(z: torch.Tensor) -> torch.Tensor:
        return c * (torch.log(z) + 1) + a * z

    largest = y.amax(-1, keepdim=True)
    unweighted = c * (torch.logsumexp(y / c, -1, keepdim=True) - 1 - log_radius)
    low = torch.maximum(y.amin(-1, keepdim=True) - phi(radius / n), largest - phi(radius))
    high = largest - phi(radius / n)
    low = torch.where(a < 0, torch.maximum(low, unweighted), low)
    high = torch.where(a < 0, high, torch.minimum(high, unweighted))
    high = torch.maximum(high, low)  # equal up to rounding when n = 1

    eps = torch.finfo(y.dtype).eps
    nu = high
    log_z: torch.Tensor | None = None
    converged = ~finite_rows
    step_before = high - low
    excess = torch.zeros_like(nu)
    for _ in range(MAX_ITERATIONS):
        z, log_z = _entropy_root(y - nu, a, c, log_z)
        total = z.sum(-1, keepdim=True)
        excess = torch.log(total) - log_radius
        sensitivity = z / (c + a * z)  # -dz_i/dnu
        weight = sensitivity.sum(-1, keepdim=True)
        slope = weight / total  # -dG/dnu

        above = excess > 0
        low = torch.where(above, nu, low)
        high = torch.where(above, high, nu)
        newton = nu + excess / slope
        use_bisection = (newton < low) | (newton > high) | (2 * excess.abs() > (step_before * slope).abs())
        candidate = torch.where(use_bisection, 0.5 * (low + high), newton)
        step = candidate - nu

        # Rounding error of G in units of nu: each z_i is exact for y_i - nu rounded by
        # about eps (|y_i| + |nu|), plus eps c from the root, weighted by dz_i/dnu.
        rounding = (sensitivity * (y.abs() + nu.abs() + c)).sum(-1, keepdim=True) / weight
        noise = 8.0 * eps * rounding
        done = (step.abs() <= noise) | (high - low <= noise)
        nu = torch.where(converged, nu, candidate)
        step_before = torch.where(converged, step_before, step)
        converged = converged | done
        if bool(converged.all()):
            z, _ = _entropy_root(y - nu, a, c, log_z)
            return torch.where(finite_rows, z, torch.full_like(z, math.nan))
    raise_unconverged("the Newton solve for the simplex multiplier", MAX_ITERATIONS, ~converged, excess)


class _SimplexEntropyRoot(torch.autograd.Function):
    """The minimizer of :func:`simplex_entropy_argmin` (for a tensor ``a`` or a nonzero one).

    Differentiating the KKT system ``(c / z_i + a) dz_i + dnu = dy_i - (log z_i + 1) dc
    - z_i da``, ``sum(dz) = dr`` gives ``dz = J rhs + h dr / S`` with ``h_i = z_i / (c + a z_i)``,
    ``S = sum(h)`` and the symmetric ``J = diag(h) - h h^T / S`` (a diagonal matrix plus a
    rank-one correction).
    """

    @staticmethod
    def forward(ctx: FunctionCtx, y: torch.Tensor, a: Scalar, c: Scalar, radius: Scalar) -> torch.Tensor:
        a_t, c_t, r_t = (_as_tensor(value, y) for value in (a, c, radius))
        z = _solve_simplex_entropy(y, a_t, c_t, r_t)
        ctx.save_for_backward(z, a_t, c_t, r_t)
        return z

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        z, a, c, radius = ctx.saved_tensors  # type: ignore[attr-defined]
        denominator = c + a * z
        h = z / denominator
        mean = (grad * h).sum(-1, keepdim=True) / h.sum(-1, keepdim=True)
        centered = grad - mean
        grad_y = h * centered
        needs = ctx.needs_input_grad  # type: ignore[attr-defined]
        grad_a = _sum_to(-grad_y * z, a) if needs[1] else None
        grad_c = _sum_to(-centered * (torch.special.xlogy(z, z) + z) / denominator, c) if needs[2] else None
        grad_r = _sum_to(mean, radius) if needs[3] else None
        return grad_y, grad_a, grad_c, grad_r


def simplex_entropy_argmin(y: torch.Tensor, a: Scalar, coefficient: Scalar = 1.0, radius: Scalar = 1.0) -> torch.Tensor:
    r"""Minimize ``c * neg_entropy(z) + (a/2) ||z||^2 - y^T z`` over ``Simplex(r)``, per row.

    .. math::

        z^\star = \operatorname{argmin}_{z \ge 0,\ \sum_i z_i = r}
            \sum_i c\,z_i \log z_i + \frac{a}{2} z_i^2 - y_i z_i.

    At ``a = 0`` this is ``r softmax(y / c)`` (``torch.softmax(y)`` for ``c = r = 1``).
    Otherwise the KKT conditions ``c (log z_i + 1) + a z_i = y_i - nu`` give
    ``z_i = (c / a) W((a / c) exp((y_i - nu) / c - 1))`` (principal branch of Lambert W),
    and ``nu`` is the root of ``sum_i z_i(nu) = r``. Every ``z_i`` is positive, because
    the entropy's slope is ``-inf`` at 0. The objective is strictly convex on the simplex
    when ``a > -c / r`` (its Hessian ``c / z_i + a`` is positive for ``z_i <= r``), so a
    negative ``a``, as from softmax's declaration with ``lam < 1``, is accepted.

    Args:
        y: the linear coefficient, shape ``(*batch, n)``; rows lie along the last dim.
        a: the quadratic weight ``> -c / r``: a float, or a tensor of shape ``()`` or ``(B,)``.
        coefficient: ``c > 0``, a float or a tensor of shape ``()`` or ``(B,)``.
        radius: ``r > 0``, a float or a tensor of shape ``()`` or ``(B,)``.

    Returns:
        ``z`` of the shape of ``y``, differentiable with respect to ``y``, ``a``, ``c`` and ``r``.

    Raises:
        InvalidInputError: ``c <= 0``, ``r <= 0`` or ``a <= -c / r``.
    """
    _check_coefficient(coefficient, "neg_entropy")
    if _minimum(radius) <= 0:
        raise InvalidInputError(
            f"the simplex radius must be > 0 for the prox of c * neg_entropy(z) over it, got minimum "
            f"{_minimum(radius):.4g}; at radius 0 the only point is z = 0."
        )
    a = _column(a, y)
    c = _column(coefficient, y)
    radius = _column(radius, y)
    if _minimum(a * radius + c) <= 0:
        raise InvalidInputError(
            f"the merged quadratic weight a (minimum {_minimum(a):.4g}) must exceed -c / r for "
            "c * neg_entropy(z) + (a/2) ||z||^2 to be strictly convex on Simplex(r); increase lam or "
            "reduce the negative sum_squares term."
        )
    if _is_zero(a):
        if not isinstance(c, torch.Tensor) and c == 1.0:
            z = torch.softmax(y, dim=-1)
        else:
            z = torch.softmax(y / c, dim=-1)
        return z if not isinstance(radius, torch.Tensor) and radius == 1.0 else radius * z
    return _SimplexEntropyRoot.apply(y, a, c, radius)


# -- recognizers -----------------------------------------------------------------------
Argmin = Callable[[torch.Tensor, Scalar], torch.Tensor]


def _single_term(problem: ProxProblem, kind: type[Atom]) -> tuple[CanonicalTerm, list[Set]] | None:
    """Return the only residual term, when it is ``c * kind(s z + t)`` with ``c > 0``, and the sets."""
    canonical = canonical_form(problem)
    if canonical is None or len(canonical.terms) != 1:
        return None
    term = canonical.terms[0]
    if not isinstance(term.atom, kind) or term.part is not None or term.coefficient.sign <= 0:
        return None
    return term, canonical.sets


def _y_is_scaled_input(problem: ProxProblem) -> bool:
    """Return whether ``y = lam * x``, that is, no linear terms and no shifted sum_squares terms."""
    for term in problem.terms:
        if term.kind == "linear":
            return False
        if term.kind == "identity_quadratic" and term.form is not None and term.form.offset is not None:
            return False
    return True


def _fast_path(problem: ProxProblem, argmin: Argmin) -> Callable[[torch.Tensor, float], torch.Tensor] | None:
    """Return ``fast(x, lam)`` computing ``argmin(lam * x, a(lam))`` without a ProxCall."""
    if problem.parameters or not _y_is_scaled_input(problem):
        return None
    cached: list[float | None] = [None, None]  # the last lam and its merged weight a

    def fast(x: torch.Tensor, lam: float) -> torch.Tensor:
        if lam != cached[0]:
            cached[1] = problem.identity_weight(lam)
            cached[0] = lam
        a = cached[1]
        assert a is not None  # every merged coefficient is a constant without Parameters
        return argmin(x if lam == 1.0 else lam * x, a)

    return fast


def _known_weight(problem: ProxProblem, lam: float | None) -> float | None:
    return None if lam is None else problem.identity_weight(lam)


def _describe_argument(term: CanonicalTerm) -> str:
    if term.on_variable:
        return "z"
    return f"{term.scale:g} z + {term.shift:g}"


def _register_separable(
    name: str,
    kind: type[Atom],
    argmin_of: Callable[[torch.Tensor, Scalar, Scalar, float, float], torch.Tensor],
    summary: str,
    gradient: str,
    accepts: Callable[[float, CanonicalTerm], bool],
) -> None:
    """Register the recognizer of an unconstrained ``c * kind(s z + t)`` solved by ``argmin_of``.

    ``summary`` may contain ``{u}`` for the argument. ``accepts(a, term)`` tells whether a
    known merged weight ``a`` leaves the problem with a unique minimizer. When it does not,
    the recognizer declines, the plan moves on and the cvxpy backend reports the reason.
    """

    @register(name)
    def recognize(problem: ProxProblem, lam: float | None) -> ClosedFormMatch | None:
        match = _single_term(problem, kind)
        if match is None or match[1]:
            return None
        term = match[0]
        scale, shift = term.scale, term.shift
        a = _known_weight(problem, lam)
        if a is not None and not accepts(a, term):
            return None

        def solve(call: ProxCall) -> torch.Tensor:
            y, a = call.merged(problem)
            c = term.coefficient.value(call.values, call.x)
            return argmin_of(y, a, c, scale, shift)

        def argmin(y: torch.Tensor, a: Scalar) -> torch.Tensor:
            return argmin_of(y, a, term.coefficient.constant, scale, shift)

        return ClosedFormMatch(
            name,
            summary.format(u=_describe_argument(term)),
            solve,
            _fast_path(problem, argmin),
            gradient=gradient,
        )


_register_separable(
    "binary_entropy",
    BinaryNegEntropy,
    binary_entropy_argmin,
    "prox of c * binary_neg_entropy({u}): the root of c s logit(s z + t) + a z = y; sigmoid / tanh "
    "when a = 0, else safeguarded Newton to machine precision with the implicit-function gradient",
    "implicit function theorem at the root; torch's own gradient when a = 0",
    # Strictly convex while a > -4 c s^2, because the second derivative of bne is at least 4.
    lambda a, term: not term.coefficient.is_constant or a > -4.0 * term.coefficient.constant * term.scale**2,
)
_register_separable(
    "logistic",
    Logistic,
    logistic_argmin,
    "prox of c * logistic({u}): the root of c s sigmoid(s z + t) + a z = y by safeguarded Newton to "
    "machine precision, with the implicit-function gradient",
    "implicit function theorem at the root",
    # With a <= 0 there is no minimizer in general, because logistic grows only linearly.
    lambda a, term: a > 0,
)
_register_separable(
    "neg_entropy",
    NegEntropy,
    entropy_argmin,
    "prox of c * neg_entropy({u}): u = exp(v / c - 1) when a = 0, else (c / b) W((b / c) exp(v / c - 1)) "
    "with Lambert W by Newton to machine precision, with the implicit-function gradient",
    "implicit function theorem at the root; torch's own gradient when a = 0",
    # With a < 0 the objective is unbounded below.
    lambda a, term: a >= 0,
)


@register("neg_entropy_simplex")
def _recognize_neg_entropy_simplex(problem: ProxProblem, lam: float | None) -> ClosedFormMatch | None:
    match = _single_term(problem, NegEntropy)
    if match is None or len(match[1]) != 1 or not isinstance(match[1][0], Simplex) or not match[0].on_variable:
        return None
    term, (simplex,) = match
    constant_radius = isinstance(simplex.radius, Constant)
    if constant_radius and float(simplex.radius.value) <= 0:
        return None  # the set is {0} or empty; the cvxpy backend handles or reports it
    a = _known_weight(problem, lam)
    if a is not None and constant_radius and term.coefficient.is_constant:
        if a * float(simplex.radius.value) + term.coefficient.constant <= 0:
            return None  # not convex on the simplex, so the plan moves on and cvxpy reports why

    def solve(call: ProxCall) -> torch.Tensor:
        y, a = call.merged(problem)
        c = term.coefficient.value(call.values, call.x)
        radius: Scalar = set_values(simplex, call.values, call.x)["radius"]
        if constant_radius:
            radius = float(simplex.radius.value)  # keeps r = 1 exact for the softmax branch
        return simplex_entropy_argmin(y, a, c, radius)

    fast = None
    if constant_radius:
        radius_value = float(simplex.radius.value)

        def argmin(y: torch.Tensor, a: Scalar) -> torch.Tensor:
            return simplex_entropy_argmin(y, a, term.coefficient.constant, radius_value)

        fast = _fast_path(problem, argmin)

    return ClosedFormMatch(
        "neg_entropy_simplex",
        "prox of c * neg_entropy(z) over Simplex(r): r softmax(y / c) when a = 0, else the KKT "
        "system with Lambert W and a safeguarded Newton solve for the multiplier, with the "
        "implicit-function gradient (diagonal plus rank one)",
        solve,
        fast,
        gradient="implicit function theorem at the root; torch's own gradient when a = 0",
    )
