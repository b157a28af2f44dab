"""Analysis of a declared prox problem.

Given ``R`` and ``C``, analysis builds a :class:`ProxProblem` that the backends share:

1. It expands ``R`` into scaled terms ``c_k * phi_k`` (atoms, linear terms).
2. It merges every quadratic term whose Hessian is a multiple of the identity, and every
   linear term, with the proximity term. The objective becomes

       R'(z) + (a / 2) ||z||^2 - y^T z,                                        (*)

   where ``R'`` collects the remaining terms, ``a = lam + sum_k 2 c_k s_k^2`` for the
   terms ``c_k ||s_k z + t_k||^2`` and ``y = lam x - sum_k 2 c_k s_k t_k - sum_j c_j q_j``
   for the linear terms ``c_j q_j^T z``. A weakly convex ``R`` such as sigmoid's,
   ``z log z + (1 - z) log(1 - z) - z^2 / 2``, gives ``a = lam - 1 >= 0`` and a convex
   (*) even though ``R`` itself is not written in DCP form. ``a`` and ``y`` are computed
   in torch, so gradients reach ``x``, ``lam`` and every Parameter by autograd, and the
   cvxpy form of (*) stays DPP with ``a`` and ``y`` as its parameters.
3. It classifies the problem: convex or not, DCP as written after merging, and which
   terms or sets block each property, so that backends and error messages can name them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from proxopt.compile.evaluate import Values, constant_tensor, evaluate, linear_gradient
from proxopt.dsl.atoms import Atom, PartExpression, Smooth, SumSquares
from proxopt.dsl.expressions import (
    BATCH,
    AddExpression,
    Constant,
    Expression,
    MultiplyExpression,
    Parameter,
    Shape,
    Variable,
    format_shape,
)
from proxopt.dsl.sets import Constraint, Equality, Inequality, Set
from proxopt.errors import DeclarationError, InvalidInputError, ShapeError

__all__ = [
    "Coefficient",
    "Term",
    "ScaledVariable",
    "ProxProblem",
    "analyze",
    "scaled_variable_form",
]


@dataclass(frozen=True)
class Coefficient:
    """A term's scalar weight: ``constant`` times the product of ``factors``.

    ``factors`` are scalar expressions free of the variable, usually Parameters.
    """

    constant: float = 1.0
    factors: tuple[Expression, ...] = ()

    @property
    def sign(self) -> int:
        """Return +1 or -1 when the sign is known for every parameter value, else 0."""
        if self.constant == 0:
            return 0
        sign = 1 if self.constant > 0 else -1
        for factor in self.factors:
            if isinstance(factor, Parameter) and factor.nonneg:
                continue
            if isinstance(factor, Constant):
                sign *= 1 if float(factor.value) >= 0 else -1
                continue
            return 0
        return sign

    @property
    def is_constant(self) -> bool:
        return not self.factors

    def scaled(self, constant: float = 1.0, factor: Expression | None = None) -> Coefficient:
        factors = self.factors if factor is None else (*self.factors, factor)
        return Coefficient(self.constant * constant, factors)

    def value(self, values: Values, like: torch.Tensor) -> torch.Tensor | float:
        """Evaluate the coefficient: a float, or a tensor of shape ``(*lead,)``."""
        result: torch.Tensor | float = self.constant
        for factor in self.factors:
            result = result * evaluate(factor, values, like)
        return result

    def __repr__(self) -> str:
        parts = [] if self.constant == 1 and self.factors else [f"{self.constant:g}"]
        parts += [repr(factor) for factor in self.factors]
        return " * ".join(parts)


@dataclass(frozen=True)
class ScaledVariable:
    """An affine expression of the form ``scale * z + offset`` (``offset`` may be None)."""

    scale: float
    offset: Expression | None


def scaled_variable_form(expr: Expression, variable: Variable) -> ScaledVariable | None:
    """Return ``expr`` as ``s * z + t`` with a constant scalar ``s``, or None."""
    if expr is variable:
        return ScaledVariable(1.0, None)
    if not expr.depends_on_variable:
        return ScaledVariable(0.0, expr)
    if isinstance(expr, MultiplyExpression):
        factor = expr.factor
        if not (isinstance(factor, Constant) and factor.value.ndim == 0):
            return None
        inner = scaled_variable_form(expr.expr, variable)
        if inner is None:
            return None
        scale = float(factor.value)
        offset = None if inner.offset is None else MultiplyExpression(factor, inner.offset)
        return ScaledVariable(scale * inner.scale, offset)
    if isinstance(expr, AddExpression):
        forms = [scaled_variable_form(arg, variable) for arg in expr.args]
        if any(form is None for form in forms):
            return None
        offsets = [form.offset for form in forms if form is not None and form.offset is not None]
        offset: Expression | None = None
        for item in offsets:
            offset = item if offset is None else AddExpression(offset, item)
        scale = math.fsum(form.scale for form in forms if form is not None)
        return ScaledVariable(scale, offset)
    return None


@dataclass
class Term:
    """One scaled term ``coefficient * expr`` of the regularizer.

    Attributes:
        kind: ``"linear"`` (an affine scalar), ``"identity_quadratic"`` (``||s z + t||^2``,
            merged with the proximity term), ``"quadratic"`` (another PSD quadratic form)
            or ``"nonquadratic"``.
        form: for ``identity_quadratic`` terms and separable atoms of ``s z + t``, that form.
    """

    coefficient: Coefficient
    expr: Expression
    kind: str
    form: ScaledVariable | None = None

    @property
    def atom(self) -> Atom | None:
        return self.expr if isinstance(self.expr, Atom) else None

    def describe(self) -> str:
        if self.coefficient.is_constant and self.coefficient.constant == 1:
            return repr(self.expr)
        if self.coefficient.is_constant and self.coefficient.constant == -1:
            return f"-{self.expr!r}"
        return f"{self.coefficient!r} * {self.expr!r}"


@dataclass
class ProxProblem:
    """The analysed problem ``argmin_{z in C} R(z) + (lam / 2) ||z - x||^2``.

    Attributes:
        variable: the layer's variable.
        terms: every term of ``R`` after expansion (constants dropped).
        constraints: the constraints, comparisons and named sets.
        parameters: the Parameters, by name, in first-seen order.
        convexity_issues: human-readable reasons why the problem is not convex
            (empty when it is), each naming a term or set.
        dcp_issues: reasons why the merged problem (*) is not DCP for cvxpy.
    """

    variable: Variable
    terms: list[Term]
    constraints: list[Constraint]
    parameters: dict[str, Parameter]
    convexity_issues: list[str] = field(default_factory=list)
    dcp_issues: list[str] = field(default_factory=list)

    # -- views used by the backends ----------------------------------------------------
    @property
    def is_convex(self) -> bool:
        return not self.convexity_issues

    @property
    def is_dcp(self) -> bool:
        return not self.dcp_issues

    @property
    def per_batch(self) -> bool:
        return self.variable.scope == "batch"

    def terms_of_kind(self, *kinds: str) -> list[Term]:
        return [term for term in self.terms if term.kind in kinds]

    @property
    def residual_terms(self) -> list[Term]:
        """The terms left in ``R'`` after merging: quadratic and nonquadratic ones."""
        return self.terms_of_kind("quadratic", "nonquadratic")

    @property
    def sets(self) -> list[Set]:
        return [c for c in self.constraints if isinstance(c, Set)]

    @property
    def comparisons(self) -> list[Constraint]:
        return [c for c in self.constraints if isinstance(c, (Inequality, Equality))]

    def describe(self) -> str:
        """Return the problem in one line, e.g. ``0.1 * norm1(z) s.t. z >= 0``."""
        objective = ""
        for term in self.terms:
            text = term.describe()
            if not objective:
                objective = text
            elif text.startswith("-"):
                objective += " - " + text[1:]
            else:
                objective += " + " + text
        objective = objective or "0"
        if not self.constraints:
            return objective
        return f"{objective}  s.t. " + ", ".join(repr(c) for c in self.constraints)

    # -- runtime quantities --------------------------------------------------------------
    def merged_linear_quadratic(
        self,
        x: torch.Tensor,
        lam: torch.Tensor | float,
        values: Values,
        lead_ndim: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor | float]:
        """Return ``(y, a)`` of the merged objective (*).

        Args:
            x: input of the variable's batched shape ``(B, *shape)``.
            lam: a float, or a tensor of shape ``()`` or ``(B,)``.
            values: parameter tensors by ``id`` (shared, or with leading dim ``B``).
            lead_ndim: 1 when some tensor in ``values`` has the leading dim ``B``, else 0.

        Returns:
            ``y`` of the shape of ``x`` and ``a`` as a float or a tensor of shape ``()``
            or ``(B,)``, both differentiable with respect to ``x``, ``lam`` and parameters.
        """
        trailing = (1,) * self.variable.ndim
        lam_b = lam if isinstance(lam, float) else lam.reshape(lam.shape + trailing)
        y = x if isinstance(lam, float) and lam == 1.0 else lam_b * x
        a: torch.Tensor | float = lam

        for term in self.terms:
            if term.kind == "identity_quadratic":
                assert term.form is not None
                weight = term.coefficient.value(values, x)
                scale = term.form.scale
                a = a + 2.0 * scale * scale * weight
                if term.form.offset is not None:
                    offset = evaluate(term.form.offset, values, x)
                    weight_b = _expand_trailing(weight, self.variable.ndim)
                    y = y - 2.0 * scale * weight_b * offset
            elif term.kind == "linear":
                weight = term.coefficient.value(values, x)
                gradient = linear_gradient(term.expr, id(self.variable), values, x[0], lead_ndim)
                y = y - _expand_trailing(weight, self.variable.ndim) * gradient
        return y, a

    def identity_weight(self, lam: float) -> float | None:
        """Return ``a`` for a float ``lam`` when every merged coefficient is a constant."""
        a = lam
        for term in self.terms_of_kind("identity_quadratic"):
            if not term.coefficient.is_constant:
                return None
            assert term.form is not None
            a += 2.0 * term.form.scale**2 * term.coefficient.constant
        return a


