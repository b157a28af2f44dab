"""The cvxpy backend: a DPP cvxpy problem run through ``cvxpylayers.torch.CvxpyLayer``.

The problem solved is the merged form (*) of :mod:`proxopt.compile.analysis`,

    minimize_z  R'(z) + (a / 2) ||z||^2 - y^T z   subject to  z in C,

with ``y`` and ``a`` as cvxpy Parameters computed in torch, so the problem is DPP in the
runtime data and gradients with respect to ``x``, ``lam`` and merged Parameters pass
through torch's autograd. When ``R'`` contains a quadratic term with a negative
coefficient, every non-identity quadratic term is merged too: ``a I + sum_k H_k = L L^T``
is factored by Cholesky in torch and the objective uses ``(1/2) ||L^T z||^2``.

Solver: diffcp with tight tolerances and, for small cone programs, the dense derivative
mode (an exact solve of diffcp's linear system), because diffcp's defaults (``lsqr`` mode,
default tolerances) leave errors of 1e-4..1e-2 in values and gradients; larger programs
use ``lsqr`` (see :data:`DENSE_MODE_LIMIT`). Which solver depends on the cones, as
measured on the activation identities (cvxpy 1.9, diffcp 1.1, Clarabel 0.11, SCS 3.3):

* no exponential cone (QPs and second-order cones): SCS at ``eps = 1e-10``, values and
  gradients to about 1e-8 (``eps = 1e-12`` reached 1e-11 but hit the iteration limit on
  some problems); Clarabel stalls near 1e-5 on the second-order cone form of the
  proximity term;
* separable problems with exponential cones (sigmoid, tanh): SCS with a fixed scale,
  solved one coordinate at a time (below); values to 1e-10, gradients to 2e-6;
* other problems with exponential cones (softmax): Clarabel at gap tolerance 1e-12,
  values to about 2e-7, because an interior-point gap ``eps`` bounds the primal error
  only by about ``sqrt(eps)``.

Separable problems with exponential cones are solved as one scalar problem per
coordinate, because diffcp's derivative degrades by O(1) when several exponential-cone
blocks of one conic program lie near the cone boundary (tanh at ``|x|`` near 8).
Override any setting with ``ProxLayer(..., solver_args={...})``; naming another
``solve_method`` starts from that solver's defaults. The solve runs on the CPU in
float64; results return to the input's device and dtype.

When the merged weight ``a`` is exactly zero for every item (sigmoid, tanh and softmax
at ``lam = 1``), a second cvxpy problem without the ``(a/2)||z||^2`` term is used: with
``a = 0`` that term's epigraph variable is not determined by the objective, the conic
program is degenerate, and diffcp's derivative becomes wrong by O(1).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import cvxpy as cp
import diffcp
import torch

from proxopt.backends.base import Backend, BackendOptions, CompiledProx, ProxCall, Unsupported, register_backend
from proxopt.compile.analysis import ProxProblem, Term, resolve_shape, scaled_variable_form
from proxopt.compile.lowering import constraint_violation, lower_constraint, lower_expression
from proxopt.compile.quadratic_terms import term_quadratic
from proxopt.dsl.atoms import (
    BinaryNegEntropy,
    Logistic,
    NegEntropy,
    PartExpression,
)
from proxopt.dsl.expressions import Constant, Parameter
from proxopt.dsl.sets import Box, Inequality
from proxopt.errors import InvalidInputError, NotDCPError, SolverFailedError, SolverWarning

__all__ = ["CvxpyBackend", "SOLVER_DEFAULTS", "solver_args_for", "is_coordinatewise"]

_SCS_TIGHT: dict[str, Any] = {
    "solve_method": "SCS",
    "eps_abs": 1e-10,
    "eps_rel": 1e-10,
    "max_iters": 100_000,
}

SOLVER_DEFAULTS: dict[str, dict[str, Any]] = {
    "SCS": _SCS_TIGHT,
    "SCS-fixed-scale": {**_SCS_TIGHT, "scale": 1.0, "adaptive_scale": False},
    "Clarabel": {
        "solve_method": "Clarabel",
        "tol_gap_abs": 1e-12,
        "tol_gap_rel": 1e-12,
        "tol_feas": 1e-12,
        "tol_ktratio": 1e-10,
        "max_iter": 500,
    },
}
"""diffcp settings by case (see the module docstring), chosen so that the activation
identities verify to 1e-6 in value and 1e-5 in gradient (``proxopt verify``)."""

_EXP_CONE_ATOMS = (cp.entr, cp.logistic, cp.log, cp.exp, cp.kl_div, cp.rel_entr, cp.log_sum_exp)


def _cone_program_size(problem: cp.Problem) -> int:
    """Return rows + columns of the constraint matrix of the problem's conic form."""
    data, _, _ = problem.get_problem_data(cp.SCS, solver_opts={"use_quad_obj": False})
    rows, columns = data["A"].shape
    return int(rows + columns)


