"""Forward+backward time of proxopt's automatic backend against native torch and cvxpylayers.

For each case the script times, in one run, the median of repeated forward+backward
passes of:

* ``proxopt``: a ``ProxLayer`` with default settings (the automatic backend choice);
* ``torch``: the native torch operation computing the same map, where one exists;
* ``cvxpylayers``: the same prox problem written directly in cvxpy and run through
  ``cvxpylayers.torch.CvxpyLayer`` with its default settings (only at the small size).

It prints ratios (``proxopt / torch`` and ``cvxpylayers / proxopt``) and the max absolute
error of each against a reference, and writes the table to ``docs/benchmarks.md``.

    python benchmarks/backends.py                 # both sizes
    python benchmarks/backends.py --quick         # fewer repeats
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cvxpy as cp
import numpy as np
import torch
import torch.nn.functional as F
from cvxpylayers.torch import CvxpyLayer
from tqdm import tqdm

import proxopt as po
from proxopt.activations import sparsemax_reference

SIZES = [(1024, 256, torch.float32), (100, 20, torch.float64)]
DEFAULT_OUTPUT = Path("docs/benchmarks.md")
SOFT_THRESHOLD = 0.1
BALL_RADIUS = 1.0
TV_WEIGHT = 0.5


@dataclass
class Case:
    """One benchmark case: a declaration, its torch op and its direct cvxpy form."""

    name: str
    declare: Callable[[int], po.ProxLayer]
    native: Callable[[torch.Tensor], torch.Tensor] | None
    reference: Callable[[torch.Tensor], torch.Tensor]
    # The full objective with the proximity term, in DCP form (weakly convex R merged by hand).
    cvxpy_problem: Callable[[cp.Variable, cp.Parameter], tuple[cp.Expression, list[cp.Constraint]]]


def _chain_laplacian(n: int) -> np.ndarray:
    """Weights of a path graph over the n features (W_ij = 1 for |i - j| = 1)."""
    weights = np.zeros((n, n))
    index = np.arange(n - 1)
    weights[index, index + 1] = 1.0
    weights[index + 1, index] = 1.0
    return weights


def _laplacian_solve(n: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A hand-written torch solve of (I + 2 c M) z = x with a precomputed Cholesky factor."""
    weights = torch.from_numpy(_chain_laplacian(n))
    matrix = torch.diag(weights.sum(0) + weights.sum(1)) - 2 * weights
    system = torch.eye(n, dtype=torch.float64) + 2 * 0.5 * matrix
    factors: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    def solve(x: torch.Tensor) -> torch.Tensor:
        key = (x.dtype, x.device)
        if key not in factors:
            factors[key] = torch.linalg.cholesky(system.to(dtype=x.dtype, device=x.device))
        # One solve with the batch as right-hand-side columns.
        return torch.cholesky_solve(x.transpose(-1, -2), factors[key]).transpose(-1, -2)

    return solve


def _variable(n: int) -> po.Variable:
    return po.Variable(n)


def _tv_reference(x: torch.Tensor) -> torch.Tensor:
    """Solve TV-1D prox rows with cvxpy and SCS at eps = 1e-10 (a few rows only)."""
    rows = []
    for row in x.double().numpy():
        v = cp.Variable(row.shape)
        objective = TV_WEIGHT * cp.norm1(cp.diff(v)) + 0.5 * cp.sum_squares(v - row)
        cp.Problem(cp.Minimize(objective)).solve(solver=cp.SCS, eps_abs=1e-10, eps_rel=1e-10, max_iters=200_000)
        rows.append(v.value)
    return torch.tensor(np.array(rows), dtype=x.dtype)


def _proximity(v: cp.Variable, x: cp.Parameter) -> cp.Expression:
    return 0.5 * cp.sum_squares(v - x)


