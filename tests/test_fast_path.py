"""Tests of ProxLayer's fast path: closed forms called without building a ProxCall.

The fast path must give the same values and gradients as the validated path, bit for
bit, and must leave every input error to the validated path.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from proxopt import (
    CenteredSphere,
    InvalidInputError,
    ProxLayer,
    ShapeError,
    Simplex,
    Variable,
    binary_neg_entropy,
    logistic,
    neg_entropy,
    sum_squares,
)
from proxopt.activations import ACTIVATIONS
from proxopt.dsl.expressions import Expression
from proxopt.dsl.sets import Constraint

SIZE = 5

Build = Callable[[Variable], tuple[Expression, list[Constraint]]]


def _sigmoid(z: Variable) -> tuple[Expression, list[Constraint]]:
    return binary_neg_entropy(z) - 0.5 * sum_squares(z), []


def _scaled_binary(z: Variable) -> tuple[Expression, list[Constraint]]:
    # A scaled and shifted argument and a scaled sum_squares term: the merged weight is
    # lam - 2 * 0.7 * 0.3^2 on both paths.
    return 2.0 * binary_neg_entropy(0.3 * z + 0.4) - 0.7 * sum_squares(0.3 * z), []


def _softmax(z: Variable) -> tuple[Expression, list[Constraint]]:
    return neg_entropy(z) - 0.5 * sum_squares(z), [Simplex()]


def _logistic(z: Variable) -> tuple[Expression, list[Constraint]]:
    return logistic(z) - 0.5 * sum_squares(z), []


def _entropy(z: Variable) -> tuple[Expression, list[Constraint]]:
    return 0.5 * neg_entropy(z), []


def _layer(build: Build, lam: float | torch.Tensor) -> ProxLayer:
    z = Variable(SIZE)
    regularizer, constraints = build(z)
    return ProxLayer(regularizer, constraints, lam, variable=z)


PATHS = [
    ("sigmoid", _sigmoid, 1.0),
    ("sigmoid", _sigmoid, 2.0),
    ("sigmoid", _sigmoid, 0.5),
    ("scaled_binary", _scaled_binary, 1.5),
    ("softmax", _softmax, 1.0),
    ("softmax", _softmax, 2.5),
    ("softmax", _softmax, 0.5),
    ("logistic", _logistic, 2.0),
    ("entropy", _entropy, 1.0),
]
PATH_IDS = [f"{name}_lam{lam:g}" for name, _, lam in PATHS]


def _forward_backward(layer: ProxLayer, x: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = x.clone().requires_grad_()
    out = layer(leaf)
    out.backward(grad)
    assert leaf.grad is not None
    return out.detach(), leaf.grad


@pytest.mark.parametrize("name, build, lam", PATHS, ids=PATH_IDS)
def test_fast_path_matches_validated_path(
    name: str, build: Build, lam: float, dtype: torch.dtype, generator: torch.Generator
) -> None:
    fast = _layer(build, lam)
    validated = _layer(build, lam)
    validated._fast = None
    assert fast._fast is not None
    # A 3-d input: the fast path keeps every leading dim, the validated path flattens them.
    x = (3 * torch.randn(2, 3, SIZE, generator=generator, dtype=torch.float64)).to(dtype)
    grad = torch.randn(x.shape, generator=generator, dtype=torch.float64).to(dtype)
    out_fast, grad_fast = _forward_backward(fast, x, grad)
    out_validated, grad_validated = _forward_backward(validated, x, grad)
    assert out_fast.shape == x.shape
    assert torch.equal(out_fast, out_validated)
    assert torch.equal(grad_fast, grad_validated)


def test_fast_path_used_for_float_lam(generator: torch.Generator) -> None:
    layer = _layer(_sigmoid, 1.0)
    calls: list[float] = []
    fast = layer._fast
    assert fast is not None

    def counted(x: torch.Tensor, lam: float) -> torch.Tensor:
        calls.append(lam)
        return fast(x, lam)

    layer._fast = counted
    x = torch.randn(4, SIZE, generator=generator)
    assert torch.equal(layer(x), torch.sigmoid(x))
    assert calls == [1.0]


def test_tensor_lam_takes_validated_path(generator: torch.Generator) -> None:
    layer = _layer(_sigmoid, 2.0)
    lam = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    layer.lam = lam
    x = torch.randn(3, SIZE, generator=generator, dtype=torch.float64)
    out = layer(x)
    (grad,) = torch.autograd.grad(out.sum(), lam)
    reference = _layer(_sigmoid, 2.0)(x)
    assert torch.allclose(out, reference, rtol=0, atol=1e-15)
    assert bool(grad != 0)


def test_new_float_lam_reaches_fast_path(generator: torch.Generator) -> None:
    layer = _layer(_softmax, 1.0)
    x = torch.randn(3, SIZE, generator=generator, dtype=torch.float64)
    assert torch.equal(layer(x), torch.softmax(x, -1))
    layer.lam = 2.5
    assert torch.equal(layer(x), _layer(_softmax, 2.5)(x))
    layer.lam = 1.0
    assert torch.equal(layer(x), torch.softmax(x, -1))


def test_fast_path_rejects_invalid_lam() -> None:
    layer = _layer(_logistic, 2.0)
    layer.lam = 0.5  # a = lam - 1 < 0: c * logistic(z) + (a/2) ||z||^2 has no minimizer
    with pytest.raises(InvalidInputError, match="weight a must be > 0"):
        layer(torch.zeros(2, SIZE))


def test_check_option_bypasses_fast_path(generator: torch.Generator) -> None:
    z = Variable(SIZE)
    layer = ProxLayer(binary_neg_entropy(z) - 0.5 * sum_squares(z), lam=2.0, variable=z, check=True)
    x = torch.randn(2, SIZE, generator=generator, dtype=torch.float64)
    out = layer(x)  # compares with the cvxpy backend and warns (an error here) on disagreement
    assert layer._checked
    assert out.shape == x.shape


@pytest.mark.parametrize(
    "bad_input, error, message",
    [
        (torch.zeros(3, SIZE + 1), ShapeError, "expected \\(\\*batch, n\\) with n = 5"),
        (torch.zeros(()), ShapeError, "expected \\(\\*batch, n\\)"),
        (torch.zeros(3, SIZE, dtype=torch.int64), InvalidInputError, "floating dtype"),
        ([[0.0] * SIZE], InvalidInputError, "must be a torch.Tensor"),
    ],
    ids=["wrong_size", "scalar", "integer_dtype", "list"],
)
def test_invalid_input_raises_on_fast_layer(bad_input: object, error: type[Exception], message: str) -> None:
    layer = _layer(_sigmoid, 1.0)
    assert layer._fast is not None
    with pytest.raises(error, match=message):
        layer(bad_input)  # type: ignore[arg-type]


def test_unknown_keyword_raises_on_fast_layer() -> None:
    layer = _layer(_sigmoid, 1.0)
    with pytest.raises(InvalidInputError, match="unknown keyword arguments: c"):
        layer(torch.zeros(2, SIZE), c=torch.tensor(1.0))


def test_empty_batch_returns_empty() -> None:
    layer = _layer(_softmax, 1.0)
    out = layer(torch.zeros(0, SIZE))
    assert out.shape == (0, SIZE)


def test_per_batch_layer_rejects_vector() -> None:
    # A per-batch variable needs (*batch, m, n); a vector must not reach the fast path.
    layer = ProxLayer(None, [CenteredSphere()], variable=Variable(SIZE, scope="batch"))
    assert layer._fast is not None
    with pytest.raises(ShapeError, match="expected \\(\\*batch, m, n\\)"):
        layer(torch.randn(SIZE))


@pytest.mark.parametrize("name", ["sigmoid", "tanh", "softmax"])
def test_activation_layers_have_fast_path(name: str) -> None:
    declaration = ACTIVATIONS[name].declare(SIZE)
    layer = ProxLayer(declaration.regularizer, declaration.constraints, variable=declaration.variable)
    assert layer.plan.backend == "closed_form"
    assert layer._fast is not None
