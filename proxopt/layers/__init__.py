"""Prox layers built on the backends."""

from proxopt.layers.prox import ProxLayer, explain

__all__ = ["ProxLayer", "explain"]