def solver_args_for(problem: cp.Problem, coordinatewise: bool, overrides: dict[str, Any]) -> dict[str, Any]:
    """Return diffcp arguments: the defaults for the problem's cones, then ``overrides``."""
    method = overrides.get("solve_method")
    if method is None:
        uses_exp_cone = any(issubclass(atom, _EXP_CONE_ATOMS) for atom in problem.atoms())
        if not uses_exp_cone:
            method = "SCS"
        else:
            method = "SCS-fixed-scale" if coordinatewise else "Clarabel"
    defaults = SOLVER_DEFAULTS.get(method, {"solve_method": method})
    return {**defaults, **overrides}


DENSE_MODE_LIMIT = 300
"""Largest cone program (rows + columns of its constraint matrix) differentiated with
diffcp's dense mode; larger ones use ``lsqr``. For ``0.1 * norm1(z), z >= 0`` with n = 64
(387 rows and columns) on 2 CPU cores, dense mode took 13 ms per item for forward
and backward with gradients exact to 3e-12, ``lsqr`` 6 ms with gradients to 3e-6."""

FEASIBILITY_TOLERANCE = 1e-6
"""Largest constraint violation, relative to ``1 + max_i |z_i|``, accepted from the solver."""


class _Compiled:
    """The cvxpy problem and CvxpyLayer for one resolved shape."""

    def __init__(
        self,
        problem: ProxProblem,
        batch_size: int | None,
        with_quadratic: bool,
        overrides: dict[str, Any],
        coordinatewise: bool = False,
    ) -> None:
        from cvxpylayers.torch import CvxpyLayer

        # A coordinatewise problem lowers the same expressions on a variable of one entry,
        # which is valid because every constant in a separable problem is a scalar.
        shape = (1,) if coordinatewise else resolve_shape(problem.variable.shape, batch_size)
        self.shape = shape
        z = cp.Variable(shape)
        self.z = z
        self.merge_quadratics = any(term.coefficient.sign < 0 for term in problem.terms_of_kind("quadratic"))

        leaves: dict[int, Any] = {id(problem.variable): z}
        self.user_parameters: list[Parameter] = []
        used = _parameters_used(problem, self.merge_quadratics)
        for parameter in problem.parameters.values():
            if parameter.name not in used:
                continue
            cvx = cp.Parameter(resolve_shape(parameter.shape, batch_size), nonneg=parameter.nonneg, name=parameter.name)
            leaves[id(parameter)] = cvx
            self.user_parameters.append(parameter)

        self.y = cp.Parameter(shape, name="y")
        objective_terms: list[Any] = [-cp.sum(cp.multiply(self.y, z))]
        size = math.prod(shape)
        if self.merge_quadratics:
            self.factor = cp.Parameter((size, size), name="L")
            self.a = None
            objective_terms.append(0.5 * cp.sum_squares(self.factor.T @ cp.vec(z, order="C")))
        else:
            self.factor = None
            self.a = cp.Parameter(nonneg=True, name="a") if with_quadratic else None
            if self.a is not None:
                objective_terms.append(0.5 * self.a * cp.sum_squares(z))

        not_dpp: list[str] = []
        for term in problem.residual_terms:
            if self.merge_quadratics and term.kind == "quadratic":
                continue
            lowered = _lower_term(term, leaves)
            if not lowered.is_dpp():
                not_dpp.append(term.describe())
            objective_terms.append(lowered)
        if not_dpp:
            raise Unsupported(
                "the cvxpy form is not DPP: " + "; ".join(not_dpp) + " (a Parameter multiplies "
                "another Parameter); fold the product into one Parameter",
                not_dcp=True,
            )

        constraints = [c for constraint in problem.constraints for c in lower_constraint(constraint, z, leaves)]
        self.problem = cp.Problem(cp.Minimize(cp.sum(cp.hstack(objective_terms))), constraints)
        if not self.problem.is_dcp(dpp=True):
            raise Unsupported(
                "cvxpy rejects the merged problem as not DPP: " + _dcp_culprits(self.problem),
                not_dcp=True,
            )
        runtime = [self.y] + [p for p in (self.factor, self.a) if p is not None]
        self.cvxpy_parameters = runtime + [leaves[id(p)] for p in self.user_parameters]

        solver_args = solver_args_for(self.problem, coordinatewise, overrides)
        solver_args.setdefault("mode", "dense" if _cone_program_size(self.problem) <= DENSE_MODE_LIMIT else "lsqr")
        self.solver_args = solver_args
        # diffcp passes every argument but `mode` to the solver, and cvxpylayers calls the
        # solve-only path (which would forward `mode` too) when no gradient is needed, so
        # `mode` is added per call, only for calls that build a graph.
        self.derivative_args = {"mode": solver_args["mode"]}
        solver_args = {key: value for key, value in solver_args.items() if key != "mode"}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.layer = CvxpyLayer(
                self.problem,
                parameters=self.cvxpy_parameters,
                variables=[z],
                solver_args=solver_args,
            )


