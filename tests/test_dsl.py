"""Tests of the DSL: expression building, shape checks and constraint construction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import proxopt as po
from proxopt.dsl.expressions import AddExpression, MatMulExpression, MultiplyExpression


def test_variable_shapes_per_scope() -> None:
    assert po.Variable(5).shape == (5,)
    assert po.Variable(5, scope="batch").shape == (po.BATCH, 5)


def test_affine_arithmetic_builds_nodes() -> None:
    z = po.Variable(3)
    expr = 2 * z - 1
    assert isinstance(expr, AddExpression)
    assert expr.shape == (3,)
    assert isinstance(np.ones((2, 3)) @ z, MatMulExpression)
    assert (np.ones((2, 3)) @ z).shape == (2,)
    assert po.sum(z).shape == ()
    assert z[1:].shape == (2,)
    assert z[[0, 2]].shape == (2,)


def test_scaled_atom_is_scalar_term() -> None:
    z = po.Variable(3)
    term = 0.5 * po.norm1(z)
    assert isinstance(term, MultiplyExpression)
    assert term.shape == ()
    assert (po.norm1(z) + po.sum_squares(z)).shape == ()


def test_matmul_shape_mismatch_raises() -> None:
    z = po.Variable(3)
    with pytest.raises(po.ShapeError, match=r"mismatched inner dimensions: \(2, 4\) @ \(3,\)"):
        np.ones((2, 4)) @ z


def test_add_shape_mismatch_raises() -> None:
    z = po.Variable(3)
    with pytest.raises(po.ShapeError, match=r"shapes \(3,\) and \(4,\)"):
        z + np.ones(4)


def test_atom_plus_vector_raises() -> None:
    z = po.Variable(3)
    with pytest.raises(po.ShapeError, match="terms of the regularizer are scalars"):
        po.norm1(z) + z


def test_product_of_variables_raises() -> None:
    z = po.Variable(3)
    with pytest.raises(po.DeclarationError, match="both depend on the variable"):
        z * z


def test_atom_of_atom_raises() -> None:
    z = po.Variable(3)
    with pytest.raises(po.DeclarationError, match="is not affine"):
        po.norm1(po.sum_squares(z))


def test_elementwise_factor_shape_checked() -> None:
    z = po.Variable(3)
    with pytest.raises(po.ShapeError, match="expected a scalar factor or the same shape"):
        np.ones(4) * z


def test_quad_form_rejects_indefinite_matrix() -> None:
    z = po.Variable(2)
    with pytest.raises(po.DeclarationError, match="not positive semidefinite"):
        po.quad_form(z, np.array([[1.0, 0.0], [0.0, -1.0]]))


def test_quad_form_matrix_shape_checked() -> None:
    z = po.Variable(2)
    with pytest.raises(po.ShapeError, match=r"expected \(2, 2\)"):
        po.quad_form(z, np.eye(3))


def test_group_norm_block_must_divide() -> None:
    z = po.Variable(5)
    with pytest.raises(po.ShapeError, match="does not divide the length 5"):
        po.group_norm(z, 2)


def test_laplacian_needs_nonneg_parameter() -> None:
    z = po.Variable(3)
    weights = po.Parameter((3, 3), name="W")
    with pytest.raises(po.DeclarationError, match="nonneg=True"):
        po.laplacian_quadratic(z, weights)


def test_parameter_name_validated() -> None:
    with pytest.raises(po.DeclarationError, match="not a valid|invalid"):
        po.Parameter(3, name="not valid")
    with pytest.raises(po.DeclarationError, match="reserved"):
        po.Parameter(3, name="lam")


def test_tensor_requiring_grad_rejected_as_constant() -> None:
    z = po.Variable(3)
    with pytest.raises(po.DeclarationError, match="declare a Parameter"):
        torch.ones(3, requires_grad=True) * z


def test_comparisons_build_constraints() -> None:
    z = po.Variable(3)
    assert isinstance(z >= 0, po.dsl.Inequality)
    assert isinstance(0 <= z, po.dsl.Inequality)
    assert isinstance(np.ones((1, 3)) @ z == 1, po.dsl.Equality)


def test_constraint_truth_value_raises() -> None:
    z = po.Variable(3)
    with pytest.raises(po.DeclarationError, match="truth value"):
        bool(z >= 0)


def test_box_with_crossed_bounds_is_empty() -> None:
    with pytest.raises(po.EmptySetError, match=r"lower bound 1 exceeds upper bound 0"):
        po.Box(1, 0)


def test_negative_radius_is_empty() -> None:
    with pytest.raises(po.EmptySetError, match="negative radius"):
        po.L2Ball(-1.0)


def test_inconsistent_affine_set_is_empty() -> None:
    matrix = np.array([[1.0, 1.0], [2.0, 2.0]])
    with pytest.raises(po.EmptySetError, match="inconsistent"):
        po.Affine(matrix, np.array([1.0, 3.0]))


def test_pos_part_only_inside_allowed_atoms() -> None:
    z = po.Variable(3)
    assert po.sum_squares(po.neg(z)).shape == ()
    with pytest.raises(po.DeclarationError, match="only inside sum_squares"):
        po.norm2(po.pos(z))
