"""Exact projections onto the nonconvex sets Sphere and CenteredSphere.

On a sphere ``||z|| = r`` the merged objective ``(a/2)||z||^2 - y^T z`` differs from
``-y^T z`` by a constant, so the minimizer is ``r y / ||y||`` for every ``a``; with the
extra constraint ``1^T z = 0`` it is ``sqrt(n) (y - mean(y)) / ||y - mean(y)||``, which
for ``lam = 1`` is batch normalization without the affine part (population standard
deviation, no epsilon). The minimizer is unique when ``y`` (centered ``y``) is nonzero;
at zero every point of the set is a minimizer and the formulas return NaN, as
``torch.nn.functional.batch_norm(..., eps=0)`` does on constant input.
"""

from __future__ import annotations

import math

import torch

from proxopt.backends.base import ProxCall
from proxopt.backends.closed_form.registry import ClosedFormMatch, register
from proxopt.compile.analysis import ProxProblem, set_values
from proxopt.dsl.sets import CenteredSphere, Sphere

__all__ = ["project_sphere", "project_centered_sphere"]


def project_sphere(v: torch.Tensor, radius: torch.Tensor | float) -> torch.Tensor:
    """Project the rows of ``v`` onto ``{z : ||z||_2 = radius}``."""
    norm = torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    if isinstance(radius, torch.Tensor) and radius.ndim:
        radius = radius.reshape(radius.shape + (1,) * (v.ndim - radius.ndim))
    return v * (radius / norm)


def project_centered_sphere(v: torch.Tensor) -> torch.Tensor:
    """Project the rows of ``v`` onto ``{z : 1^T z = 0, ||z||_2 = sqrt(n)}``."""
    centered = v - v.mean(dim=-1, keepdim=True)
    norm = torch.linalg.vector_norm(centered, dim=-1, keepdim=True)
    return centered * (math.sqrt(v.shape[-1]) / norm)


def _only_set(problem: ProxProblem, kind: type) -> object | None:
    if problem.residual_terms or len(problem.constraints) != 1:
        return None
    constraint = problem.constraints[0]
    return constraint if isinstance(constraint, kind) else None


@register("sphere")
def _recognize_sphere(problem: ProxProblem, lam: float | None) -> ClosedFormMatch | None:
    sphere = _only_set(problem, Sphere)
    if sphere is None:
        return None
    assert isinstance(sphere, Sphere)

    def solve(call: ProxCall) -> torch.Tensor:
        y, _ = call.merged(problem)
        radius = set_values(sphere, call.values, call.x)["radius"]
        return project_sphere(y, radius)

    return ClosedFormMatch("sphere", "projection onto the sphere: r * y / ||y||", solve)


@register("centered_sphere")
def _recognize_centered_sphere(problem: ProxProblem, lam: float | None) -> ClosedFormMatch | None:
    if _only_set(problem, CenteredSphere) is None:
        return None

    def solve(call: ProxCall) -> torch.Tensor:
        y, _ = call.merged(problem)
        return project_centered_sphere(y)

    def fast(x: torch.Tensor, lam: float) -> torch.Tensor:
        # With no terms y = lam * x, and the projection is invariant to positive scaling.
        return project_centered_sphere(x)

    return ClosedFormMatch(
        "centered_sphere",
        "projection onto the centered sphere: sqrt(n) (y - mean y) / ||y - mean y|| "
        "(batch normalization without affine)",
        solve,
        fast if not problem.terms else None,
    )
