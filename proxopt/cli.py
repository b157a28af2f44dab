"""The ``proxopt`` command line: ``proxopt verify`` and ``proxopt explain``."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from proxopt.activations import ACTIVATIONS
from proxopt.backends.base import BACKEND_ORDER

__all__ = ["main"]


def _verify(arguments: argparse.Namespace) -> int:
    from proxopt.verify import format_table, to_json, verify_all

    with warnings.catch_warnings():
        # Solver warnings are reported in the table's note column instead.
        warnings.simplefilter("ignore")
        results = verify_all(
            backend=arguments.backend,
            size=arguments.size,
            samples=arguments.samples,
            seed=arguments.seed,
            names=arguments.activations or None,
        )
    print(to_json(results) if arguments.json else format_table(results))
    return 0 if all(row.passed for row in results) else 1


def _explain(arguments: argparse.Namespace) -> int:
    from proxopt.layers.prox import ProxLayer

    activation = ACTIVATIONS[arguments.activation]
    declaration = activation.declare(max(arguments.size, activation.min_size))
    layer = ProxLayer(
        declaration.regularizer,
        declaration.constraints,
        lam=declaration.lam,
        backend=arguments.backend,
        variable=declaration.variable,
        **activation.layer_options,  # type: ignore[arg-type]
    )
    print(f"{activation.name}: {activation.formula}")
    print(layer.explain())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="proxopt", description="Differentiable proximal-mapping layers.")
    commands = parser.add_subparsers(dest="command", required=True)

    verify = commands.add_parser(
        "verify",
        help="check that the activation identities hold (values and gradients, float64)",
        description=(
            "Build each activation as a declared prox layer and compare it with the torch "
            "reference on random inputs with |x| <= 8; exit status 1 if any fails."
        ),
    )
    verify.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    verify.add_argument(
        "--backend",
        default="auto",
        choices=["auto", *BACKEND_ORDER],
        help="preferred backend; activations it cannot solve use the automatic choice (default: auto)",
    )
    verify.add_argument("--size", type=int, default=10, help="length n of each input vector (default: 10)")
    verify.add_argument("--samples", type=int, default=20, help="number of random input vectors (default: 20)")
    verify.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    verify.add_argument(
        "activations",
        nargs="*",
        choices=[[], *ACTIVATIONS],
        metavar="ACTIVATION",
        help=f"activations to verify (default: all of {', '.join(ACTIVATIONS)})",
    )

    explain = commands.add_parser("explain", help="print the backend plan for an activation's prox layer")
    explain.add_argument("activation", choices=list(ACTIVATIONS), help="activation name")
    explain.add_argument("--backend", default="auto", choices=["auto", *BACKEND_ORDER], help="backend to force")
    explain.add_argument("--size", type=int, default=10, help="length n of the input vector (default: 10)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    arguments = build_parser().parse_args(argv)
    if arguments.command == "verify":
        return _verify(arguments)
    return _explain(arguments)


if __name__ == "__main__":
    sys.exit(main())