def _expand_trailing(weight: torch.Tensor | float, count: int) -> torch.Tensor | float:
    if isinstance(weight, torch.Tensor) and weight.ndim:
        return weight.reshape(weight.shape + (1,) * count)
    return weight


def _expand_terms(expr: Expression, coefficient: Coefficient, out: list[tuple[Coefficient, Expression]]) -> None:
    """Flatten sums and scalar scalings of the regularizer into (coefficient, expr) pairs."""
    if isinstance(expr, AddExpression):
        for arg in expr.args:
            _expand_terms(arg, coefficient, out)
        return
    if (
        isinstance(expr, MultiplyExpression)
        and expr.factor.is_scalar
        and (not expr.expr.is_affine or expr.expr.is_scalar)
    ):
        factor = expr.factor
        if isinstance(factor, Constant):
            _expand_terms(expr.expr, coefficient.scaled(float(factor.value)), out)
        else:
            _expand_terms(expr.expr, coefficient.scaled(1.0, factor), out)
        return
    if not expr.depends_on_variable:
        return  # A constant shifts R but not its argmin.
    out.append((coefficient, expr))


def _classify(coefficient: Coefficient, expr: Expression, variable: Variable) -> Term:
    if expr.is_affine:
        return Term(coefficient, expr, "linear")
    assert isinstance(expr, Atom)
    if isinstance(expr, SumSquares) and not isinstance(expr.argument, PartExpression):
        form = scaled_variable_form(expr.argument, variable)
        if form is not None and form.scale != 0:
            return Term(coefficient, expr, "identity_quadratic", form)
    if expr.quadratic:
        return Term(coefficient, expr, "quadratic")
    form = scaled_variable_form(expr.argument, variable) if not isinstance(expr.argument, PartExpression) else None
    return Term(coefficient, expr, "nonquadratic", form)