def _parameters_used(problem: ProxProblem, merge_quadratics: bool) -> set[str]:
    """Return names of Parameters appearing in the cvxpy problem (not only in merged data)."""
    used: set[str] = set()
    for term in problem.residual_terms:
        if merge_quadratics and term.kind == "quadratic":
            continue
        used.update(p.name for p in term.expr.parameters())
        used.update(f.name for f in term.coefficient.factors if isinstance(f, Parameter))
    for constraint in problem.constraints:
        used.update(p.name for p in constraint.parameters())
    return used


def _lower_term(term: Term, leaves: dict[int, Any]) -> Any:
    expr = lower_expression(term.expr, leaves)
    coefficient: Any = term.coefficient.constant
    for factor in term.coefficient.factors:
        coefficient = coefficient * lower_expression(factor, leaves)
    return coefficient * expr


def _dcp_culprits(problem: cp.Problem) -> str:
    """Name the smallest subexpressions of the objective that break DCP."""
    culprits: list[str] = []
    stack = [problem.objective.expr]
    while stack:
        node = stack.pop()
        if node.is_dcp(dpp=True):
            continue
        children = [arg for arg in node.args if not arg.is_dcp(dpp=True)]
        if children:
            stack.extend(children)
        else:
            culprits.append(str(node))
    return "; ".join(culprits[:5]) or str(problem.objective)


def _is_scalar_affine_of_variable(expr: Any, problem: ProxProblem) -> bool:
    form = scaled_variable_form(expr, problem.variable)
    if form is None:
        return False
    offset = form.offset
    # The offset of `2 * z - 1` is the expression (-1) * 1, a scalar built from constants.
    return offset is None or (offset.shape == () and not offset.parameters() and not offset.depends_on_variable)


