"""Every documented bad input raises its error from the proxopt family, with a useful message."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import proxopt as po


def _l1_layer(n: int = 4, **kwargs: object) -> po.ProxLayer:
    z = po.Variable(n)
    return po.ProxLayer(0.1 * po.norm1(z), [z >= 0], **kwargs)  # type: ignore[arg-type]


def test_errors_share_one_family() -> None:
    for error in (
        po.ShapeError,
        po.InvalidInputError,
        po.EmptySetError,
        po.NotDCPError,
        po.NoRouteError,
        po.SolverFailedError,
        po.DeclarationError,
    ):
        assert issubclass(error, po.ProxError)


def test_input_shape_mismatch() -> None:
    layer = _l1_layer(4)
    with pytest.raises(po.ShapeError, match=r"input has shape \(2, 5\); expected \(\*batch, n\) with n = 4"):
        layer(torch.zeros(2, 5))


def test_integer_input_rejected() -> None:
    layer = _l1_layer(4)
    with pytest.raises(po.InvalidInputError, match=r"floating dtype, got torch.int64; convert with x.float\(\)"):
        layer(torch.zeros(2, 4, dtype=torch.long))


def test_parameter_shape_mismatch() -> None:
    z = po.Variable(3)
    shift = po.Parameter(3, name="w")
    layer = po.ProxLayer(po.sum(shift * z) + po.norm1(z), backend="cvxpy")
    with pytest.raises(po.ShapeError, match=r"Parameter 'w' has shape \(4,\); expected \(3,\) \(shared\)"):
        layer(torch.zeros(2, 3), w=torch.zeros(4))


def test_missing_parameter_named() -> None:
    z = po.Variable(3)
    shift = po.Parameter(3, name="w")
    layer = po.ProxLayer(po.sum(shift * z) + po.norm1(z))
    with pytest.raises(po.InvalidInputError, match=r"missing Parameter values: w"):
        layer(torch.zeros(2, 3))


def test_unknown_keyword_named() -> None:
    layer = _l1_layer(3)
    with pytest.raises(po.InvalidInputError, match=r"unknown keyword arguments: bogus"):
        layer(torch.zeros(2, 3), bogus=torch.zeros(3))


def test_parameter_dtype_mismatch() -> None:
    z = po.Variable(3)
    shift = po.Parameter(3, name="w")
    layer = po.ProxLayer(po.sum(shift * z) + po.norm1(z))
    with pytest.raises(po.InvalidInputError, match=r"has dtype torch.float64 but the input has torch.float32"):
        layer(torch.zeros(2, 3), w=torch.zeros(3, dtype=torch.float64))


def test_negative_nonneg_parameter() -> None:
    z = po.Variable(3)
    weight = po.Parameter((), name="t", nonneg=True)
    layer = po.ProxLayer(weight * po.norm1(z))
    with pytest.raises(po.InvalidInputError, match=r"declared nonneg=True but has negative entries"):
        layer(torch.zeros(2, 3), t=torch.tensor(-1.0))


def test_nonfinite_input_to_solver_layer() -> None:
    layer = _l1_layer(3, backend="cvxpy")
    x = torch.zeros(3, 3)
    x[1, 2] = float("nan")
    with pytest.raises(po.InvalidInputError, match=r"non-finite entries \(NaN or inf\) in batch items \[1\]"):
        layer(x)


def test_closed_form_propagates_nan_like_torch() -> None:
    # Documented: closed forms skip the finiteness check and propagate NaN as torch does.
    z = po.Variable(3)
    layer = po.ProxLayer(None, [po.CenteredSphere()], variable=z)
    x = torch.tensor([[1.0, float("nan"), 2.0]])
    assert layer.plan.backend == "closed_form"
    assert torch.isnan(layer(x)).all()


@pytest.mark.parametrize("lam", [0.0, -1.0, float("inf"), float("nan")])
def test_nonpositive_lam_float(lam: float) -> None:
    with pytest.raises(po.InvalidInputError, match=r"lam must be a finite number > 0"):
        _l1_layer(3, lam=lam)


def test_nonpositive_lam_tensor_at_call() -> None:
    layer = _l1_layer(3)
    layer.lam = torch.tensor(1.0, requires_grad=True)
    with torch.no_grad():
        layer.lam.fill_(-0.5)  # type: ignore[union-attr]
    with pytest.raises(po.InvalidInputError, match=r"lam must be finite and > 0, got minimum -0.5"):
        layer(torch.zeros(2, 3))


def test_empty_box_detected_at_build() -> None:
    with pytest.raises(po.EmptySetError, match=r"Box\(1, 0\) is empty"):
        po.Box(1, 0)


def test_contradictory_equalities_detected_before_solving() -> None:
    z = po.Variable(2)
    with pytest.raises(po.EmptySetError, match=r"the constraint set is empty: no point satisfies"):
        po.ProxLayer(po.norm1(z), [po.sum(z) == 1, po.sum(z) == 2])


def test_disjoint_bounds_detected_before_solving() -> None:
    z = po.Variable(2)
    with pytest.raises(po.EmptySetError, match=r"no point satisfies"):
        po.ProxLayer(po.norm1(z), [z >= 1, po.L1Ball(0.5)])


def test_empty_box_from_parameters_at_call() -> None:
    z = po.Variable(2)
    low = po.Parameter((), name="low")
    high = po.Parameter((), name="high")
    layer = po.ProxLayer(po.norm1(z), [po.Box(low, high)])
    with pytest.raises(po.EmptySetError, match=r"lower bound exceeds upper bound by up to 1"):
        layer(torch.zeros(1, 2), low=torch.tensor(1.0), high=torch.tensor(0.0))


def test_non_dcp_term_forced_on_cvxpy() -> None:
    z = po.Variable(3)
    with pytest.raises(po.NotDCPError, match=r"term -norm1\(z\) is concave"):
        po.ProxLayer(-po.norm1(z), backend="cvxpy")


def test_unknown_sign_parameter_forced_on_cvxpy() -> None:
    z = po.Variable(3)
    weight = po.Parameter((), name="t")
    with pytest.raises(po.NotDCPError, match=r"coefficient of unknown sign \(t\); declare the Parameter"):
        po.ProxLayer(weight * po.norm1(z), backend="cvxpy")


def test_nonconvex_without_route() -> None:
    z = po.Variable(3)
    with pytest.raises(po.NoRouteError, match=r"nonconvex .* no exact route solves it"):
        po.ProxLayer(po.norm1(z), [po.Sphere(1.0)])


def test_negative_merged_weight_at_call() -> None:
    z = po.Variable(3)
    layer = po.ProxLayer(po.binary_neg_entropy(z) - 0.5 * po.sum_squares(z), lam=torch.tensor(0.5), backend="cvxpy")
    with pytest.raises(po.InvalidInputError, match=r"merged quadratic weight .* -0.5 < 0"):
        layer(torch.zeros(1, 3))


def test_solver_failure_names_status_and_items() -> None:
    z = po.Variable(2)
    shift = po.Parameter((), name="r")
    # sum(z) == r together with z in [0, 1] is infeasible for r = 5 only.
    layer = po.ProxLayer(po.norm1(z), [po.Box(0.0, 1.0), po.sum(z) == shift], backend="cvxpy")
    radius = torch.tensor([1.0, 5.0, 0.5], dtype=torch.float64)
    with pytest.raises(po.SolverFailedError, match=r"status 'infeasible'") as caught:
        layer(torch.zeros(3, 2, dtype=torch.float64), r=radius)
    assert caught.value.failed_items == [1]
    assert caught.value.status == "infeasible"


def test_unknown_backend_name() -> None:
    z = po.Variable(3)
    with pytest.raises(po.DeclarationError, match=r"unknown backend 'fast'"):
        po.ProxLayer(po.norm1(z), backend="fast")  # type: ignore[arg-type]


def test_two_variables_rejected() -> None:
    z = po.Variable(3)
    w = po.Variable(3, name="w")
    with pytest.raises(po.DeclarationError, match=r"found 2 variables"):
        po.ProxLayer(po.norm1(z) + po.norm1(w))


def test_variable_required_for_pure_set() -> None:
    with pytest.raises(po.DeclarationError, match=r"Pass variable=Variable\(n\)"):
        po.ProxLayer(None, [po.Box(-1, 1)])


def test_regularizer_must_be_scalar() -> None:
    z = po.Variable(3)
    with pytest.raises(po.ShapeError, match=r"the regularizer must be a scalar"):
        po.ProxLayer(2 * z)


def test_set_size_checked_against_variable() -> None:
    z = po.Variable(3)
    with pytest.raises(po.ShapeError, match=r"Affine matrix A has 2 columns; expected 3"):
        po.ProxLayer(po.norm1(z), [po.Affine(np.ones((1, 2)), np.ones(1))])


def test_misspelled_keyword_named_with_missing() -> None:
    z = po.Variable(3)
    shift = po.Parameter(3, name="w")
    layer = po.ProxLayer(po.sum(shift * z) + po.norm1(z))
    with pytest.raises(po.InvalidInputError, match=r"missing Parameter values: w; unknown keyword arguments: ww"):
        layer(torch.zeros(2, 3), ww=torch.zeros(3))


def test_positional_parameter_rejected() -> None:
    z = po.Variable(3)
    shift = po.Parameter(3, name="w")
    layer = po.ProxLayer(po.sum(shift * z) + po.norm1(z))
    with pytest.raises(po.InvalidInputError, match=r"1 extra positional argument\(s\); call layer\(x, name=tensor\)"):
        layer(torch.zeros(2, 3), torch.zeros(3))


def test_batch_shaped_parameter_message() -> None:
    z = po.Variable(2, scope="batch")
    weights = po.Parameter((po.BATCH, po.BATCH), name="W", nonneg=True)
    layer = po.ProxLayer(po.laplacian_quadratic(z, weights))
    with pytest.raises(po.ShapeError, match=r"has shape \(4, 4\); expected \(5, 5\) \(shared\)\.$"):
        layer(torch.zeros(5, 2), W=torch.zeros(4, 4))
