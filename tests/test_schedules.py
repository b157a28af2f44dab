"""Tests of the lam schedules."""

from __future__ import annotations

import pytest

import proxopt as po
from proxopt.schedules import ConstantLam, LinearGrowth


def _layer() -> po.ProxLayer:
    z = po.Variable(3)
    return po.ProxLayer(po.norm1(z), [z >= 0])


def test_linear_growth_follows_rule() -> None:
    layer = _layer()
    schedule = LinearGrowth(layer, alpha0=0.1, k=0.5)
    assert layer.lam == pytest.approx(0.1)
    values = [schedule.step() for _ in range(3)]
    assert values == pytest.approx([0.15, 0.2, 0.25])
    assert layer.lam == pytest.approx(0.25)


def test_schedule_updates_every_layer() -> None:
    layers = [_layer(), _layer()]
    schedule = ConstantLam(layers, 2.0)
    schedule.step()
    assert [layer.lam for layer in layers] == [2.0, 2.0]


def test_schedule_state_round_trip() -> None:
    layer = _layer()
    schedule = LinearGrowth(layer, alpha0=1.0, k=1.0)
    schedule.step()
    state = schedule.state_dict()
    restored = LinearGrowth(_layer(), alpha0=1.0, k=1.0)
    restored.load_state_dict(state)
    assert restored.layers[0].lam == pytest.approx(2.0)


def test_invalid_schedule_arguments() -> None:
    with pytest.raises(po.InvalidInputError, match="alpha0 must be > 0"):
        LinearGrowth(_layer(), alpha0=0.0, k=1.0)
    with pytest.raises(po.InvalidInputError, match="growth rate k must be >= 0"):
        LinearGrowth(_layer(), alpha0=1.0, k=-1.0)