def is_coordinatewise(problem: ProxProblem) -> bool:
    """Return whether to solve the problem one coordinate at a time (see the module docstring).

    True for per-sample problems with exponential-cone terms whose terms and constraints
    all act entrywise with scalar constants and no Parameters.
    """
    if problem.per_batch or problem.parameters:
        return False
    if any(term.kind == "quadratic" for term in problem.terms):
        return False
    uses_exp_cone = False
    for term in problem.residual_terms:
        atom = term.atom
        if atom is None or not atom.separable or not term.coefficient.is_constant:
            return False
        argument = atom.argument.args[0] if isinstance(atom.argument, PartExpression) else atom.argument
        if not _is_scalar_affine_of_variable(argument, problem):
            return False
        uses_exp_cone |= isinstance(atom, (NegEntropy, BinaryNegEntropy, Logistic))
    for term in problem.terms_of_kind("identity_quadratic"):
        offset = term.form.offset if term.form is not None else None
        if offset is not None and not (isinstance(offset, Constant) and offset.shape == ()):
            return False
    if problem.terms_of_kind("linear"):
        return False
    for constraint in problem.constraints:
        if isinstance(constraint, Box):
            if any(value.shape != () for value in constraint.data().values()):
                return False
        elif isinstance(constraint, Inequality):
            if not all(_is_scalar_affine_of_variable(side, problem) for side in (constraint.left, constraint.right)):
                return False
        else:
            return False
    return uses_exp_cone


