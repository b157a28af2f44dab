"""Train a small MLP on scikit-learn's digits with a declared prox layer between hidden layers.

The prox layer maps the first hidden layer's output h to a nonnegative sparse code,

    P(h) = argmin_{z >= 0}  0.1 * ||z||_1 + (1/2) ||z - h||^2,

declared with the proxopt DSL. The script trains the same MLP with and without it for
several seeds, prints test accuracy (mean +- std) and the backend proxopt chose, and
writes the table to ``outputs/digits_prox_layer.md``.

Run from a checkout:

    python examples/digits_prox_layer.py            # defaults: 3 seeds, 30 epochs
    python examples/digits_prox_layer.py --backend cvxpy --epochs 10
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import nn
from tqdm import tqdm

import proxopt as po

HIDDEN = 64


def make_prox_layer(backend: str) -> po.ProxLayer:
    """Declare the nonnegative sparse-coding prox layer."""
    z = po.Variable(HIDDEN)
    return po.ProxLayer(0.1 * po.norm1(z), [z >= 0], lam=1.0, backend=backend)  # type: ignore[arg-type]


def make_model(prox: nn.Module | None) -> nn.Sequential:
    """Return input -> linear -> ReLU -> [prox] -> linear -> ReLU -> linear (10 classes)."""
    layers: list[nn.Module] = [nn.Linear(64, HIDDEN), nn.ReLU()]
    if prox is not None:
        layers.append(prox)
    layers += [nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 10)]
    return nn.Sequential(*layers)


def load_data(seed: int) -> tuple[torch.Tensor, ...]:
    """Split digits 75/25 (stratified) and standardize with training statistics."""
    features, labels = load_digits(return_X_y=True)
    train_x, test_x, train_y, test_y = train_test_split(
        features, labels, test_size=0.25, random_state=seed, stratify=labels
    )
    scaler = StandardScaler().fit(train_x)
    return (
        torch.tensor(scaler.transform(train_x), dtype=torch.float32),
        torch.tensor(train_y),
        torch.tensor(scaler.transform(test_x), dtype=torch.float32),
        torch.tensor(test_y),
    )


def train_and_test(model: nn.Module, data: tuple[torch.Tensor, ...], epochs: int, seed: int, label: str) -> float:
    """Train with Adam and cross-entropy; return test accuracy."""
    train_x, train_y, test_x, test_y = data
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    for _ in tqdm(range(epochs), desc=label, leave=False):
        model.train()
        order = torch.randperm(len(train_x), generator=generator)
        for start in range(0, len(order), 64):
            batch = order[start : start + 64]
            optimizer.zero_grad()
            loss = loss_fn(model(train_x[batch]), train_y[batch])
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        predictions = model(test_x).argmax(dim=1)
    return float((predictions == test_y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (default: 3)")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs per run (default: 30)")
    parser.add_argument(
        "--backend", default="auto", choices=["auto", "closed_form", "cvxpy"], help="prox layer backend"
    )
    parser.add_argument("--output", type=Path, default=Path("outputs/digits_prox_layer.md"), help="table file")
    arguments = parser.parse_args()
    torch.set_num_threads(2)

    prox_layer = make_prox_layer(arguments.backend)
    print(f"prox layer backend: {prox_layer.plan.backend}")
    print(po.explain(prox_layer))

    results: dict[str, list[float]] = {"MLP": [], "MLP + prox layer": []}
    seconds: dict[str, float] = {"MLP": 0.0, "MLP + prox layer": 0.0}
    for seed in range(arguments.seeds):
        data = load_data(seed)
        for label, prox in (("MLP", None), ("MLP + prox layer", make_prox_layer(arguments.backend))):
            torch.manual_seed(seed)
            np.random.seed(seed)
            model = make_model(prox)
            start = time.perf_counter()
            accuracy = train_and_test(model, data, arguments.epochs, seed, f"{label} seed {seed}")
            seconds[label] += time.perf_counter() - start
            results[label].append(accuracy)
            print(f"seed {seed}  {label:<17} test accuracy {accuracy:.4f}")

    lines = [
        f"# digits: MLP with and without a prox layer ({arguments.seeds} seeds, {arguments.epochs} epochs)",
        "",
        f"prox layer: 0.1 * norm1(z) with z >= 0, lam = 1, backend `{prox_layer.plan.backend}`",
        "",
        "| model | test accuracy (mean +- std) | training time per seed (s) |",
        "|---|---|---|",
    ]
    for label, accuracies in results.items():
        spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
        lines.append(
            f"| {label} | {statistics.mean(accuracies):.4f} +- {spread:.4f} | {seconds[label] / arguments.seeds:.1f} |"
        )
    lines += [
        "",
        f"command: python examples/digits_prox_layer.py --seeds {arguments.seeds} "
        f"--epochs {arguments.epochs} --backend {arguments.backend}",
    ]
    table = "\n".join(lines)
    print()
    print(table)
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(table + "\n")
    print(f"\nwrote {arguments.output}")


if __name__ == "__main__":
    main()
