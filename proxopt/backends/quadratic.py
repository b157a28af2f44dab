"""The quadratic backend: prox maps of PSD quadratic regularizers by batched linear solves.

When every residual term of the merged form (*) of :mod:`proxopt.compile.analysis` is a
quadratic atom and there are no constraints, the objective is

    (1/2) z^T (a I + H) z - (y - h)^T z,     H = sum_k H_k,  h = sum_k h_k,

with ``(H_k, h_k)`` of each term from :func:`~proxopt.compile.quadratic_terms.term_quadratic`,
so the prox map is the solution of one linear system,

    P(x) = z = (a I + H)^{-1} (y - h),

defined when ``a I + H`` is positive definite. Quadratic terms with a negative coefficient
are allowed as long as that holds. The backend checks it at compile time when everything is
constant and ``lam`` is a float. Otherwise a failed factorization at runtime raises
:class:`~proxopt.errors.InvalidInputError` with the smallest eigenvalue.

The backend picks one route when the layer is built:

* cached Cholesky: every quadratic term is constant and ``a`` is a float. ``a I + H`` is
  factored once per value of ``a``, dtype and device (in float64, then cast), so a call
  costs one pair of triangular solves.
* cached eigendecomposition: constant terms but a tensor ``a`` (a tensor ``lam``, or a
  Parameter weight on an identity quadratic). ``H = Q diag(mu) Q^T`` is computed once and
  ``z = Q diag(1 / (a + mu)) Q^T (y - h)``.
* Woodbury rank k: every term is ``c_j ||G_j^T u_j||^2`` (``quad_form`` with a Parameter
  factor) with a positive coefficient, and the total rank ``k = sum_j k_j`` is below ``n``.
  With ``H = V diag(w) V^T``, ``V = [F_1^T G_1, ...]`` and ``w_j = 2 c_j``,

      (a I + V diag(w) V^T)^{-1} r = (1/a) (r - V (a I_k + diag(w) V^T V)^{-1} diag(w) V^T r),

  one ``k x k`` system per sample (the ProxLSTM prox ``(I + lam^{-1} delta^2 G G^T)^{-1} s``
  is the case ``k_1 = k``). With constant weights the system is made symmetric by
  ``U = V diag(w)^{1/2}`` and solved by Cholesky. With a Parameter weight it is solved by LU,
  because ``sqrt(w)`` has no derivative at ``w = 0``.
* row Laplacian system: a per-batch variable ``Z`` of shape ``(m, n)`` whose terms are all
  ``c_k laplacian_quadratic(s_k Z + T_k, W_k)``. Each acts on the rows, so

      (a I_m + sum_k 2 c_k s_k^2 M_k) Z = Y - sum_k 2 c_k s_k M_k T_k,   M_k = D_r + D_c - W_k - W_k^T,

  one ``m x m`` system solved for all ``n`` columns; the ``mn x mn`` Kronecker form is never
  built. It is factored once when the ``W_k`` and weights are constant and ``a`` is a float.
* per-call Cholesky: any other quadratic. ``H`` is assembled per call and factored by a
  batched ``torch.linalg.cholesky_ex``; for a per-batch variable this is the
  ``(m n) x (m n)`` system.

Gradients are exact: autograd runs through the torch.linalg factorizations and solves. The
eigendecomposition is taken of a constant only, so its ill-conditioned derivative at
repeated eigenvalues is never used. Every computation runs on the input's device and dtype,
except the one-time factorization or eigendecomposition of constants, which runs on the CPU
in float64 and is then cast.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from proxopt.backends.base import Backend, BackendOptions, CompiledProx, ProxCall, Unsupported, register_backend
from proxopt.compile.analysis import ProxProblem, ScaledVariable, Term, resolve_shape, scaled_variable_form
from proxopt.compile.evaluate import Values, affine_coefficients, evaluate
from proxopt.compile.quadratic_terms import term_is_constant, term_quadratic
from proxopt.dsl.atoms import LaplacianQuadratic, QuadForm
from proxopt.dsl.expressions import BATCH, Constant, Expression
from proxopt.errors import InvalidInputError, ShapeError

__all__ = ["QuadraticBackend", "QuadraticProx"]

FACTOR_CACHE_SIZE = 8
"""Number of cached factorizations kept per layer (one per value of ``a``, dtype, device)."""

_NO_INPUT_CHECK = "no input check: NaN or inf input propagates to the output, as in a torch linear solve"
_GRADIENT_NOTE = "gradients are exact: autograd through the torch.linalg factorization and solves"
_HALF_NOTE = (
    "float16 and bfloat16 input is solved in float32 and the result cast back, because torch.linalg "
    "has no half-precision Cholesky"
)
_HALF_DTYPES = (torch.float16, torch.bfloat16)


# -- shared linear algebra -------------------------------------------------------------


def _weight_tensor(a: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """Return ``a`` as a tensor of shape ``()`` or ``(B,)`` with the dtype and device of ``like``."""
    return torch.as_tensor(a, dtype=like.dtype, device=like.device)


def _expand_trailing(value: torch.Tensor | float, count: int) -> torch.Tensor | float:
    """Append ``count`` singleton dims to a per-sample tensor so it broadcasts over a sample."""
    if isinstance(value, torch.Tensor) and value.ndim:
        return value.reshape(value.shape + (1,) * count)
    return value


def _squeeze_shared(matrix: torch.Tensor) -> torch.Tensor:
    """Drop a leading batch dim of size 1 from a batch of matrices."""
    while matrix.ndim > 2 and matrix.shape[0] == 1:
        matrix = matrix[0]
    return matrix


def _add_identity(matrix: torch.Tensor, a: torch.Tensor | float) -> torch.Tensor:
    """Return ``a I + matrix`` for ``a`` a float or a tensor of shape ``()`` or ``(B,)``."""
    size = matrix.shape[-1]
    identity = torch.eye(size, dtype=matrix.dtype, device=matrix.device)
    return _squeeze_shared(matrix + _expand_trailing(a, 2) * identity)


def _cholesky_solve_rows(factor: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Return ``K^{-1} r`` for every row ``r`` of ``rows`` (shape ``(B, d)``), where ``K = L L^T``.

    ``factor`` is ``L`` of shape ``(d, d)`` (shared) or ``(B, d, d)``. A shared factor solves
    all rows as the columns of one right-hand side, one triangular solve pair in total.
    """
    if factor.ndim == 2:
        return torch.cholesky_solve(rows.transpose(-1, -2), factor).transpose(-1, -2)
    return torch.cholesky_solve(rows.unsqueeze(-1), factor).squeeze(-1)