def _find_variable(
    regularizer: Expression | None, constraints: Sequence[Constraint], variable: Variable | None
) -> Variable:
    found: dict[int, Variable] = {}
    if regularizer is not None:
        found.update((id(v), v) for v in regularizer.variables())
    for constraint in constraints:
        if isinstance(constraint, (Inequality, Equality)):
            for side in (constraint.left, constraint.right):
                found.update((id(v), v) for v in side.variables())
    if variable is not None:
        found.setdefault(id(variable), variable)
    if len(found) > 1:
        names = ", ".join(repr(v) for v in found.values())
        raise DeclarationError(
            f"found {len(found)} variables ({names}); a prox layer has exactly one Variable. "
            "Stack the outputs into one Variable and index it."
        )
    if not found:
        raise DeclarationError(
            "cannot infer the variable: neither the regularizer nor a comparison constraint "
            "mentions one. Pass variable=Variable(n) to ProxLayer."
        )
    return next(iter(found.values()))


def _collect_parameters(expressions: Iterable[Expression], constraints: Sequence[Constraint]) -> dict[str, Parameter]:
    found: dict[str, Parameter] = {}
    candidates: list[Parameter] = []
    for expr in expressions:
        candidates += expr.parameters()
    for constraint in constraints:
        candidates += constraint.parameters()
    for parameter in candidates:
        existing = found.get(parameter.name)
        if existing is not None and existing is not parameter:
            raise DeclarationError(f"two different Parameters are named {parameter.name!r}; give each a unique name.")
        found[parameter.name] = parameter
    return found