def build_cases() -> list[Case]:
    def relu_layer(n: int) -> po.ProxLayer:
        z = _variable(n)
        return po.ProxLayer(None, [z >= 0])

    def sigmoid_layer(n: int) -> po.ProxLayer:
        z = _variable(n)
        return po.ProxLayer(po.binary_neg_entropy(z) - 0.5 * po.sum_squares(z))

    def tanh_layer(n: int) -> po.ProxLayer:
        z = _variable(n)
        return po.ProxLayer(po.binary_neg_entropy(0.5 * z + 0.5) - 0.5 * po.sum_squares(z))

    def softmax_layer(n: int) -> po.ProxLayer:
        z = _variable(n)
        return po.ProxLayer(po.neg_entropy(z) - 0.5 * po.sum_squares(z), [po.Simplex()])

    def sparsemax_layer(n: int) -> po.ProxLayer:
        return po.ProxLayer(None, [po.Simplex()], variable=_variable(n))

    def soft_threshold_layer(n: int) -> po.ProxLayer:
        return po.ProxLayer(SOFT_THRESHOLD * po.norm1(_variable(n)))

    def l2_ball_layer(n: int) -> po.ProxLayer:
        return po.ProxLayer(None, [po.L2Ball(BALL_RADIUS)], variable=_variable(n))

    def laplacian_layer(n: int) -> po.ProxLayer:
        z = _variable(n)
        return po.ProxLayer(0.5 * po.laplacian_quadratic(z, _chain_laplacian(n)))

    def tv_layer(n: int) -> po.ProxLayer:
        return po.ProxLayer(TV_WEIGHT * po.tv1d(_variable(n)))

    def l2_ball(x: torch.Tensor) -> torch.Tensor:
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        return x * torch.clamp(BALL_RADIUS / norm, max=1.0)

    return [
        Case("relu", relu_layer, torch.relu, torch.relu, lambda v, x: (_proximity(v, x), [v >= 0])),
        Case(
            "sigmoid",
            sigmoid_layer,
            torch.sigmoid,
            torch.sigmoid,
            # bne(v) - v^2/2 + (v - x)^2/2 = bne(v) - x v + const
            lambda v, x: (-cp.sum(cp.entr(v) + cp.entr(1 - v)) - x @ v, []),
        ),
        Case(
            "tanh",
            tanh_layer,
            torch.tanh,
            torch.tanh,
            # With u = (1 + v) / 2: bne(u) - v^2/2 + (v - x)^2/2 = bne(u) - x v + const
            lambda v, x: (-cp.sum(cp.entr(0.5 + 0.5 * v) + cp.entr(0.5 - 0.5 * v)) - x @ v, []),
        ),
        Case(
            "softmax",
            softmax_layer,
            lambda x: torch.softmax(x, -1),
            lambda x: torch.softmax(x, -1),
            lambda v, x: (-cp.sum(cp.entr(v)) - x @ v, [v >= 0, cp.sum(v) == 1]),
        ),
        Case(
            "sparsemax",
            sparsemax_layer,
            None,
            sparsemax_reference,
            lambda v, x: (_proximity(v, x), [v >= 0, cp.sum(v) == 1]),
        ),
        Case(
            "soft-threshold",
            soft_threshold_layer,
            lambda x: F.softshrink(x, SOFT_THRESHOLD),
            lambda x: F.softshrink(x, SOFT_THRESHOLD),
            lambda v, x: (SOFT_THRESHOLD * cp.norm1(v) + _proximity(v, x), []),
        ),
        Case(
            "L2-ball",
            l2_ball_layer,
            None,
            l2_ball,
            lambda v, x: (_proximity(v, x), [cp.norm(v, 2) <= BALL_RADIUS]),
        ),
        Case(
            "Laplacian quadratic",
            laplacian_layer,
            None,
            None,  # type: ignore[arg-type] - the reference is a dense solve, built per size
            lambda v, x: (cp.sum_squares(cp.diff(v)) + _proximity(v, x), []),
        ),
        Case(
            "TV-1D",
            tv_layer,
            None,
            _tv_reference,
            lambda v, x: (TV_WEIGHT * cp.norm1(cp.diff(v)) + _proximity(v, x), []),
        ),
    ]


