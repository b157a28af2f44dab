"""Time forward + backward of ProxLayer's closed-form fast path against the native torch op.

A private check while the fast path is tuned, not the project's benchmark. For relu,
hardtanh and the other activations declared in :mod:`proxopt.activations` it prints the
median time of ``out = f(x); out.backward(grad)`` over many repeats for the layer (with
its default settings) and for the torch reference, and their ratio.

Run from the repository root: ``python benchmarks/_fastpath_check.py [--repeats N]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from proxopt import ProxLayer
from proxopt.activations import ACTIVATIONS
from proxopt.backends.base import ProxCall
from proxopt.backends.closed_form.registry import ClosedFormMatch, recognizers, register
from proxopt.compile.analysis import ProxProblem

Function = Callable[[torch.Tensor], torch.Tensor]


def _register_temporary_relu() -> None:
    """Register ``z >= 0 -> torch.relu`` when the closed_form catalog has no such entry yet."""
    layer = ProxLayer(None, ACTIVATIONS["relu"].declare(4).constraints)
    if layer.plan.backend == "closed_form":
        return
    expected = layer.problem.describe()

    @register("temporary_relu")
    def _recognize(problem: ProxProblem, lam: float | None) -> ClosedFormMatch | None:
        if problem.describe() != expected:
            return None

        def solve(call: ProxCall) -> torch.Tensor:
            return torch.relu(call.x)

        return ClosedFormMatch("temporary_relu", "relu (timing stand-in)", solve, lambda x, lam: torch.relu(x))

    print(f"note: timing relu with a temporary closed-form entry ({len(recognizers())} recognizers)")


def time_forward_backward(functions: list[Function], x: torch.Tensor, repeats: int) -> list[float]:
    """Return the median seconds of one forward and backward pass of each function at ``x``.

    The functions take turns within every repeat, so a change in machine load during
    the run affects all of them alike.
    """
    grad = torch.randn_like(x)
    leaf = x.detach().requires_grad_()
    samples: list[list[float]] = [[] for _ in functions]
    for index in range(repeats + 10):
        for function, times in zip(functions, samples, strict=True):
            start = time.perf_counter()
            out = function(leaf)
            out.backward(grad)
            elapsed = time.perf_counter() - start
            leaf.grad = None
            if index >= 10:  # the first calls warm up caches and allocators
                times.append(elapsed)
    return [statistics.median(times) for times in samples]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=400, help="timed repeats per case")
    parser.add_argument("--batch", type=int, default=1024, help="rows of the input")
    parser.add_argument("--size", type=int, default=256, help="columns of the input")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    _register_temporary_relu()
    x = torch.randn(args.batch, args.size, dtype=torch.float32)
    print(f"float32 input {tuple(x.shape)}, {args.threads} threads, median of {args.repeats} repeats")
    print(f"{'activation':<12}{'backend':<13}{'layer ms':>10}{'torch ms':>10}{'ratio':>8}")
    for name in ("relu", "hardtanh", "sigmoid", "tanh", "softmax"):
        activation = ACTIVATIONS[name]
        declaration = activation.declare(args.size)
        layer = ProxLayer(
            declaration.regularizer, declaration.constraints, declaration.lam, variable=declaration.variable
        )
        if layer.plan.backend != "closed_form":
            print(f"{name:<12}{layer.plan.backend:<13}  skipped: no closed form yet")
            continue
        proxy, native = time_forward_backward([layer, activation.reference], x, args.repeats)
        print(f"{name:<12}{layer.plan.backend:<13}{proxy * 1e3:>10.3f}{native * 1e3:>10.3f}{proxy / native:>8.2f}")


if __name__ == "__main__":
    main()
