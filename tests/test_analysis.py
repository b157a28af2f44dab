"""Tests of the analysis: term expansion, merging with the proximity term, convexity."""

from __future__ import annotations

import numpy as np
import torch

import proxopt as po
from proxopt.compile.analysis import analyze, scaled_variable_form


def test_terms_expanded_with_coefficients() -> None:
    z = po.Variable(3)
    problem = analyze(0.5 * po.norm1(z) - 2 * (po.norm2(z) + po.sum(z)), [], None)
    kinds = [(term.kind, term.coefficient.constant) for term in problem.terms]
    assert kinds == [("nonquadratic", 0.5), ("nonquadratic", -2.0), ("linear", -2.0)]


def test_identity_quadratics_are_merged() -> None:
    z = po.Variable(3)
    problem = analyze(po.binary_neg_entropy(z) - 0.5 * po.sum_squares(z), [], None)
    assert [term.kind for term in problem.terms] == ["nonquadratic", "identity_quadratic"]
    assert problem.identity_weight(1.0) == 0.0
    assert problem.is_convex


def test_weakly_convex_sigmoid_is_dcp_after_merge() -> None:
    z = po.Variable(3)
    problem = analyze(po.binary_neg_entropy(z) - 0.5 * po.sum_squares(z), [], None)
    assert problem.is_dcp
    assert problem.residual_terms[0].describe() == "binary_neg_entropy(z)"


def test_merged_y_and_a_values() -> None:
    z = po.Variable(2)
    shift = np.array([1.0, -2.0])
    problem = analyze(3.0 * po.sum_squares(2 * z - shift) + po.sum(np.array([0.5, 0.25]) * z), [], None)
    x = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    y, a = problem.merged_linear_quadratic(x, 1.5, {})
    # 3 ||2z - t||^2 = 12 ||z||^2 - 12 t^T z + const, so a = 1.5 + 24 and y = 1.5 x + 12 t - q.
    assert a == 1.5 + 24.0
    expected = 1.5 * x + 12 * torch.tensor(shift) - torch.tensor([0.5, 0.25], dtype=torch.float64)
    assert torch.allclose(y, expected)


def test_scaled_variable_form_detects_shift() -> None:
    z = po.Variable(3)
    form = scaled_variable_form(0.5 * z + 0.5, z)
    assert form is not None
    assert form.scale == 0.5
    assert scaled_variable_form(np.ones((3, 3)) @ z, z) is None


def test_concave_term_reported() -> None:
    z = po.Variable(3)
    problem = analyze(-po.norm1(z), [], None)
    assert not problem.is_convex
    assert "term -norm1(z) is concave" in problem.convexity_issues[0]


def test_nonconvex_set_reported() -> None:
    z = po.Variable(3)
    problem = analyze(None, [po.Sphere(2.0)], z)
    assert problem.convexity_issues == ["set Sphere(2) is not convex"]


def test_negative_general_quadratic_is_not_an_issue() -> None:
    # Merged with lam * I at runtime, where positive definiteness is checked.
    z = po.Variable(2)
    problem = analyze(po.norm1(z) - 0.1 * po.sum_squares(np.ones((1, 2)) @ z), [], None)
    assert problem.is_convex


def test_parameters_collected_by_name() -> None:
    z = po.Variable(3)
    weight = po.Parameter((), name="t", nonneg=True)
    radius = po.Parameter((), name="r", nonneg=True)
    problem = analyze(weight * po.norm1(z), [po.L2Ball(radius)], None)
    assert list(problem.parameters) == ["t", "r"]


def test_describe_reads_like_math() -> None:
    z = po.Variable(3)
    problem = analyze(0.1 * po.norm1(z) - 0.5 * po.sum_squares(z), [z >= 0], None)
    assert problem.describe() == "0.1 * norm1(z) - 0.5 * sum_squares(z)  s.t. 0 <= z"


def test_linear_term_under_inference_mode() -> None:
    z = po.Variable(3)
    shift = po.Parameter(3, name="w")
    layer = po.ProxLayer(po.sum(shift * z) + po.sum_squares(z - 1))
    w = torch.tensor([1.0, -2.0, 0.5])
    x = torch.zeros(2, 3)
    with torch.inference_mode():
        inferred = layer(x, w=w)
    # (1 + 2) z = x + 2 * 1 - w for lam = 1.
    expected = (x + 2.0 - w) / 3.0
    assert torch.allclose(inferred, expected)
    trained = layer(x.requires_grad_(True), w=w)
    trained.sum().backward()
    assert torch.allclose(trained.detach(), expected)