def time_forward_backward(
    functions: list[Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor, repeats: int
) -> list[float]:
    """Return the median seconds of forward + backward for each function.

    The functions run in turns within each repeat, so load changes on the machine affect
    them alike and their ratio stays meaningful. The first round warms caches and JITs.
    """
    timings: list[list[float]] = [[] for _ in functions]
    upstream = torch.randn_like(x)
    for round_index in range(repeats + 1):
        for function, record in zip(functions, timings, strict=True):
            inputs = x.detach().clone().requires_grad_(True)
            start = time.perf_counter()
            output = function(inputs)
            output.backward(upstream)
            if round_index:
                record.append(time.perf_counter() - start)
    return [statistics.median(record) for record in timings]


def cvxpylayers_function(case: Case, n: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The prox problem written directly in cvxpy, run by CvxpyLayer with default settings."""
    v = cp.Variable(n)
    x = cp.Parameter(n)
    objective, constraints = case.cvxpy_problem(v, x)
    problem = cp.Problem(cp.Minimize(objective), constraints)
    layer = CvxpyLayer(problem, parameters=[x], variables=[v])

    def apply(inputs: torch.Tensor) -> torch.Tensor:
        (solution,) = layer(inputs)
        return solution

    return apply


def run(quick: bool) -> str:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    cases = build_cases()
    rows = []
    for batch, n, dtype in SIZES:
        small = batch <= 100
        if small:
            repeats = 5 if quick else 20
        else:
            repeats = 20 if quick else 200
        for case in tqdm(cases, desc=f"({batch}, {n}, {str(dtype).removeprefix('torch.')})"):
            layer = case.declare(n)
            x = 3 * torch.randn(batch, n, dtype=dtype)
            reference_fn = case.reference if case.name != "Laplacian quadratic" else _laplacian_solve(n)
            check_rows = x[:8] if case.name == "TV-1D" else x
            reference = reference_fn(check_rows.double()).to(dtype)

            native = case.native if case.name != "Laplacian quadratic" else _laplacian_solve(n)
            functions: list[Callable[[torch.Tensor], torch.Tensor]] = [layer] + ([native] if native is not None else [])
            measured = time_forward_backward(functions, x, repeats)
            proxopt_time = measured[0]
            native_time = measured[1] if native is not None else None
            proxopt_error = float((layer(check_rows) - reference).abs().max())

            cvx_time = cvx_error = None
            if small:
                apply = cvxpylayers_function(case, n)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    (cvx_time,) = time_forward_backward([apply], x, max(3, repeats // 4))
                    cvx_error = float((apply(check_rows) - reference).abs().max())
            rows.append(
                (
                    case.name,
                    batch,
                    n,
                    dtype,
                    layer.plan.backend,
                    proxopt_time,
                    native_time,
                    cvx_time,
                    proxopt_error,
                    cvx_error,
                )
            )
    return format_rows(rows)


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{1e3 * seconds:.3f}"


def format_rows(rows: list[tuple]) -> str:
    lines = [
        "| case | size | backend | proxopt ms | torch ms | proxopt / torch | cvxpylayers ms | cvxpylayers / proxopt"
        " | proxopt max err | cvxpylayers max err |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, batch, n, dtype, backend, ours, native, cvx, our_error, cvx_error in rows:
        ratio_native = "n/a" if native is None else f"{ours / native:.2f}"
        ratio_cvx = "n/a" if cvx is None else f"{cvx / ours:,.0f}"
        lines.append(
            f"| {name} | ({batch}, {n}, {str(dtype).removeprefix('torch.')}) | {backend} | {_ms(ours)} | "
            f"{_ms(native)} | {ratio_native} | {_ms(cvx)} | {ratio_cvx} | {our_error:.1e} | "
            f"{'n/a' if cvx_error is None else f'{cvx_error:.1e}'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, for a smoke run")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="markdown file to write")
    arguments = parser.parse_args()
    table = run(arguments.quick)
    header = [
        "# Backend benchmarks",
        "",
        "Median forward+backward time (ms) of a default `ProxLayer`, the native torch op and",
        "cvxpylayers (default settings, the problem written directly in cvxpy), measured in one run.",
        "Errors are max absolute differences from a reference (the torch op, a sort-based",
        "sparsemax, a dense float64 solve, or an SCS solve at eps 1e-10 of the first 8 rows for TV-1D).",
        "",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"cvxpy {cp.__version__}.",
        "",
        f"Command: `python benchmarks/backends.py{' --quick' if arguments.quick else ''}"
        f"{'' if arguments.output == DEFAULT_OUTPUT else f' --output {arguments.output}'}`",
        "",
        "The torch column for the Laplacian quadratic is a hand-written `torch.cholesky_solve` with a",
        "precomputed factor; sparsemax, the L2 ball and TV-1D have no torch op.",
        "",
    ]
    text = "\n".join(header) + "\n" + table + "\n"
    print(text)
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(text)


if __name__ == "__main__":
    main()
