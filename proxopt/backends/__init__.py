"""Backends that compute prox maps, and the plan that chooses among them."""

from proxopt.backends import closed_form, cvxpy_backend, quadratic, smooth  # noqa: F401 - register backends
from proxopt.backends.base import BACKEND_ORDER, BackendOptions, CompiledProx, ProxCall, Unsupported
from proxopt.backends.plan import Plan, make_plan

__all__ = ["BACKEND_ORDER", "BackendOptions", "CompiledProx", "Plan", "ProxCall", "Unsupported", "make_plan"]
