"""Tests of ProxLayer as an nn.Module: lam handling, dtypes and batch shapes."""

from __future__ import annotations

import torch
from torch import nn

import proxopt as po


def _soft_threshold_layer(lam: float | torch.Tensor = 1.0) -> po.ProxLayer:
    z = po.Variable(4)
    return po.ProxLayer(0.5 * po.norm1(z), lam=lam)


def test_parameter_lam_is_registered_and_trained() -> None:
    layer = _soft_threshold_layer(nn.Parameter(torch.tensor(2.0)))
    assert [name for name, _ in layer.named_parameters()] == ["_lam_tensor"]
    x = torch.tensor([[1.0, -2.0, 0.1, 3.0]])
    layer(x).sum().backward()
    # z = softshrink(x, 0.5 / lam), so dz/dlam = sign(x) * 0.5 / lam^2 on the support
    # {1, -2, 3}: the sum is (1 - 1 + 1) * 0.125.
    assert layer.lam.grad is not None  # type: ignore[union-attr]
    assert torch.allclose(layer.lam.grad, torch.tensor(0.125))  # type: ignore[union-attr]


def test_assigning_parameter_lam_later() -> None:
    layer = _soft_threshold_layer()
    layer.lam = nn.Parameter(torch.tensor(3.0))
    assert [name for name, _ in layer.named_parameters()] == ["_lam_tensor"]
    layer.lam = 2.0
    assert list(layer.named_parameters()) == []
    assert layer.lam == 2.0


def test_per_sample_lam(generator: torch.Generator) -> None:
    lam = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    layer = _soft_threshold_layer(lam)
    x = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    expected = torch.stack([torch.nn.functional.softshrink(x[i], 0.5 / float(lam[i])) for i in range(3)])
    assert torch.allclose(layer(x), expected)


def test_output_dtype_follows_input(dtype: torch.dtype, device: torch.device) -> None:
    layer = _soft_threshold_layer(torch.tensor(1.5))
    x = torch.randn(2, 4, dtype=dtype, device=device)
    output = layer(x)
    assert output.dtype == dtype
    assert output.device == x.device


def test_layer_inside_sequential(generator: torch.Generator) -> None:
    model = nn.Sequential(nn.Linear(3, 4), _soft_threshold_layer(), nn.Linear(4, 2))
    x = torch.randn(5, 3, generator=generator)
    model(x).sum().backward()
    weight = model[0].weight
    assert weight.grad is not None
    assert torch.isfinite(weight.grad).all()


def test_extra_repr_names_backend() -> None:
    assert "backend='closed_form'" in repr(_soft_threshold_layer())