def _lu_solve_rows(matrix: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Return ``S^{-1} r`` for every row ``r`` of ``rows``, with ``S`` of shape ``(k, k)`` or ``(B, k, k)``."""
    if matrix.ndim == 2:
        # Rows t with S t = r are the rows of T with T S^T = R.
        solution, info = torch.linalg.solve_ex(matrix.transpose(-1, -2), rows, left=False)
    else:
        solution, info = torch.linalg.solve_ex(matrix, rows.unsqueeze(-1))
        solution = solution.squeeze(-1)
    if bool((info != 0).any()):
        # With a > 0 and weights >= 0 the system is nonsingular, so only non-finite data gets here.
        failed = torch.nonzero(info.reshape(-1) != 0).flatten().tolist()
        raise InvalidInputError(
            f"the k x k Woodbury system a I_k + diag(w) V^T V is singular on batch items {failed[:10]}; "
            "check the quad_form factors, their weights and lam for NaN or inf entries."
        )
    return solution


def _raise_not_positive_definite(matrix: torch.Tensor, info: torch.Tensor, description: str) -> None:
    """Raise InvalidInputError for a system matrix whose factorization failed."""
    detached = matrix.detach()
    failed = torch.nonzero(info.reshape(-1) != 0).flatten().tolist() if info.ndim else [0]
    where = ""
    if detached.ndim > 2:
        detached = detached[failed]
        where = f" on batch items {failed[:10]}{' ...' if len(failed) > 10 else ''}"
    if not bool(torch.isfinite(detached).all()):
        raise InvalidInputError(
            f"the {description} has NaN or inf entries{where}, so it cannot be factored. "
            "Check the Parameter values and lam for non-finite entries."
        )
    lowest = float(torch.linalg.eigvalsh(detached.double()).min())
    raise InvalidInputError(
        f"the {description} is not positive definite{where} (smallest eigenvalue {lowest:.4g}), so "
        "the prox objective has no unique minimizer. Increase lam or the weights of the convex "
        "quadratic terms, or reduce the negatively weighted quadratic terms."
    )


def _factor(matrix: torch.Tensor, description: str) -> torch.Tensor:
    """Return the Cholesky factor ``L`` of ``matrix``, or raise InvalidInputError."""
    factor, info = torch.linalg.cholesky_ex(matrix)
    if bool((info != 0).any()):
        _raise_not_positive_definite(matrix, info, description)
    return factor


def _smallest_eigenvalue(matrix: torch.Tensor) -> float:
    return float(torch.linalg.eigvalsh(matrix.double()).min())


class _FactorCache:
    """Cholesky factors of ``a I + H`` for a constant float64 ``H``, keyed by ``a``, dtype and device."""

    def __init__(self, hessian: torch.Tensor, description: str) -> None:
        self.hessian = hessian
        self.description = description
        self._factors: dict[tuple[float, torch.dtype, torch.device], torch.Tensor] = {}

    def factor(self, a: float, like: torch.Tensor) -> torch.Tensor:
        key = (a, like.dtype, like.device)
        factor = self._factors.get(key)
        if factor is None:
            # Factored once in float64 on the CPU, so a float32 layer gets the float64 factor rounded to float32.
            # A factor built under torch.inference_mode could not be saved for a later backward pass.
            with torch.inference_mode(False), torch.no_grad():
                factor = _factor(_add_identity(self.hessian, a), self.description)
                factor = factor.to(dtype=like.dtype, device=like.device)
            if len(self._factors) >= FACTOR_CACHE_SIZE:
                self._factors.pop(next(iter(self._factors)))
            self._factors[key] = factor
        return factor


class _TensorCache:
    """Constant float64 tensors converted once per dtype and device."""

    def __init__(self, *tensors: torch.Tensor) -> None:
        self.tensors = tensors
        self._converted: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, ...]] = {}

    def get(self, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        key = (like.dtype, like.device)
        converted = self._converted.get(key)
        if converted is None:
            with torch.inference_mode(False), torch.no_grad():
                converted = tuple(t.to(dtype=like.dtype, device=like.device) for t in self.tensors)
            self._converted[key] = converted
        return converted


# -- compiled prox maps ----------------------------------------------------------------


class QuadraticProx(CompiledProx):
    """A prox map computed by the quadratic backend, by the route named in ``route`` (see the module docstring)."""

    backend = "quadratic"
    route = ""

    def __init__(self, problem: ProxProblem, summary: str, notes: list[str] | None = None) -> None:
        super().__init__(summary, [*(notes or []), _GRADIENT_NOTE, _NO_INPUT_CHECK, _HALF_NOTE])
        self.problem = problem

    def __call__(self, call: ProxCall) -> torch.Tensor:
        if call.x.dtype in _HALF_DTYPES:
            return self(_widen_call(call)).to(call.x.dtype)
        y, a = call.merged(self.problem)
        return self.solve(call, y, a)

    def solve(self, call: ProxCall, y: torch.Tensor, a: torch.Tensor | float) -> torch.Tensor:
        """Return the minimizer of the merged objective for the merged data ``(y, a)``."""
        raise NotImplementedError

    def _fast_from_solve(self) -> Callable[[torch.Tensor, float], torch.Tensor] | None:
        """Return ``f(x, lam)`` for per-sample layers without Parameters, else None."""
        problem = self.problem
        if problem.per_batch or problem.parameters:
            return None
        size = problem.variable.size

        def fast(x: torch.Tensor, lam: float) -> torch.Tensor:
            if x.dtype in _HALF_DTYPES:
                return fast(x.float(), lam).to(x.dtype)
            flat = x.reshape(-1, size)
            y, a = problem.merged_linear_quadratic(flat, lam, {})
            call = ProxCall(x=flat, lam=lam, values={}, tensors={}, batch_size=None)
            return self.solve(call, y, a).reshape(x.shape)

        return fast


def _widen_call(call: ProxCall) -> ProxCall:
    """Return ``call`` with the input, lam and Parameter tensors converted to float32."""
    values = {key: value.float() for key, value in call.values.items()}
    return ProxCall(
        x=call.x.float(),
        lam=call.lam.float() if isinstance(call.lam, torch.Tensor) else call.lam,
        values=values,
        tensors={name: tensor.float() for name, tensor in call.tensors.items()},
        batch_size=call.batch_size,
        lead_ndim=call.lead_ndim,
    )


class ScaledIdentityProx(QuadraticProx):
    """``z = y / a``: no quadratic term is left after merging."""

    route = "scaled identity"

    def __init__(self, problem: ProxProblem) -> None:
        super().__init__(problem, "scaled identity: no quadratic term is left after merging, z = y / a")

    def solve(self, call: ProxCall, y: torch.Tensor, a: torch.Tensor | float) -> torch.Tensor:
        a_tensor = _weight_tensor(a, y)
        if bool((a_tensor <= 0).any()):
            raise InvalidInputError(
                f"the merged quadratic weight a = lam + (weights of the identity quadratic terms) is "
                f"{float(a_tensor.min()):.4g} <= 0, so the prox objective is unbounded below. Increase lam."
            )
        return y / _expand_trailing(a, y.ndim - 1)

    def fast_path(self) -> Callable[[torch.Tensor, float], torch.Tensor] | None:
        return self._fast_from_solve()


class ConstantHessianProx(QuadraticProx):
    """Constant quadratic terms: cached Cholesky for a float ``a``, cached eigendecomposition otherwise."""

    def __init__(
        self, problem: ProxProblem, hessian: torch.Tensor, linear: torch.Tensor | None, cholesky: bool
    ) -> None:
        size = hessian.shape[-1]
        if cholesky:
            self.route = "cached Cholesky"
            summary = (
                f"cached Cholesky: z = (a I + H)^{{-1}} (y - h) with the constant {size} x {size} matrix a I + H "
                "factored once per value of a, dtype and device; a call costs one triangular solve pair"
            )
        else:
            self.route = "cached eigendecomposition"
            summary = (
                f"cached eigendecomposition: z = Q diag(1 / (a + mu)) Q^T (y - h) with the constant "
                f"{size} x {size} H = Q diag(mu) Q^T decomposed once, because a is a tensor"
            )
        super().__init__(problem, summary)
        self.hessian = hessian
        self.factors = _FactorCache(hessian, "merged quadratic a I + H")
        self.linear = None if linear is None else _TensorCache(linear)
        self._eigen: _TensorCache | None = None

    def solve(self, call: ProxCall, y: torch.Tensor, a: torch.Tensor | float) -> torch.Tensor:
        rhs = y if self.linear is None else y - self.linear.get(y)[0]
        if isinstance(a, float):
            return _cholesky_solve_rows(self.factors.factor(a, y), rhs)
        return self._solve_eigen(rhs, a)

    def _solve_eigen(self, rhs: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        if self._eigen is None:
            with torch.inference_mode(False), torch.no_grad():
                eigenvalues, eigenvectors = torch.linalg.eigh(self.hessian)
            self._eigen = _TensorCache(eigenvalues, eigenvectors)
        eigenvalues, eigenvectors = self._eigen.get(rhs)

        # The smallest eigenvalue of a I + H is a + min(mu).
        lowest = a.detach() + eigenvalues[0]
        if bool((lowest <= 0).any()):
            where = f" on batch items {torch.nonzero(lowest <= 0).flatten().tolist()[:10]}" if lowest.ndim else ""
            raise InvalidInputError(
                f"the merged quadratic a I + H is not positive definite{where} (smallest eigenvalue "
                f"{float(lowest.min()):.4g}), so the prox objective has no unique minimizer. Increase lam "
                "or the weights of the convex quadratic terms, or reduce the negatively weighted quadratic terms."
            )
        coordinates = rhs @ eigenvectors
        return (coordinates / (_expand_trailing(a, 1) + eigenvalues)) @ eigenvectors.transpose(-1, -2)

    def fast_path(self) -> Callable[[torch.Tensor, float], torch.Tensor] | None:
        return self._fast_from_solve()


class PerCallCholeskyProx(QuadraticProx):
    """``a I + H`` assembled and factored on every call (Parameters in the quadratic terms)."""

    route = "per-call Cholesky"

    def __init__(self, problem: ProxProblem) -> None:
        if problem.per_batch:
            summary = (
                "per-call Cholesky: z = (a I + H)^{-1} (y - h) with the (m n) x (m n) matrix a I + H of the "
                "flattened mini-batch assembled and factored on every call"
            )
        else:
            size = problem.variable.size
            summary = (
                f"per-call Cholesky: z = (a I + H)^{{-1}} (y - h) with the {size} x {size} matrix a I + H "
                "assembled and factored (batched) on every call"
            )
        super().__init__(problem, summary)

    def solve(self, call: ProxCall, y: torch.Tensor, a: torch.Tensor | float) -> torch.Tensor:
        template = call.x[0]
        hessian: torch.Tensor | None = None
        linear: torch.Tensor | None = None
        for term in self.problem.residual_terms:
            term_hessian, term_linear = term_quadratic(self.problem, term, call.values, template, call.lead_ndim)
            hessian = term_hessian if hessian is None else hessian + term_hessian
            if term_linear is not None:
                linear = term_linear if linear is None else linear + term_linear
        assert hessian is not None

        rows = y.reshape(y.shape[0], -1)
        if linear is not None:
            rows = rows - linear
        factor = _factor(_add_identity(hessian, a), "merged quadratic a I + H")
        return _cholesky_solve_rows(factor, rows).reshape(y.shape)


class _WoodburyTerm:
    """One ``c ||G^T u||^2`` term with ``u = s z + t`` (``form``) or a general affine ``u``."""

    def __init__(self, term: Term, form: ScaledVariable | None) -> None:
        atom = term.atom
        assert isinstance(atom, QuadForm)
        self.term = term
        self.atom = atom
        self.form = form
        self.rank = int(atom.matrix.shape[1])  # type: ignore[arg-type]


class WoodburyProx(QuadraticProx):
    """Low-rank ``H = V diag(w) V^T`` solved through a ``k x k`` system (Woodbury identity)."""

    route = "Woodbury"

    def __init__(self, problem: ProxProblem, terms: list[_WoodburyTerm]) -> None:
        self.terms = terms
        self.rank = sum(item.rank for item in terms)
        self.constant_weights = all(item.term.coefficient.is_constant for item in terms)
        size = problem.variable.size
        method = "Cholesky" if self.constant_weights else "LU, because a Parameter weight makes it unsymmetric"
        summary = (
            f"Woodbury rank {self.rank}: z = (1/a) (r - V (a I_k + diag(w) V^T V)^{{-1}} diag(w) V^T r), "
            f"r = y - h, solving a {self.rank} x {self.rank} system ({method}; one per sample when G or a "
            f"varies per sample) in place of {size} x {size}"
        )
        super().__init__(problem, summary)

    def _factors(self, call: ProxCall) -> tuple[list[torch.Tensor], list[torch.Tensor | float], torch.Tensor | None]:
        """Return ``V_j`` (``(*lead, d, k_j)``), ``w_j = 2 c_j`` and the linear part ``h`` (or None)."""
        template = call.x[0]
        variable = self.problem.variable
        factors: list[torch.Tensor] = []
        weights: list[torch.Tensor | float] = []
        linear: torch.Tensor | None = None
        for item in self.terms:
            matrix = evaluate(item.atom.matrix, call.values, template)
            offset: torch.Tensor | None = None
            if item.form is not None:
                factor = item.form.scale * matrix
                if item.form.offset is not None:
                    offset = _offset_value(item.form.offset, call.values, template, (matrix.shape[-2],))
            else:
                coefficients, offset = affine_coefficients(
                    item.atom.argument, id(variable), call.values, template, call.lead_ndim
                )
                factor = coefficients.transpose(-1, -2) @ matrix
            weight = 2.0 * item.term.coefficient.value(call.values, template)

            if offset is not None:
                # The term's linear part is h_j = w_j V_j G_j^T t_j for the argument offset t_j.
                projected = (offset.unsqueeze(-2) @ matrix).squeeze(-2)
                part = _expand_trailing(weight, 1) * (factor @ projected.unsqueeze(-1)).squeeze(-1)
                linear = part if linear is None else linear + part
            factors.append(factor)
            weights.append(weight)
        return factors, weights, linear

    def solve(self, call: ProxCall, y: torch.Tensor, a: torch.Tensor | float) -> torch.Tensor:
        a_tensor = _weight_tensor(a, y)
        if bool((a_tensor <= 0).any()):
            raise InvalidInputError(
                f"the merged quadratic weight a = {float(a_tensor.min()):.4g} <= 0, but the quad_form terms have "
                f"rank {self.rank} < n = {y.shape[-1]}, so a I + H is singular or indefinite and the prox "
                "objective has no unique minimizer. Increase lam."
            )
        factors, weights, linear = self._factors(call)
        rhs = y if linear is None else y - linear

        if self.constant_weights:
            # Constant weights are floats >= 0, so sqrt(w) folds into a factor U with U U^T = H.
            scaled = [factor * math.sqrt(float(weight)) for factor, weight in zip(factors, weights, strict=True)]
            low_rank = _concat_last(scaled, 2)
            projected = torch.einsum("...dk,...d->...k", low_rank, rhs)
            system = _add_identity(low_rank.transpose(-1, -2) @ low_rank, a)
            inner = _cholesky_solve_rows(_factor(system, "k x k Woodbury system a I_k + U^T U"), projected)
        else:
            low_rank = _concat_last(factors, 2)
            column_weights = []
            for factor, weight in zip(factors, weights, strict=True):
                weight_tensor = _weight_tensor(weight, y)
                column_weights.append(weight_tensor.unsqueeze(-1).expand(*weight_tensor.shape, factor.shape[-1]))
            diagonal = _concat_last(column_weights, 1)
            projected = diagonal * torch.einsum("...dk,...d->...k", low_rank, rhs)
            system = _add_identity(diagonal.unsqueeze(-1) * (low_rank.transpose(-1, -2) @ low_rank), a)
            inner = _lu_solve_rows(system, projected)

        correction = torch.einsum("...dk,...k->...d", low_rank, inner)
        return (rhs - correction) / _expand_trailing(a, 1)


def _concat_last(tensors: list[torch.Tensor], own_ndim: int) -> torch.Tensor:
    """Concatenate along the last dim after broadcasting the dims before the ``own_ndim`` own ones."""
    if len(tensors) == 1:
        return tensors[0]
    lead = torch.broadcast_shapes(*(t.shape[: t.ndim - own_ndim] for t in tensors))
    return torch.cat([t.expand(*lead, *t.shape[t.ndim - own_ndim :]) for t in tensors], dim=-1)


def _offset_value(expr: Expression, values: Values, template: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Evaluate an argument's offset and broadcast it to ``(*lead, *shape)``.

    An offset is either of the argument's shape or a scalar (the DSL allows nothing else).
    """
    value = evaluate(expr, values, template)
    lead = value.shape[: value.ndim - expr.ndim]
    value = value.reshape(*lead, *(1,) * (len(shape) - expr.ndim), *value.shape[value.ndim - expr.ndim :])
    return value.expand(*lead, *shape)


_ROW_SYSTEM = "row Laplacian system a I_m + sum_k 2 c_k s_k^2 M_k"


class RowLaplacianProx(QuadraticProx):
    """Per-batch ``laplacian_quadratic`` terms: one ``m x m`` system for all ``n`` columns."""

    route = "row Laplacian system"

    def __init__(
        self, problem: ProxProblem, forms: list[ScaledVariable], constant: torch.Tensor | None, cached: bool
    ) -> None:
        self.forms = forms
        self.constant_matrix = constant
        self.factors = None if constant is None else _FactorCache(constant, _ROW_SYSTEM)
        how = (
            "factored once per value of a, dtype and device because W, the weights and a are constant"
            if constant is not None and cached
            else "factored on every call"
        )
        summary = (
            "row Laplacian system: (a I_m + sum_k 2 c_k s_k^2 M_k) Z = Y - sum_k 2 c_k s_k M_k T_k with "
            f"M_k = D_r + D_c - W_k - W_k^T, one m x m system for all n columns, {how}"
        )
        super().__init__(problem, summary)

    def solve(self, call: ProxCall, y: torch.Tensor, a: torch.Tensor | float) -> torch.Tensor:
        rows = y.shape[-2]
        if self.constant_matrix is not None and self.constant_matrix.shape[-1] != rows:
            fixed = self.constant_matrix.shape[-1]
            raise ShapeError(
                f"the input has a mini-batch of {rows} rows, but the constant laplacian_quadratic weights "
                f"are {fixed} x {fixed}; pass mini-batches of {fixed} rows, or declare W as a "
                "Parameter((BATCH, BATCH), nonneg=True) and pass it per call."
            )
        template = call.x[0]
        rhs = y
        system: torch.Tensor | None = None
        for term, form in zip(self.problem.residual_terms, self.forms, strict=True):
            if self.constant_matrix is not None and form.offset is None:
                continue
            atom = term.atom
            assert isinstance(atom, LaplacianQuadratic)
            laplacian = LaplacianQuadratic.laplacian_matrix(evaluate(atom.weights, call.values, template))
            weight = 2.0 * term.coefficient.value(call.values, template)
            if self.constant_matrix is None:
                part = _expand_trailing(weight * form.scale**2, 2) * laplacian
                system = part if system is None else system + part
            if form.offset is not None:
                offset = _offset_value(form.offset, call.values, template, tuple(template.shape))
                rhs = rhs - _expand_trailing(weight * form.scale, 2) * (laplacian @ offset)

        if self.factors is not None and isinstance(a, float):
            factor = self.factors.factor(a, y)
        else:
            if system is None:
                assert self.constant_matrix is not None
                system = self.constant_matrix.to(dtype=y.dtype, device=y.device)
            factor = _factor(_add_identity(system, a), _ROW_SYSTEM)
        return torch.cholesky_solve(rhs, factor)


# -- route choice ----------------------------------------------------------------------


def _unsupported_reason(problem: ProxProblem) -> str | None:
    if problem.constraints:
        sets = ", ".join(repr(c) for c in problem.constraints)
        return f"the quadratic backend solves unconstrained problems only, but the problem has constraints [{sets}]"
    other = [term.describe() for term in problem.residual_terms if term.kind != "quadratic"]
    if other:
        return f"the terms [{', '.join(other)}] are not quadratic, so no linear system gives the prox map"
    if not problem.is_convex:
        return "the problem is not convex: " + "; ".join(problem.convexity_issues)
    return None


def _woodbury_terms(problem: ProxProblem) -> list[_WoodburyTerm] | None:
    """Return the terms as low-rank factors when the Woodbury route applies, else None."""
    items: list[_WoodburyTerm] = []
    for term in problem.residual_terms:
        atom = term.atom
        if not isinstance(atom, QuadForm) or not atom.factored or term.coefficient.sign <= 0:
            return None
        if atom.matrix.shape[1] is BATCH:
            return None
        items.append(_WoodburyTerm(term, scaled_variable_form(atom.argument, problem.variable)))
    if not items or sum(item.rank for item in items) >= problem.variable.size:
        return None
    return items


def _row_laplacian_forms(problem: ProxProblem) -> list[ScaledVariable] | None:
    """Return each term's ``s Z + T`` when all are row Laplacians of the per-batch variable."""
    forms: list[ScaledVariable] = []
    for term in problem.residual_terms:
        atom = term.atom
        if not isinstance(atom, LaplacianQuadratic) or atom.argument.ndim != 2:
            return None
        form = scaled_variable_form(atom.argument, problem.variable)
        if form is None or form.scale == 0:
            return None
        forms.append(form)
    return forms


def _constant_row_matrix(problem: ProxProblem, forms: list[ScaledVariable]) -> torch.Tensor | None:
    """Return ``sum_k 2 c_k s_k^2 M_k`` in float64 when every ``W_k`` and ``c_k`` is constant."""
    total: torch.Tensor | None = None
    for term, form in zip(problem.residual_terms, forms, strict=True):
        atom = term.atom
        assert isinstance(atom, LaplacianQuadratic)
        if not term.coefficient.is_constant or not isinstance(atom.weights, Constant):
            return None
        weights = torch.as_tensor(atom.weights.value, dtype=torch.float64)
        part = 2.0 * term.coefficient.constant * form.scale**2 * LaplacianQuadratic.laplacian_matrix(weights)
        total = part if total is None else total + part
    return total


def _constant_hessian(problem: ProxProblem) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return ``(H, h)`` of the constant quadratic terms in float64 on the CPU."""
    template = torch.zeros(resolve_shape(problem.variable.shape, None), dtype=torch.float64)
    hessian: torch.Tensor | None = None
    linear: torch.Tensor | None = None
    for term in problem.residual_terms:
        term_hessian, term_linear = term_quadratic(problem, term, {}, template, 0)
        hessian = term_hessian if hessian is None else hessian + term_hessian
        if term_linear is not None:
            linear = term_linear if linear is None else linear + term_linear
    assert hessian is not None
    return hessian, linear


def _check_compile_time(matrix: torch.Tensor, a: float | None, lam: float | None, what: str) -> None:
    """Raise Unsupported when ``a I + matrix`` is known now and not positive definite."""
    if a is None:
        return
    lowest = _smallest_eigenvalue(_add_identity(matrix, a))
    if lowest <= 0:
        raise Unsupported(
            f"at lam = {lam:g} the merged quadratic a I + H ({what}, a = {a:g}) has smallest eigenvalue "
            f"{lowest:.4g} <= 0, so the objective is not strongly convex; increase lam or reduce the "
            "negatively weighted quadratic terms"
        )


class QuadraticBackend(Backend):
    """Compiles unconstrained problems whose residual terms are all PSD quadratics."""

    name = "quadratic"

    def compile(self, problem: ProxProblem, lam: float | None, options: BackendOptions) -> CompiledProx:
        reason = _unsupported_reason(problem)
        if reason is not None:
            raise Unsupported(reason)
        a = problem.identity_weight(lam) if lam is not None else None

        if not problem.residual_terms:
            if a is not None and a <= 0:
                raise Unsupported(
                    f"at lam = {lam:g} the merged quadratic weight a = {a:g} <= 0, so the objective is unbounded below"
                )
            return ScaledIdentityProx(problem)

        if problem.per_batch:
            forms = _row_laplacian_forms(problem)
            if forms is not None:
                constant = _constant_row_matrix(problem, forms)
                if constant is not None:
                    _check_compile_time(constant, a, lam, "row Laplacian system")
                return RowLaplacianProx(problem, forms, constant, cached=a is not None)
            return PerCallCholeskyProx(problem)

        woodbury = _woodbury_terms(problem)
        if woodbury is not None:
            if a is not None and a <= 0:
                raise Unsupported(
                    f"at lam = {lam:g} the merged quadratic weight a = {a:g} <= 0 and the quad_form terms "
                    "have rank below n, so a I + H is singular or indefinite"
                )
            return WoodburyProx(problem, woodbury)

        if all(term_is_constant(term) for term in problem.residual_terms):
            hessian, linear = _constant_hessian(problem)
            _check_compile_time(hessian, a, lam, "constant quadratic terms")
            return ConstantHessianProx(problem, hessian, linear, cholesky=a is not None)
        return PerCallCholeskyProx(problem)


register_backend(QuadraticBackend())
