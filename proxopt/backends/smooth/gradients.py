"""Backward passes of the smooth backend: implicit differentiation and perturbation.

At a minimizer ``z*`` of ``F(z) = R'(z) + (a / 2) ||z||^2 - y^T z`` the gradient
``G(z, theta) = grad_z R'(z) + a z - y`` vanishes, where ``theta`` stands for ``y``, ``a``
and the Parameters of ``R'``. When ``K = a I + hess R'(z*)`` (equal to ``lam I + H``
with ``H`` the Hessian of the whole ``R``) is positive definite, ``z*`` is a strict local
minimizer and, by the implicit function theorem,

    dz*/dtheta = -K^{-1} dG/dtheta.

So for an upstream gradient ``g`` the backward pass solves ``K w = g`` and returns
``-(dG/dtheta)^T w``: ``w`` for ``y`` (because ``dG/dy = -I``), and a vector-Jacobian
product of ``G`` for ``a`` and the Parameters. Gradients for ``x`` and ``lam`` follow by
autograd through ``y = lam x + ...`` and ``a = lam + ...``, which gives ``dL/dx = lam w``.

``w`` comes from one of four solvers:

* conjugate gradients with Hessian-vector products (double backward), batched;
* a dense Hessian from ``d`` Hessian-vector products and a Cholesky solve, for small ``d``;
* a division by the Hessian's diagonal, for a separable ``R`` (one Hessian-vector product);
* perturbation: ``K^{-1} = dz*/dy`` is symmetric, so
  ``K^{-1} g ~ (z*(y + h g) - z*(y - h g)) / (2 h)`` from two warm-started solves
  (Domke, "Implicit differentiation by perturbation", NeurIPS 2010).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from proxopt.backends.smooth.objective import Objective, hessian_diagonal, hessian_matrix, hessian_vector_product

__all__ = [
    "BackwardOutcome",
    "conjugate_gradient",
    "direct_solve",
    "diagonal_solve",
    "implicit_solve",
    "perturbation_step",
    "perturbation_solve",
    "adjoint_gradients",
]


@dataclass(frozen=True)
class BackwardOutcome:
    """The result of one backward solve ``K w = g``; tensors have one entry per batch item.

    Attributes:
        mode: ``"cg"``, ``"direct"``, ``"diagonal"`` or ``"perturbation"``.
        converged: bool tensor: the linear solve (or both perturbed solves) converged.
        iterations: int64 tensor: conjugate-gradient iterations, or the larger iteration
            count of the two perturbed solves (0 for ``"direct"`` and ``"diagonal"``).
        residual: the relative residual ``||K w - g|| / ||g||`` (``"cg"``, ``"direct"``,
            ``"diagonal"``), or the larger final gradient norm of the two perturbed solves.
        not_positive_definite: bool tensor: ``K`` was found not positive definite (the
            item's gradient is set to zero).
        smallest_curvature: ``p^T K p / p^T p`` at the first nonpositive curvature found by
            conjugate gradients, the smallest eigenvalue of ``K`` (direct, diagonal), or ``w^T K w / w^T w``
            (perturbation); NaN where ``K`` looked positive definite.
    """

    mode: str
    converged: torch.Tensor
    iterations: torch.Tensor
    residual: torch.Tensor
    not_positive_definite: torch.Tensor
    smallest_curvature: torch.Tensor

    @property
    def ok(self) -> torch.Tensor:
        return self.converged & ~self.not_positive_definite


def conjugate_gradient(
    product: Callable[[torch.Tensor], torch.Tensor], rhs: torch.Tensor, tol: float, max_iter: int
) -> tuple[torch.Tensor, BackwardOutcome]:
    """Solve ``K w = rhs`` per item by conjugate gradients; ``product(v)`` returns ``K v``.

    Each item stops when ``||rhs - K w|| <= tol * ||rhs||``. An item whose search
    direction ``p`` has ``p^T K p <= 0`` stops too and is flagged: ``K`` is then not
    positive definite, and conjugate gradients would not converge reliably.
    """
    batch = rhs.shape[0]
    solution = torch.zeros_like(rhs)
    residual = rhs.clone()
    direction = residual.clone()
    squared = (residual * residual).sum(-1)
    target = tol * squared.sqrt()
    done = squared.sqrt() <= target
    indefinite = torch.zeros_like(done)
    curvature_found = torch.full_like(squared, float("nan"))
    iterations = torch.zeros(batch, dtype=torch.int64, device=rhs.device)
    for _ in range(max_iter):
        active = ~done & ~indefinite
        if not bool(active.any()):
            break
        image = product(direction)
        curvature = (direction * image).sum(-1)
        negative = active & ~(curvature > 0)
        indefinite |= negative
        curvature_found = torch.where(negative, curvature / (direction * direction).sum(-1), curvature_found)
        moving = active & ~negative
        alpha = torch.where(moving, squared / torch.where(moving, curvature, 1.0), 0.0)
        solution = solution + alpha.unsqueeze(-1) * direction
        residual = residual - alpha.unsqueeze(-1) * image
        new_squared = (residual * residual).sum(-1)
        iterations += moving.long()
        done |= moving & (new_squared.sqrt() <= target)
        beta = torch.where(moving, new_squared / torch.where(moving, squared, 1.0), 0.0)
        direction = torch.where(moving.unsqueeze(-1), residual + beta.unsqueeze(-1) * direction, direction)
        squared = torch.where(moving, new_squared, squared)
    norm = (rhs * rhs).sum(-1).sqrt()
    relative = squared.sqrt() / torch.where(norm > 0, norm, 1.0)
    outcome = BackwardOutcome("cg", done, iterations, relative, indefinite, curvature_found)
    return solution, outcome


def direct_solve(hessian: torch.Tensor, rhs: torch.Tensor) -> tuple[torch.Tensor, BackwardOutcome]:
    """Solve ``K w = rhs`` per item by Cholesky; flag items where ``K`` is not positive definite."""
    size = hessian.shape[-1]
    identity = torch.eye(size, dtype=hessian.dtype, device=hessian.device)
    factor, info = torch.linalg.cholesky_ex(hessian)
    indefinite = info != 0
    safe = torch.where(indefinite[:, None, None], identity, factor)
    solution = torch.cholesky_solve(rhs.unsqueeze(-1), safe).squeeze(-1)
    solution = torch.where(indefinite.unsqueeze(-1), 0.0, solution)
    smallest = torch.full_like(rhs[:, 0], float("nan"))
    if bool(indefinite.any()):
        eigenvalues = torch.linalg.eigvalsh(torch.where(indefinite[:, None, None], hessian, identity))
        smallest = torch.where(indefinite, eigenvalues[:, 0], smallest)
    residual = rhs - (hessian @ solution.unsqueeze(-1)).squeeze(-1)
    norm = rhs.norm(dim=-1)
    relative = residual.norm(dim=-1) / torch.where(norm > 0, norm, 1.0)
    iterations = torch.zeros(rhs.shape[0], dtype=torch.int64, device=rhs.device)
    return solution, BackwardOutcome("direct", ~indefinite, iterations, relative, indefinite, smallest)


def diagonal_solve(diagonal: torch.Tensor, rhs: torch.Tensor) -> tuple[torch.Tensor, BackwardOutcome]:
    """Solve ``K w = rhs`` per item for a diagonal ``K``; flag items with an entry ``<= 0``."""
    positive = diagonal > 0
    indefinite = ~positive.all(-1)
    solution = torch.where(positive, rhs / torch.where(positive, diagonal, 1.0), 0.0)
    solution = torch.where(indefinite.unsqueeze(-1), 0.0, solution)
    smallest = torch.where(indefinite, diagonal.amin(-1), torch.full_like(diagonal[:, 0], float("nan")))
    residual = rhs - diagonal * solution
    norm = rhs.norm(dim=-1)
    relative = residual.norm(dim=-1) / torch.where(norm > 0, norm, 1.0)
    iterations = torch.zeros(rhs.shape[0], dtype=torch.int64, device=rhs.device)
    return solution, BackwardOutcome("diagonal", ~indefinite, iterations, relative, indefinite, smallest)


def implicit_solve(
    objective: Objective, z: torch.Tensor, rhs: torch.Tensor, solver: str, tol: float, max_iter: int
) -> tuple[torch.Tensor, BackwardOutcome]:
    """Solve ``K w = rhs`` with ``K`` the Hessian of ``F`` at ``z``, by ``"cg"``, ``"direct"`` or ``"diagonal"``."""
    point, gradient = objective.gradient_graph(z)
    if solver == "diagonal":
        return diagonal_solve(hessian_diagonal(point, gradient).detach(), rhs)
    if solver == "direct":
        return direct_solve(hessian_matrix(point, gradient).detach(), rhs)
    solution, outcome = conjugate_gradient(
        lambda vector: hessian_vector_product(point, gradient, vector).detach(), rhs, tol, max_iter
    )
    return torch.where(outcome.not_positive_definite.unsqueeze(-1), 0.0, solution), outcome


def perturbation_step(tol: float, dtype: torch.dtype) -> float:
    """Return the default step ``h`` of the perturbation gradient.

    Let ``delta`` be the error in ``z`` of each warm-started solve: about ``tol / mu``,
    with ``mu`` the smallest eigenvalue of ``K``, taken as 1. The central difference
    ``(z(y + h u) - z(y - h u)) / (2 h)`` along a unit vector ``u`` has a truncation error
    of about ``M h^2 / 6`` (``M`` the third derivative of ``y -> z(y)``, taken as 1) and
    an error of about ``delta / h`` from the solves. Both are about ``delta^(2/3)`` at
    ``h = delta^(1/3)``. So ``h = max(tol, 64 eps)^(1/3)``: in float64 with ``tol = 1e-12``,
    ``h = 1e-4`` and each error is about ``h^2 = 1e-8``, three orders below a gradient
    check's 1e-5; at the default ``tol = 1e-10``, ``h = 4.6e-4`` and the errors are about 2e-7.
    Both errors scale with ``||g||``, because the difference is taken along ``g / ||g||``.
    In float32 (``tol = 1e-4``, ``h = 0.046``) they are about 2e-3 ``||g||``, so the
    implicit gradient is the better choice there.
    """
    return max(tol, 64 * torch.finfo(dtype).eps) ** (1.0 / 3.0)


def perturbation_solve(
    solve: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
    product: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    step: float,
) -> tuple[torch.Tensor, BackwardOutcome]:
    """Return ``K^{-1} rhs`` by central differences of the solution map ``y -> z*(y)``.

    ``solve(shift)`` returns ``z*`` for ``y + shift`` (warm-started at the current
    solution) with its converged mask, iteration counts and final gradient norms;
    ``product(v)`` returns ``K v``. The step is ``h`` along the unit vector
    ``u = rhs / ||rhs||``, and the result is scaled back by ``||rhs||``:
    ``K^{-1} rhs ~ ||rhs|| (z*(y + h u) - z*(y - h u)) / (2 h)``.

    At a strict local minimizer ``K`` is positive definite, so the result ``w`` has
    ``w^T K w > 0``. One Hessian-vector product checks that. An item that fails the check
    is flagged and gets ``w = 0``.
    """
    norm = rhs.norm(dim=-1, keepdim=True)
    unit = rhs / torch.where(norm > 0, norm, 1.0)
    plus, plus_converged, plus_iterations, plus_residual = solve(step * unit)
    minus, minus_converged, minus_iterations, minus_residual = solve(-step * unit)
    solution = norm * (plus - minus) / (2 * step)

    squared = (solution * solution).sum(-1)
    curvature = (solution * product(solution)).sum(-1) / torch.where(squared > 0, squared, 1.0)
    indefinite = (squared > 0) & ~(curvature > 0)
    solution = torch.where(indefinite.unsqueeze(-1), 0.0, solution)
    outcome = BackwardOutcome(
        "perturbation",
        plus_converged & minus_converged,
        torch.maximum(plus_iterations, minus_iterations),
        torch.maximum(plus_residual, minus_residual),
        indefinite,
        torch.where(indefinite, curvature, torch.full_like(curvature, float("nan"))),
    )
    return solution, outcome


def adjoint_gradients(
    make_objective: Callable[[torch.Tensor, Sequence[torch.Tensor]], Objective],
    z: torch.Tensor,
    solution: torch.Tensor,
    a: torch.Tensor,
    parameters: Sequence[torch.Tensor],
    needs: Sequence[bool],
) -> list[torch.Tensor | None]:
    """Return ``-(dG/dtheta)^T w`` for ``theta = a`` and each Parameter tensor.

    ``make_objective(a, parameters)`` builds ``F`` from those tensors, and ``needs[k]``
    is True when input ``k`` (``a`` first) needs a gradient. The product is one double-backward
    pass: the gradient of ``G(z*, theta) . w`` with respect to ``theta``.
    """
    inputs = [a, *parameters]
    leaves = [tensor.detach().requires_grad_(need) for tensor, need in zip(inputs, needs, strict=True)]
    wanted = [leaf for leaf in leaves if leaf.requires_grad]
    if not wanted:
        return [None] * len(inputs)
    with torch.enable_grad():
        objective = make_objective(leaves[0], leaves[1:])
        point = z.detach().requires_grad_(True)
        (gradient,) = torch.autograd.grad(objective(point).sum(), point, create_graph=True)
        products = torch.autograd.grad(gradient, wanted, solution, allow_unused=True)
    by_leaf = {id(leaf): product for leaf, product in zip(wanted, products, strict=True)}
    result: list[torch.Tensor | None] = []
    for leaf in leaves:
        if not leaf.requires_grad:
            result.append(None)
            continue
        product = by_leaf[id(leaf)]
        result.append(torch.zeros_like(leaf) if product is None else -product)
    return result