def _term_convexity(term: Term) -> str | None:
    """Return why a term breaks convexity of (*), or None when it does not."""
    sign = term.coefficient.sign
    if term.kind in ("linear", "identity_quadratic"):
        return None  # merged into (*); identity quadratics are checked at runtime via a >= 0
    atom = term.atom
    assert atom is not None
    if not atom.convex:
        return f"term {term.describe()} is not declared convex"
    if sign == 0:
        unknown = [f for f in term.coefficient.factors if not (isinstance(f, Parameter) and f.nonneg)]
        names = ", ".join(repr(f) for f in unknown)
        return (
            f"term {term.describe()} has a coefficient of unknown sign ({names}); declare the "
            "Parameter with nonneg=True if it is never negative"
        )
    if sign < 0 and term.kind == "quadratic":
        return None  # merged with lam * I at runtime; checked there
    if sign < 0:
        return f"term {term.describe()} is concave (a convex atom with a negative coefficient)"
    return None


def analyze(
    regularizer: Any,
    constraints: Sequence[Constraint] = (),
    variable: Variable | None = None,
) -> ProxProblem:
    """Analyse ``R`` and ``C`` into a :class:`ProxProblem` (see the module docstring)."""
    if regularizer is not None and not isinstance(regularizer, Expression):
        if isinstance(regularizer, (int, float)) and regularizer == 0:
            regularizer = None
        else:
            raise DeclarationError(f"the regularizer must be a proxopt expression, 0 or None, got {regularizer!r}.")
    constraints = list(constraints)
    for constraint in constraints:
        if not isinstance(constraint, Constraint):
            raise DeclarationError(
                f"constraint {constraint!r} is not a proxopt constraint; write comparisons such "
                "as `z >= 0` or sets such as Box(-1, 1)."
            )
    var = _find_variable(regularizer, constraints, variable)

    if regularizer is not None and regularizer.shape != ():
        raise ShapeError(
            f"the regularizer must be a scalar, got {regularizer!r} of shape "
            f"{format_shape(regularizer.shape)}; wrap it in an atom such as norm1() or sum()."
        )
    pairs: list[tuple[Coefficient, Expression]] = []
    if regularizer is not None:
        _expand_terms(regularizer, Coefficient(), pairs)
    terms = [_classify(coefficient, expr, var) for coefficient, expr in pairs if coefficient.constant != 0]

    row_size = var.size
    for constraint in constraints:
        if isinstance(constraint, Set):
            constraint.check_size(row_size)

    expressions = [term.expr for term in terms] + [f for term in terms for f in term.coefficient.factors]
    parameters = _collect_parameters(expressions, constraints)

    convexity_issues = [issue for term in terms if (issue := _term_convexity(term)) is not None]
    for constraint in constraints:
        if not constraint.convex:
            convexity_issues.append(f"set {constraint!r} is not convex")
    dcp_issues = list(convexity_issues)
    for term in terms:
        if isinstance(term.atom, Smooth) and term.atom.convex:
            dcp_issues.append(f"term {term.describe()} is a torch function with no cvxpy form")

    return ProxProblem(
        variable=var,
        terms=terms,
        constraints=constraints,
        parameters=parameters,
        convexity_issues=convexity_issues,
        dcp_issues=dcp_issues,
    )


