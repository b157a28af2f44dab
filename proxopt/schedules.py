"""Schedules for a prox layer's weight ``lam``, stepped once per epoch like torch LR schedulers.

Growing ``lam`` during training fades the prox layer out: as ``lam`` grows the output
approaches the input, so a network trained this way can drop the layer at test time.
:class:`LinearGrowth` is the rule ``lam_t = (1 + k t) alpha_0`` of section 5.1 of Li, Ma
and Zhang, "Proximal Mapping for Deep Regularization" (NeurIPS 2020), used there with
``k = 0.5`` and ``alpha_0 = 0.1``.
"""

from __future__ import annotations

from collections.abc import Iterable

from proxopt.errors import InvalidInputError
from proxopt.layers.prox import ProxLayer

__all__ = ["LamSchedule", "ConstantLam", "LinearGrowth"]


class LamSchedule:
    """Base class: sets ``layer.lam`` for every layer from :meth:`value` at each epoch.

    Args:
        layers: a prox layer or several sharing the schedule.

    Call :meth:`step` once at the end of every epoch, as with ``torch.optim.lr_scheduler``.
    """

    def __init__(self, layers: ProxLayer | Iterable[ProxLayer]) -> None:
        self.layers = [layers] if isinstance(layers, ProxLayer) else list(layers)
        if not self.layers:
            raise InvalidInputError("a lam schedule needs at least one ProxLayer.")
        self.epoch = 0
        self._apply()

    def value(self, epoch: int) -> float:
        """Return ``lam`` for ``epoch`` (0 for the first epoch)."""
        raise NotImplementedError

    def step(self) -> float:
        """Advance to the next epoch, update the layers and return the new ``lam``."""
        self.epoch += 1
        return self._apply()

    def _apply(self) -> float:
        lam = self.value(self.epoch)
        for layer in self.layers:
            layer.lam = lam
        return lam

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self._apply()


class ConstantLam(LamSchedule):
    """``lam_t = lam`` for every epoch."""

    def __init__(self, layers: ProxLayer | Iterable[ProxLayer], lam: float) -> None:
        if not lam > 0:
            raise InvalidInputError(f"lam must be > 0, got {lam!r}.")
        self.lam = float(lam)
        super().__init__(layers)

    def value(self, epoch: int) -> float:
        return self.lam


class LinearGrowth(LamSchedule):
    """``lam_t = (1 + k t) alpha_0`` at epoch ``t``.

    Args:
        layers: the prox layer(s) to update.
        alpha0: ``lam`` at epoch 0, > 0.
        k: growth rate per epoch, >= 0.
    """

    def __init__(self, layers: ProxLayer | Iterable[ProxLayer], alpha0: float, k: float) -> None:
        if not alpha0 > 0:
            raise InvalidInputError(f"alpha0 must be > 0, got {alpha0!r}.")
        if not k >= 0:
            raise InvalidInputError(f"the growth rate k must be >= 0, got {k!r}.")
        self.alpha0 = float(alpha0)
        self.k = float(k)
        super().__init__(layers)

    def value(self, epoch: int) -> float:
        return (1.0 + self.k * epoch) * self.alpha0
