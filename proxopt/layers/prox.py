"""``ProxLayer``: a differentiable prox map declared with the DSL."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from proxopt.backends import BackendOptions, ProxCall, make_plan
from proxopt.backends.plan import Plan
from proxopt.compile.analysis import ProxProblem, analyze, parameter_values, set_values
from proxopt.compile.lowering import check_constant_feasibility
from proxopt.dsl.expressions import Expression, Variable
from proxopt.dsl.sets import Constraint
from proxopt.errors import InvalidInputError, ShapeError, SolverWarning

__all__ = ["ProxLayer", "explain"]

BackendName = Literal["auto", "closed_form", "quadratic", "cvxpy", "smooth"]

CHECK_TOLERANCE = 1e-5
"""Largest disagreement with the cvxpy backend accepted silently by ``check=True``."""


def _validate_lam_float(lam: float) -> float:
    if not math.isfinite(lam) or lam <= 0:
        raise InvalidInputError(
            f"lam must be a finite number > 0, got {lam!r}; it weighs the proximity term "
            "(lam / 2) ||z - x||^2, so lam <= 0 leaves the problem unbounded or undefined."
        )
    return float(lam)


class ProxLayer(nn.Module):
    r"""A proximal-mapping layer declared with the proxopt DSL.

    The layer maps each input ``x`` to

    .. math::

        P(x) = \operatorname{argmin}_{z \in C} \; R(z) + \frac{\lambda}{2} \|z - x\|^2

    (eq. 2 of Li, Ma and Zhang, "Proximal Mapping for Deep Regularization", NeurIPS
    2020) and backpropagates through the argmin, with gradients with respect to ``x``,
    ``lam`` and every :class:`~proxopt.Parameter`.

    Args:
        regularizer: the scalar expression ``R`` built from atoms; ``0`` or None for a
            projection onto ``C``.
        constraints: comparisons (``z >= 0``, ``A @ z == b``) and sets (``Box(-1, 1)``).
        lam: the weight ``lam > 0`` of the proximity term: a float, or a tensor of shape
            ``()`` or of the input's batch shape, cast to the input's dtype and device at each
            call. Pass an ``nn.Parameter`` to learn it.
        backend: ``"auto"`` (the fastest exact route) or one of ``"closed_form"``,
            ``"quadratic"``, ``"cvxpy"``, ``"smooth"`` to force it.
        variable: the variable, when neither ``R`` nor a comparison mentions it (a
            projection onto a named set).
        solver_args: settings for diffcp on the cvxpy backend.
        allow_smooth: let ``"auto"`` fall back to the smooth backend for nonconvex or
            non-DCP problems.
        smooth_options: settings for the smooth backend.
        check: on the first call, compare the chosen backend with the cvxpy backend and
            warn (:class:`~proxopt.SolverWarning`) if they disagree by more than 1e-5.

    Inputs:
        x: tensor of shape ``(*batch, n)`` for a per-sample variable, or ``(*batch, m, n)``
            for a per-batch variable of ``m`` rows; any floating dtype and device.
        **parameters: one tensor per declared Parameter, by name.

    Outputs:
        A tensor of the shape, dtype and device of ``x``.

    Raises:
        ShapeError, InvalidInputError: invalid input, ``lam <= 0``, missing Parameters.
        EmptySetError: the constraint set is empty.
        NotDCPError, NoRouteError: no backend (or not the forced one) can solve it.
        SolverFailedError: an inner solver failed on some items of the batch.

    Example:
        >>> import torch
        >>> from proxopt import ProxLayer, Variable, norm1
        >>> z = Variable(4)
        >>> layer = ProxLayer(0.5 * norm1(z), [z >= 0])
        >>> layer(torch.tensor([[-1.0, 0.2, 0.7, 2.0]]))
        tensor([[0.0000, 0.0000, 0.2000, 1.5000]])
    """

    def __init__(
        self,
        regularizer: Expression | float | None = None,
        constraints: Sequence[Constraint] = (),
        lam: float | torch.Tensor = 1.0,
        backend: BackendName = "auto",
        *,
        variable: Variable | None = None,
        solver_args: dict[str, Any] | None = None,
        allow_smooth: bool = False,
        smooth_options: dict[str, Any] | None = None,
        check: bool = False,
    ) -> None:
        super().__init__()
        self._lam_float: float | None = None
        self.lam = lam  # validated by the setter

        self.problem: ProxProblem = analyze(regularizer, constraints, variable)
        check_constant_feasibility(self.problem.variable, self.problem.constraints)
        self.options = BackendOptions(
            solver_args=dict(solver_args or {}),
            allow_smooth=allow_smooth,
            smooth=dict(smooth_options or {}),
        )
        self.plan: Plan = make_plan(self.problem, backend, self._lam_float, self.options)
        self.check = check
        self._checked = False
        self._parametric_sets = [s for s in self.problem.sets if s.parameters()]
        self._fast = self.plan.compiled.fast_path() if not self.problem.parameters else None
        self._size = self.problem.variable.size
        self._per_batch = self.problem.per_batch
        self._min_ndim = 2 if self._per_batch else 1

    # -- lam ---------------------------------------------------------------------------
    @property
    def lam(self) -> float | torch.Tensor:
        """The weight of the proximity term (a float or a tensor)."""
        if self._lam_float is not None:
            return self._lam_float
        return self._lam_tensor

    @lam.setter
    def lam(self, value: float | torch.Tensor) -> None:
        if isinstance(value, torch.Tensor):
            if not value.is_floating_point():
                raise InvalidInputError(f"lam must be a floating-point tensor, got dtype {value.dtype}.")
            if not value.requires_grad:
                detached = value.detach()
                if not bool(torch.isfinite(detached).all()) or bool((detached <= 0).any()):
                    raise InvalidInputError(
                        f"lam must be finite and > 0 everywhere, got minimum {float(detached.min()):.4g}."
                    )
            self._lam_float = None
            self._forget_lam_tensor()
            if isinstance(value, nn.Parameter):
                # Registered under a private name, so optimizers see it in parameters().
                self.register_parameter("_lam_tensor", value)
            else:
                object.__setattr__(self, "_lam_tensor", value)
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidInputError(f"lam must be a positive float or a tensor, got {type(value).__name__}.")
        self._lam_float = _validate_lam_float(float(value))
        self._forget_lam_tensor()

    def _forget_lam_tensor(self) -> None:
        self._parameters.pop("_lam_tensor", None)
        self.__dict__.pop("_lam_tensor", None)

    def __setattr__(self, name: str, value: object) -> None:
        # nn.Module.__setattr__ would register an nn.Parameter assigned to `lam` directly,
        # bypassing the property's validation, so `lam` always goes through the setter.
        if name == "lam":
            type(self).lam.fset(self, value)  # type: ignore[attr-defined]
            return
        super().__setattr__(name, value)

    # -- forward -----------------------------------------------------------------------
    def forward(self, x: torch.Tensor, *extra: object, **parameters: torch.Tensor) -> torch.Tensor:
        # Fast path: a closed form with no Parameters and a float lam takes valid input
        # directly, without building a ProxCall. It checks only what _prepare would reject,
        # so any other input goes down the validated path and gets the same errors.
        fast = self._fast
        lam = self._lam_float
        if (
            fast is not None
            and lam is not None
            and not parameters
            and not extra
            and not self.check
            and isinstance(x, torch.Tensor)
            and x.ndim >= self._min_ndim
            and x.shape[-1] == self._size
            and x.is_floating_point()
            and x.numel() > 0
        ):
            return fast(x, lam)
        if extra:
            raise InvalidInputError(
                f"ProxLayer takes one positional input and Parameters as keyword arguments, got "
                f"{len(extra)} extra positional argument(s); call layer(x, name=tensor) with the "
                f"Parameter names ({', '.join(self.problem.parameters) or 'none'})."
            )
        call = self._prepare(x, parameters)
        if call is None:
            return x.clone()
        output = self.plan.compiled(call)
        if self.check and not self._checked:
            self._checked = True
            self._compare_with_cvxpy(call, output)
        return output.reshape(x.shape)

    def _prepare(self, x: torch.Tensor, parameters: dict[str, torch.Tensor]) -> ProxCall | None:
        """Validate a call and flatten its batch dims; None for an empty batch."""
        if not isinstance(x, torch.Tensor):
            raise InvalidInputError(f"ProxLayer input must be a torch.Tensor, got {type(x).__name__}.")
        if not x.is_floating_point():
            raise InvalidInputError(
                f"ProxLayer input must have a floating dtype, got {x.dtype}; convert with x.float()."
            )
        own = 2 if self._per_batch else 1
        if x.ndim < own or x.shape[-1] != self._size:
            expected = "(*batch, m, n)" if self._per_batch else "(*batch, n)"
            raise ShapeError(
                f"ProxLayer input has shape {tuple(x.shape)}; expected {expected} with "
                f"n = {self._size} (the size of {self.problem.variable!r})."
            )
        lead = tuple(x.shape[: x.ndim - own])
        batch_size = int(x.shape[-2]) if self._per_batch else None
        values, batched = parameter_values(self.problem, parameters, lead, batch_size, x)
        if x.numel() == 0:
            return None

        flat = math.prod(lead)
        lam = self._runtime_lam(x, lead, flat)
        for constraint in self._parametric_sets:
            constraint.validate_values(set_values(constraint, values, x))
        return ProxCall(
            x=x.reshape(flat, *x.shape[x.ndim - own :]),
            lam=lam,
            values=values,
            tensors={name: values[id(p)] for name, p in self.problem.parameters.items()},
            batch_size=batch_size,
            lead_ndim=1 if any(batched.values()) else 0,
        )

    def _runtime_lam(self, x: torch.Tensor, lead: tuple[int, ...], flat: int) -> torch.Tensor | float:
        if self._lam_float is not None:
            return self._lam_float
        lam = self._lam_tensor
        if lam.dtype != x.dtype or lam.device != x.device:
            lam = lam.to(dtype=x.dtype, device=x.device)
        if lam.ndim == 0:
            flat_lam = lam
        else:
            try:
                flat_lam = lam.expand(lead).reshape(flat)
            except RuntimeError as error:
                raise ShapeError(
                    f"lam has shape {tuple(lam.shape)}; expected a scalar or a tensor that "
                    f"broadcasts to the input's batch shape {lead}."
                ) from error
        detached = flat_lam.detach()
        if not bool(torch.isfinite(detached).all()) or bool((detached <= 0).any()):
            raise InvalidInputError(
                f"lam must be finite and > 0, got minimum {float(detached.min()):.4g}; it weighs "
                "the proximity term, so lam <= 0 leaves the problem unbounded or undefined."
            )
        return flat_lam

    def _compare_with_cvxpy(self, call: ProxCall, output: torch.Tensor) -> None:
        if self.plan.backend == "cvxpy":
            return
        reference_plan = make_plan(self.problem, "cvxpy", self._lam_float, self.options)
        with torch.no_grad():
            reference = reference_plan.compiled(call)
        gap = float((output.detach() - reference).abs().max()) if output.numel() else 0.0
        if gap > CHECK_TOLERANCE:
            warnings.warn(
                f"check=True: the {self.plan.backend} backend and the cvxpy backend disagree by "
                f"{gap:.3g} (max abs) on the first batch; tolerance {CHECK_TOLERANCE:g}.",
                SolverWarning,
                stacklevel=3,
            )

    @property
    def solver_outcome(self) -> Any:
        """The inner solver's outcome of the latest call (per batch item), or None.

        Backends with an iterative inner solve (the smooth backend) record it as
        ``last_outcome``; for the others this is None.
        """
        return getattr(self.plan.compiled, "last_outcome", None)

    # -- description -------------------------------------------------------------------
    def explain(self) -> str:
        """Return the backend chosen for this layer, why, and why faster ones did not apply."""
        plan = self.plan
        lines = [
            f"problem: {self.problem.describe()}",
            f"variable: {self.problem.variable!r} of shape {self.problem.variable.shape} "
            f"({'one per mini-batch' if self._per_batch else 'one per sample'})",
            f"backend: {plan.backend}" + (" (forced)" if plan.requested != "auto" else " (chosen automatically)"),
            f"  computes: {plan.compiled.summary}",
        ]
        lines += [f"  note: {note}" for note in plan.compiled.notes]
        for name, reason in plan.rejected:
            lines.append(f"not {name}: {reason}")
        if self.problem.convexity_issues:
            lines.append("nonconvex: " + "; ".join(self.problem.convexity_issues))
        return "\n".join(lines)

    def extra_repr(self) -> str:
        lam = self._lam_float if self._lam_float is not None else "tensor"
        return f"{self.problem.describe()}, lam={lam}, backend={self.plan.backend!r}"


def explain(layer: ProxLayer) -> str:
    """Return the plan of ``layer``: the backend chosen, why, and why faster ones did not apply."""
    if not isinstance(layer, ProxLayer):
        raise TypeError(f"explain() needs a ProxLayer, got {type(layer).__name__}.")
    return layer.explain()
