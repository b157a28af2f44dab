"""Hessians and linear parts of the quadratic terms of a regularizer.

A term of kind ``"quadratic"`` (see :mod:`proxopt.compile.analysis`) is ``c * q(u)`` with
an affine argument ``u = F vec(z) + f`` and a PSD form ``q``: ``sum_squares(u) = u^T u``,
``quad_form(u, M) = u^T M u`` or ``||G^T u||^2 = u^T G G^T u``, and
``laplacian_quadratic(u, W) = u^T (D_r + D_c - W - W^T) u`` (applied to each column of
a matrix ``u``). Both the quadratic and the cvxpy backend need the term written as

    c q(F z + f) = (1/2) z^T H z + h^T z + const,
    H = 2 c F^T Q F,   h = 2 c F^T Q f,

where ``Q`` is the form's matrix; :func:`term_quadratic` computes ``(H, h)`` in torch,
differentiably with respect to every Parameter.
"""

from __future__ import annotations

import torch

from proxopt.compile.analysis import ProxProblem, Term
from proxopt.compile.evaluate import Values, affine_coefficients, evaluate
from proxopt.dsl.atoms import LaplacianQuadratic, QuadForm, SumSquares

__all__ = ["term_quadratic", "term_is_constant"]


def term_is_constant(term: Term) -> bool:
    """Return whether a term's coefficient and expression contain no Parameter."""
    return term.coefficient.is_constant and not term.expr.parameters()


def term_quadratic(
    problem: ProxProblem,
    term: Term,
    values: Values,
    template: torch.Tensor,
    lead_ndim: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return ``(H, h)`` with ``term(z) = (1/2) z^T H z + h^T z + const``.

    Args:
        problem: the analysed problem that ``term`` belongs to.
        term: a term of kind ``"quadratic"``.
        values: parameter tensors keyed by ``id(parameter)``.
        template: a tensor of the variable's unbatched shape (one sample, or the whole
            mini-batch matrix of a per-batch variable); it fixes dtype and device.
        lead_ndim: number of leading dims of the parameter tensors in ``values``.

    Returns:
        ``H`` of shape ``(*lead, d, d)`` and ``h`` of shape ``(*lead, d)``, or None when
        the quadratic has no linear part; ``z`` is flattened row-major to ``d`` entries.
    """
    atom = term.atom
    assert atom is not None
    argument = atom.argument
    matrix, offset = affine_coefficients(argument, id(problem.variable), values, template, lead_ndim)
    if isinstance(atom, SumSquares):
        form = torch.eye(matrix.shape[-2], dtype=matrix.dtype, device=matrix.device)
    elif isinstance(atom, QuadForm):
        value = evaluate(atom.matrix, values, template)
        form = value @ value.transpose(-1, -2) if atom.factored else value
    elif isinstance(atom, LaplacianQuadratic):
        weights = evaluate(atom.weights, values, template)
        form = LaplacianQuadratic.laplacian_matrix(weights)
        if argument.ndim == 2:
            eye = torch.eye(int(argument.shape[1]), dtype=form.dtype, device=form.device)
            form = torch.kron(form, eye) if form.ndim == 2 else torch.stack([torch.kron(f, eye) for f in form])
    else:
        raise TypeError(f"{atom!r} is not a quadratic atom")

    weight = term.coefficient.value(values, template)
    weight = torch.as_tensor(weight, dtype=matrix.dtype, device=matrix.device)
    transposed = matrix.transpose(-1, -2)
    hessian = 2.0 * weight.reshape(weight.shape + (1, 1)) * (transposed @ form @ matrix)
    if bool((offset == 0).all()):
        return hessian, None
    linear = (transposed @ (form @ offset.unsqueeze(-1))).squeeze(-1)
    return hessian, 2.0 * weight.reshape(weight.shape + (1,)) * linear
