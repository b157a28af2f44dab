"""Verification that the declared activations reproduce their torch references.

For each activation, a :class:`~proxopt.ProxLayer` is built from its declaration and
compared in float64 with the torch reference on random inputs with ``|x| <= 8``: the
largest absolute error of the values, and of the input gradient (a vector-Jacobian
product with a random upstream gradient). The same two errors at saturating inputs
(entries ``+-30``) are reported as information: a conic solver's derivative can be badly
wrong there, and the table shows it rather than hiding it.

On the default route, the closed forms of sigmoid, tanh and softmax at ``lam = 1`` call
the torch op itself, so those rows show zero error; ``backend="cvxpy"`` checks the same
identities against an independent solver.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch

from proxopt.activations import ACTIVATIONS, Activation
from proxopt.errors import NoRouteError, NotDCPError
from proxopt.layers.prox import ProxLayer

__all__ = [
    "VerificationResult",
    "verify_activation",
    "verify_all",
    "format_table",
    "to_json",
    "VALUE_TOLERANCE",
    "GRADIENT_TOLERANCE",
]

VALUE_TOLERANCE = 1e-6
GRADIENT_TOLERANCE = 1e-5
INPUT_BOUND = 8.0
SATURATION = 30.0


@dataclass
class VerificationResult:
    """One row of the verification table (errors are max absolute, in float64)."""

    activation: str
    backend: str
    value_error: float
    grad_error: float
    passed: bool
    saturated_value_error: float
    saturated_grad_error: float
    note: str = ""


def _errors(layer: ProxLayer, activation: Activation, x: torch.Tensor, upstream: torch.Tensor) -> tuple[float, float]:
    x_layer = x.clone().requires_grad_(True)
    x_reference = x.clone().requires_grad_(True)
    output = layer(x_layer)
    reference = activation.reference(x_reference)
    (grad_layer,) = torch.autograd.grad((output * upstream).sum(), x_layer)
    (grad_reference,) = torch.autograd.grad((reference * upstream).sum(), x_reference)
    value_error = float((output.detach() - reference.detach()).abs().max())
    grad_error = float((grad_layer - grad_reference).abs().max())
    return value_error, grad_error


def _failed(name: str, backend: str, error: Exception) -> VerificationResult:
    nan = float("nan")
    return VerificationResult(name, backend, nan, nan, False, nan, nan, f"{type(error).__name__}: {error}")


def _saturating_input(samples: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Return rows of +-30 with both signs present, so that no row is constant."""
    signs = torch.ones(samples, size, dtype=torch.float64)
    signs[:, size // 2 :] = -1.0
    order = torch.argsort(torch.rand(samples, size, generator=generator, dtype=torch.float64), dim=-1)
    return SATURATION * signs.gather(-1, order)


def verify_activation(
    activation: Activation,
    backend: str = "auto",
    size: int = 10,
    samples: int = 20,
    seed: int = 0,
) -> VerificationResult:
    """Compare the prox layer of ``activation`` with its torch reference.

    ``backend`` is a preference: an activation that the preferred backend cannot solve
    (batch norm's nonconvex set on cvxpy, say) falls back to the automatic choice, and
    the row names the backend actually used.
    """
    size = max(size, activation.min_size)
    declaration = activation.declare(size)
    note = ""
    try:
        layer = ProxLayer(
            declaration.regularizer,
            declaration.constraints,
            lam=declaration.lam,
            backend=backend,  # type: ignore[arg-type]
            variable=declaration.variable,
            **activation.layer_options,  # type: ignore[arg-type]
        )
    except (NoRouteError, NotDCPError):
        layer = ProxLayer(
            declaration.regularizer,
            declaration.constraints,
            lam=declaration.lam,
            variable=declaration.variable,
            **activation.layer_options,  # type: ignore[arg-type]
        )
        note = f"no {backend} route; used {layer.plan.backend}"
    except Exception as error:  # noqa: BLE001 - reported in the table as a failure
        return VerificationResult(
            activation.name,
            backend,
            float("nan"),
            float("nan"),
            False,
            float("nan"),
            float("nan"),
            f"{type(error).__name__}: {error}",
        )

    generator = torch.Generator().manual_seed(seed)
    x = (2 * torch.rand(samples, size, generator=generator, dtype=torch.float64) - 1) * INPUT_BOUND
    upstream = torch.randn(samples, size, generator=generator, dtype=torch.float64)
    saturated = _saturating_input(samples, size, generator)
    try:
        value_error, grad_error = _errors(layer, activation, x, upstream)
    except Exception as error:  # noqa: BLE001 - reported in the table as a failure
        return VerificationResult(
            activation.name,
            layer.plan.backend,
            float("nan"),
            float("nan"),
            False,
            float("nan"),
            float("nan"),
            f"{type(error).__name__}: {error}",
        )
    try:
        saturated_value_error, saturated_grad_error = _errors(layer, activation, saturated, upstream)
    except Exception as error:  # noqa: BLE001 - saturation is informational
        saturated_value_error = saturated_grad_error = float("nan")
        note = (note + "; " if note else "") + f"saturated: {type(error).__name__}"
    passed = value_error <= VALUE_TOLERANCE and grad_error <= GRADIENT_TOLERANCE
    return VerificationResult(
        activation.name,
        layer.plan.backend,
        value_error,
        grad_error,
        passed,
        saturated_value_error,
        saturated_grad_error,
        note,
    )


def verify_all(
    backend: str = "auto",
    size: int = 10,
    samples: int = 20,
    seed: int = 0,
    names: list[str] | None = None,
) -> list[VerificationResult]:
    """Verify every activation in :data:`~proxopt.activations.ACTIVATIONS` (or ``names``)."""
    chosen = names or list(ACTIVATIONS)
    unknown = [name for name in chosen if name not in ACTIVATIONS]
    if unknown:
        raise ValueError(f"unknown activations {unknown}; known: {', '.join(ACTIVATIONS)}.")
    return [verify_activation(ACTIVATIONS[name], backend, size, samples, seed) for name in chosen]


def format_table(results: list[VerificationResult]) -> str:
    """Format results as a fixed-width text table."""
    header = (
        f"{'activation':<12} {'backend':<12} {'value err':>10} {'grad err':>10} {'pass':>5}"
        f" {'sat. value':>11} {'sat. grad':>10}  note"
    )
    lines = [header, "-" * len(header)]
    for row in results:
        lines.append(
            f"{row.activation:<12} {row.backend:<12} {row.value_error:>10.2e} {row.grad_error:>10.2e}"
            f" {'yes' if row.passed else 'NO':>5} {row.saturated_value_error:>11.2e}"
            f" {row.saturated_grad_error:>10.2e}  {row.note}"
        )
    lines.append(
        f"pass: value error <= {VALUE_TOLERANCE:g} and gradient error <= {GRADIENT_TOLERANCE:g} "
        f"in float64 on inputs with |x| <= {INPUT_BOUND:g}; saturated columns (|x| = "
        f"{SATURATION:g}) are information only."
    )
    return "\n".join(lines)


def to_json(results: list[VerificationResult]) -> str:
    """Serialize results as a JSON list of objects (NaN becomes null)."""
    rows = []
    for row in results:
        item = asdict(row)
        for key, value in item.items():
            if isinstance(value, float) and value != value:
                item[key] = None
        rows.append(item)
    return json.dumps(rows, indent=2)
