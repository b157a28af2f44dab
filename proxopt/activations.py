"""Familiar activation functions declared as prox maps, next to their torch references.

Any activation ``sigma`` with ``sigma'(x) in (0, 1]`` is the prox map (``lam = 1``,
``C = R^n``) of ``R(z) = int sigma^{-1}(z) dz - z^2 / 2``, which is convex; ReLU and hard
tanh are projections (``R = 0``) onto ``[0, inf)`` and ``[-1, 1]``; softmax is the prox
map of ``sum_i z_i log z_i - z_i^2 / 2`` over the simplex; batch normalization without
the affine part is the projection onto ``{z : 1^T z = 0, ||z|| = sqrt(n)}``. (Section 2
of Li, Ma and Zhang, "Proximal Mapping for Deep Regularization", NeurIPS 2020.)

Each :class:`Activation` builds its declaration for a size ``n`` and holds a torch
reference implementation to compare against.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from proxopt.dsl.atoms import binary_neg_entropy, neg, neg_entropy, smooth, sum_squares
from proxopt.dsl.expressions import Expression, Variable
from proxopt.dsl.sets import Box, CenteredSphere, Constraint, Simplex
from proxopt.special import dilogarithm_exp

__all__ = ["Activation", "Declaration", "ACTIVATIONS", "sparsemax_reference", "batch_norm_reference"]


@dataclass
class Declaration:
    """The arguments of :class:`~proxopt.ProxLayer` for one activation."""

    regularizer: Expression | None
    constraints: list[Constraint]
    variable: Variable
    lam: float = 1.0


@dataclass
class Activation:
    """An activation function and its prox declaration.

    Attributes:
        name: the activation's usual name.
        formula: ``R`` and ``C`` in words, for tables and docs.
        declare: builds the declaration for inputs of length ``n``.
        reference: the torch implementation, applied to the last dimension.
        min_size: the smallest ``n`` for which the identity holds.
        layer_options: extra keyword arguments for :class:`~proxopt.ProxLayer`.
    """

    name: str
    formula: str
    declare: Callable[[int], Declaration]
    reference: Callable[[torch.Tensor], torch.Tensor]
    min_size: int = 1
    layer_options: dict[str, object] = field(default_factory=dict)


def sparsemax_reference(x: torch.Tensor) -> torch.Tensor:
    """Compute sparsemax (Martins and Astudillo, 2016) by sorting, along the last dim."""
    ordered, _ = torch.sort(x, dim=-1, descending=True)
    cumulative = ordered.cumsum(-1)
    ranks = torch.arange(1, x.shape[-1] + 1, dtype=x.dtype, device=x.device)
    support = 1 + ranks * ordered > cumulative
    count = support.sum(-1, keepdim=True)
    threshold = (cumulative.gather(-1, count - 1) - 1) / count.to(x.dtype)
    return torch.clamp(x - threshold, min=0)


def batch_norm_reference(x: torch.Tensor) -> torch.Tensor:
    """Normalize each row of ``x`` with ``torch.nn.functional.batch_norm`` (no affine).

    Each row contains one feature's values over a mini-batch, so the rows are passed to
    ``batch_norm`` as its channels. ``batch_norm`` rejects ``eps = 0`` in training mode,
    so ``eps`` is the smallest normal number of the dtype, which leaves every variance
    above 1e-290 (float64) unchanged when added.
    """
    rows = x.reshape(-1, x.shape[-1])
    eps = float(torch.finfo(x.dtype).tiny)
    normalized = F.batch_norm(rows.T, None, None, training=True, eps=eps).T
    return normalized.reshape(x.shape)


def _relu(n: int) -> Declaration:
    z = Variable(n)
    return Declaration(None, [z >= 0], z)


def _hardtanh(n: int) -> Declaration:
    z = Variable(n)
    return Declaration(None, [Box(-1.0, 1.0)], z)


def _sigmoid(n: int) -> Declaration:
    z = Variable(n)
    return Declaration(binary_neg_entropy(z) - 0.5 * sum_squares(z), [], z)


def _tanh(n: int) -> Declaration:
    # d/dz of binary_neg_entropy((1 + z) / 2) is atanh(z), the inverse of tanh.
    z = Variable(n)
    return Declaration(binary_neg_entropy(0.5 * z + 0.5) - 0.5 * sum_squares(z), [], z)


def _softmax(n: int) -> Declaration:
    z = Variable(n)
    return Declaration(neg_entropy(z) - 0.5 * sum_squares(z), [Simplex()], z)


def _sparsemax(n: int) -> Declaration:
    z = Variable(n)
    return Declaration(None, [Simplex()], z)


LEAKY_RELU_SLOPE = 0.1


def _leaky_relu(n: int, slope: float = LEAKY_RELU_SLOPE) -> Declaration:
    # For z < 0 the optimality condition (1/slope - 1) z + z - x = 0 gives z = slope * x.
    z = Variable(n)
    weight = 0.5 * (1.0 / slope - 1.0)
    return Declaration(weight * sum_squares(neg(z)), [], z)


def _softplus_regularizer(z: torch.Tensor) -> torch.Tensor:
    # Li2(exp(-z)) with the stable form of the dilogarithm near z = 0 (see proxopt.special);
    # it is NaN for z < 0, so the smooth backend's line search stays in z > 0.
    return dilogarithm_exp(-z).sum(-1)


def _softplus(n: int) -> Declaration:
    # d/dz Li2(exp(-z)) = log(1 - exp(-z)), so the optimality condition
    # log(1 - exp(-z)) + z - x = 0 gives z = log(1 + exp(x)). R'' = 1 / expm1(z) > 0: convex.
    z = Variable(n)
    return Declaration(smooth(_softplus_regularizer, z, convex=True, name="dilog_exp_neg"), [], z)


def _batch_norm(n: int) -> Declaration:
    z = Variable(n)
    return Declaration(None, [CenteredSphere()], z)


ACTIVATIONS: dict[str, Activation] = {
    activation.name: activation
    for activation in [
        Activation("relu", "R = 0, C = {z >= 0}", _relu, torch.relu),
        Activation("hardtanh", "R = 0, C = [-1, 1]^n", _hardtanh, F.hardtanh),
        Activation(
            "sigmoid",
            "R = sum z log z + (1 - z) log(1 - z) - z^2 / 2",
            _sigmoid,
            torch.sigmoid,
        ),
        Activation(
            "tanh",
            "R = sum u log u + (1 - u) log(1 - u) - z^2 / 2, u = (1 + z) / 2",
            _tanh,
            torch.tanh,
        ),
        Activation(
            "softmax",
            "R = sum z log z - z^2 / 2, C = simplex",
            _softmax,
            lambda x: torch.softmax(x, dim=-1),
        ),
        Activation("sparsemax", "R = 0, C = simplex", _sparsemax, sparsemax_reference),
        Activation(
            "leaky_relu",
            f"R = (1/a - 1) / 2 * sum min(z, 0)^2, slope a = {LEAKY_RELU_SLOPE}",
            _leaky_relu,
            lambda x: F.leaky_relu(x, LEAKY_RELU_SLOPE),
        ),
        Activation(
            "softplus",
            "R = sum Li2(exp(-z)) on z > 0 (Li2 = dilogarithm; smooth backend)",
            _softplus,
            F.softplus,
            layer_options={"allow_smooth": True, "smooth_options": {"domain": (0.0, None), "separable": True}},
        ),
        Activation(
            "batch_norm",
            "R = 0, C = {1^T z = 0, ||z|| = sqrt(n)} (no affine part)",
            _batch_norm,
            batch_norm_reference,
            min_size=2,
        ),
    ]
}
"""The activation identities of section 2, by name."""