class CvxpyProx(CompiledProx):
    """A prox map computed by cvxpylayers; see the module docstring."""

    backend = "cvxpy"

    def __init__(self, problem: ProxProblem, overrides: dict[str, Any]) -> None:
        self.problem = problem
        self.overrides = overrides
        self.coordinatewise = is_coordinatewise(problem)
        self._compiled: dict[tuple[int | None, bool], _Compiled] = {}
        notes = []
        if self.coordinatewise:
            notes.append(
                "separable with exponential cones: solved as one scalar cvxpy problem per "
                "coordinate, because diffcp's derivative degrades when several exponential-cone "
                "blocks of one conic program are near the cone boundary"
            )
        if not problem.per_batch:
            compiled = self.compiled_for(None, with_quadratic=True)
            args = compiled.solver_args
            notes.append(
                f"solved on the CPU in float64 by diffcp with {args.get('solve_method')}; results "
                "return to the input's device and dtype"
            )
            notes.append(
                "gradients by implicit differentiation of the conic program (diffcp, "
                f"mode={args.get('mode', 'lsqr')!r})"
            )
        else:
            notes.append("a per-batch variable: one cvxpy problem is compiled per mini-batch size")
        super().__init__(f"cvxpy problem: {problem.describe()}", notes)

    def compiled_for(self, batch_size: int | None, with_quadratic: bool) -> _Compiled:
        key = (batch_size, with_quadratic)
        compiled = self._compiled.get(key)
        if compiled is None:
            try:
                compiled = _Compiled(self.problem, batch_size, with_quadratic, self.overrides, self.coordinatewise)
            except Unsupported as rejection:
                if not self._compiled and batch_size is None:
                    raise  # at construction: the plan turns it into NotDCPError or tries others
                # A per-batch problem is compiled at its first call, where the plan is fixed.
                raise NotDCPError(
                    f"the cvxpy backend cannot compile {self.problem.describe()}: {rejection.reason}."
                ) from None
            self._compiled[key] = compiled
        return compiled

    def __call__(self, call: ProxCall) -> torch.Tensor:
        x = call.x
        _check_finite(x)
        y, a = call.merged(self.problem)
        merge = any(term.coefficient.sign < 0 for term in self.problem.terms_of_kind("quadratic"))
        a_tensor = torch.as_tensor(a, dtype=x.dtype, device=x.device)
        if not merge and bool((a_tensor < 0).any()):
            raise InvalidInputError(
                "the merged quadratic weight a = lam + (weights of the identity quadratic terms) "
                f"is {float(a_tensor.min()):.4g} < 0, so the objective is not convex as written "
                "for cvxpy. Increase lam (sigmoid, tanh and softmax need lam >= 1) or use "
                "backend='closed_form' where one exists."
            )
        with_quadratic = merge or not bool((a_tensor == 0).all())
        compiled = self.compiled_for(call.batch_size, with_quadratic)
        batch = x.shape[0]
        if self.coordinatewise:
            entries = x.shape[1]
            y = y.reshape(batch * entries, 1)
            if a_tensor.ndim:
                a_tensor = a_tensor.repeat_interleave(entries)
            batch = batch * entries

        runtime: list[torch.Tensor] = [_to_solver(y)]
        if compiled.merge_quadratics:
            y_extra = self._quadratic_offsets(call)
            if y_extra is not None:
                runtime[0] = runtime[0] - _to_solver(y_extra)
            runtime.append(_to_solver(self._cholesky_factor(call, a, compiled)))
        elif with_quadratic:
            runtime.append(_to_solver(a_tensor))
        for parameter in compiled.user_parameters:
            runtime.append(_to_solver(call.tensors[parameter.name]))
        runtime = [_batch_for_layer(t, batch, compiled, i) for i, t in enumerate(runtime)]

        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in runtime)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                (solution,) = compiled.layer(*runtime, solver_args=compiled.derivative_args if needs_grad else {})
        except (diffcp.SolverError, ValueError, ArithmeticError) as error:
            failed, status = self._diagnose(compiled, runtime, batch, range(batch))
            failed = sorted({item // (batch // x.shape[0]) for item in failed})
            raise SolverFailedError(
                f"the cvxpy backend failed: {error}. Solver status {status!r} on batch items "
                f"{failed[:10]}{' ...' if len(failed) > 10 else ''}. Check that the constraint "
                "set is nonempty for these inputs, or loosen solver_args.",
                status,
                failed,
            ) from error
        inaccurate = [str(w.message) for w in caught if "naccurate" in str(w.message)]
        if inaccurate:
            warnings.warn(
                f"the cvxpy backend's solver reported an inaccurate solution ({inaccurate[0]}) on "
                f"{len(inaccurate)} item(s) of a batch of {batch}; results may be off by more than "
                "the solver tolerance. Raise max_iters or loosen eps in solver_args.",
                SolverWarning,
                stacklevel=4,
            )
        solution = solution.reshape(x.shape)
        self._check_solution(solution, call, compiled, runtime)
        return solution.to(dtype=x.dtype, device=x.device)

    def _cholesky_factor(self, call: ProxCall, a: torch.Tensor | float, compiled: _Compiled) -> torch.Tensor:
        """Return ``L`` with ``L L^T = a I + sum_k H_k`` over the quadratic terms."""
        size = math.prod(compiled.shape)
        hessian = call.x.new_zeros(size, size)
        for term in self.problem.terms_of_kind("quadratic"):
            hessian = hessian + term_quadratic(self.problem, term, call.values, call.x[0], call.lead_ndim)[0]
        a_value = torch.as_tensor(a, dtype=call.x.dtype, device=call.x.device)
        identity = torch.eye(size, dtype=call.x.dtype, device=call.x.device)
        matrix = a_value.reshape(a_value.shape + (1, 1)) * identity + hessian
        factor, info = torch.linalg.cholesky_ex(matrix)
        if bool((info != 0).any()):
            lowest = float(torch.linalg.eigvalsh(matrix.detach()).min())
            raise InvalidInputError(
                "the merged quadratic lam * I + (quadratic terms of R) is not positive definite "
                f"(smallest eigenvalue {lowest:.4g}), so the objective is not convex. Increase "
                "lam or the weights of the convex quadratic terms."
            )
        return factor

    def _quadratic_offsets(self, call: ProxCall) -> torch.Tensor | None:
        """Return the linear parts ``sum_k h_k`` of the merged quadratic terms, or None."""
        total: torch.Tensor | None = None
        for term in self.problem.terms_of_kind("quadratic"):
            linear = term_quadratic(self.problem, term, call.values, call.x[0], call.lead_ndim)[1]
            if linear is not None:
                total = linear if total is None else total + linear
        if total is None:
            return None
        return total.reshape(total.shape[:-1] + call.x.shape[1:])

    def _check_solution(
        self, solution: torch.Tensor, call: ProxCall, compiled: _Compiled, runtime: list[torch.Tensor]
    ) -> None:
        """Raise SolverFailedError for items with non-finite or infeasible solutions."""
        batch = solution.shape[0]
        bad = ~torch.isfinite(solution.reshape(batch, -1)).all(-1)
        values64 = {key: value.detach().double().cpu() for key, value in call.values.items()}
        for constraint in self.problem.constraints:
            violation = constraint_violation(constraint, solution.detach(), values64, self.problem.variable)
            scale = 1.0 + solution.detach().abs().reshape(batch, -1).amax(-1)
            bad |= violation > FEASIBILITY_TOLERANCE * scale
        if bool(bad.any()):
            items = [int(i) for i in torch.nonzero(bad).flatten()]
            per_item = runtime[0].shape[0] // batch if runtime[0].ndim > 1 else 1
            solver_items = [item * per_item + j for item in items for j in range(per_item)]
            failed, status = self._diagnose(compiled, runtime, runtime[0].shape[0], solver_items)
            failed = sorted({item // per_item for item in failed})
            raise SolverFailedError(
                f"the cvxpy backend returned invalid solutions (non-finite or violating the "
                f"constraints) for batch items {items[:10]}{' ...' if len(items) > 10 else ''}; "
                f"solver status {status!r}. Check that the constraint set is nonempty for "
                "these inputs.",
                status,
                failed or items,
            )

    @staticmethod
    def _diagnose(compiled: _Compiled, runtime: list[torch.Tensor], batch: int, items: Any) -> tuple[list[int], str]:
        """Re-solve ``items`` one by one with plain cvxpy to find failures and a status."""
        failed: list[int] = []
        first_status = "unknown"
        for item in items:
            for parameter, tensor in zip(compiled.cvxpy_parameters, runtime, strict=True):
                value = tensor[item] if tensor.ndim > len(parameter.shape) else tensor
                parameter.value = value.detach().cpu().numpy().reshape(parameter.shape)
            try:
                compiled.problem.solve(solver=cp.CLARABEL)
                status = str(compiled.problem.status)
            except cp.error.SolverError as error:
                status = f"solver error: {error}"
            if status != cp.OPTIMAL:
                failed.append(int(item))
                if first_status == "unknown":
                    first_status = status
        if not failed:
            failed = list(items)
            first_status = "optimal when re-solved by cvxpy; diffcp failed"
        return failed, first_status


def _to_solver(tensor: torch.Tensor) -> torch.Tensor:
    """Move a tensor to the CPU in float64 for diffcp, keeping it in the autograd graph."""
    return tensor.to(device="cpu", dtype=torch.float64)


def _batch_for_layer(tensor: torch.Tensor, batch: int, compiled: _Compiled, index: int) -> torch.Tensor:
    """Give every runtime tensor either its unbatched shape or a leading batch dim."""
    target = tuple(compiled.cvxpy_parameters[index].shape)
    if tuple(tensor.shape) == target:
        return tensor
    if tensor.ndim == len(target) + 1 and tensor.shape[0] in (1, batch):
        return tensor.expand(batch, *target)
    return tensor.reshape(batch, *target)


def _check_finite(x: torch.Tensor) -> None:
    finite = torch.isfinite(x.reshape(x.shape[0], -1)).all(-1)
    if not bool(finite.all()):
        items = [int(i) for i in torch.nonzero(~finite).flatten()]
        raise InvalidInputError(
            f"the input has non-finite entries (NaN or inf) in batch items {items[:10]}"
            f"{' ...' if len(items) > 10 else ''}; a solver-backed layer needs finite input. "
            "Check the layers before this one, or mask those items."
        )


class CvxpyBackend(Backend):
    name = "cvxpy"

    def compile(self, problem: ProxProblem, lam: float | None, options: BackendOptions) -> CompiledProx:
        if not problem.is_dcp:
            raise Unsupported("; ".join(problem.dcp_issues), not_dcp=True)
        if lam is not None:
            a = problem.identity_weight(lam)
            merges = any(term.coefficient.sign < 0 for term in problem.terms_of_kind("quadratic"))
            if a is not None and a < 0 and not merges:
                raise Unsupported(
                    f"at lam = {lam:g} the merged quadratic weight a = {a:g} is negative, so the "
                    "objective is not convex as written",
                    not_dcp=True,
                )
        return CvxpyProx(problem, dict(options.solver_args))


register_backend(CvxpyBackend())