def resolve_shape(shape: Shape, batch_size: int | None) -> tuple[int, ...]:
    """Replace :data:`BATCH` by the mini-batch size of a per-batch call."""
    resolved: list[int] = []
    for dim in shape:
        if dim is BATCH:
            if batch_size is None:
                raise ShapeError("BATCH appears in a shape but the variable is per sample.")
            resolved.append(batch_size)
        else:
            resolved.append(int(dim))  # type: ignore[arg-type]
    return tuple(resolved)


def parameter_values(
    problem: ProxProblem,
    tensors: Mapping[str, torch.Tensor],
    lead: tuple[int, ...],
    batch_size: int | None,
    like: torch.Tensor,
) -> tuple[dict[int, torch.Tensor], dict[str, bool]]:
    """Validate parameter tensors and flatten their leading dims.

    Returns tensors keyed by ``id(parameter)``: shared ones keep their shape, per-sample
    ones get one leading dim of size ``prod(lead)``. Also returns, per name, whether the
    tensor was per sample.
    """
    missing = [name for name in problem.parameters if name not in tensors]
    unknown = [name for name in tensors if name not in problem.parameters]
    if missing or unknown:
        expected = ", ".join(problem.parameters) or "none"
        problems = []
        if missing:
            problems.append(f"missing Parameter values: {', '.join(missing)}")
        if unknown:
            problems.append(f"unknown keyword arguments: {', '.join(unknown)}")
        example = f", e.g. layer(x, {missing[0]}=tensor)" if missing else ""
        raise InvalidInputError(
            f"{'; '.join(problems)}. This layer's Parameters are: {expected}; pass each as a keyword argument{example}."
        )
    flat = math.prod(lead)
    values: dict[int, torch.Tensor] = {}
    batched: dict[str, bool] = {}
    for name, parameter in problem.parameters.items():
        tensor = tensors[name]
        if not isinstance(tensor, torch.Tensor):
            raise InvalidInputError(
                f"Parameter {name!r} must be a torch.Tensor, got {type(tensor).__name__}; "
                "wrap numbers with torch.tensor(..., dtype=x.dtype)."
            )
        if tensor.dtype != like.dtype:
            raise InvalidInputError(
                f"Parameter {name!r} has dtype {tensor.dtype} but the input has {like.dtype}; "
                f"convert it with .to({like.dtype})."
            )
        if tensor.device != like.device:
            raise InvalidInputError(
                f"Parameter {name!r} is on {tensor.device} but the input is on {like.device}; "
                "move it with .to(x.device)."
            )
        shape = resolve_shape(parameter.shape, batch_size)
        own = len(shape)
        if tuple(tensor.shape[tensor.ndim - own :]) != shape or tensor.ndim < own:
            per_item = f" or {tuple(lead) + shape} (one value per item of the input's batch dims)" if lead else ""
            raise ShapeError(
                f"Parameter {name!r} has shape {tuple(tensor.shape)}; expected {shape} (shared){per_item}."
            )
        leading = tuple(tensor.shape[: tensor.ndim - own])
        if leading == ():
            values[id(parameter)] = tensor
            batched[name] = False
        else:
            try:
                expanded = tensor.expand(*lead, *shape) if leading != lead else tensor
            except RuntimeError as error:
                raise ShapeError(
                    f"Parameter {name!r} has leading dims {leading} that do not broadcast to the "
                    f"input's batch shape {tuple(lead)}."
                ) from error
            values[id(parameter)] = expanded.reshape(flat, *shape)
            batched[name] = True
        if parameter.nonneg and bool((tensor.detach() < 0).any()):
            raise InvalidInputError(
                f"Parameter {name!r} is declared nonneg=True but has negative entries "
                f"(minimum {float(tensor.detach().min()):.3g}); pass nonnegative values."
            )
    return values, batched


def set_values(constraint: Set, values: Values, like: torch.Tensor) -> dict[str, torch.Tensor]:
    """Evaluate a set's data (bounds, radii, ``A``, ``b``) as tensors."""
    result: dict[str, torch.Tensor] = {}
    for name, expr in constraint.data().items():
        if isinstance(expr, Constant):
            result[name] = constant_tensor(expr, like)
        else:
            result[name] = values[id(expr)]
    return result
