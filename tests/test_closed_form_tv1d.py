"""Tests of the exact TV-1D prox (closed_form backend) and of its two algorithms."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from proxopt import Parameter, ProxLayer, Variable, norm1, sum_squares, tv1d
from proxopt.backends.closed_form._tv1d_kernels import tv1d_rows
from proxopt.backends.closed_form.tv1d import prox_tv1d
from proxopt.errors import InvalidInputError, ShapeError

METHODS = ["numba", "torch"]

# SCS at the cvxpy backend's default eps = 1e-12 reports "Solved/Inaccurate" on TV-1D
# problems (a SolverWarning, an error under pytest); at 1e-10 it solves them to about 1e-10.
REFERENCE_SOLVER_ARGS = {"eps_abs": 1e-10, "eps_rel": 1e-10}


def _dual_variable(v: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``u`` with ``z = v - D^T u`` and the residual ``sum(z) - sum(v)``.

    With ``(D z)_i = z_{i+1} - z_i`` and ``(D^T u)_j = u_{j-1} - u_j``, the identity
    ``z = v - D^T u`` gives ``u_k = sum_{j <= k} (z_j - v_j)``; its last prefix sum must
    vanish for ``u`` to exist.
    """
    prefix = torch.cumsum(z - v, dim=-1)
    return prefix[..., :-1], prefix[..., -1]


def _assert_dual_certificate(v: torch.Tensor, w: torch.Tensor, z: torch.Tensor, tol: float) -> None:
    """Assert the optimality condition: ``z = v - D^T u``, ``|u| <= w``, ``u = w sign(Dz)`` on jumps."""
    u, residual = _dual_variable(v, z)
    w_col = w.unsqueeze(-1)
    jumps = z[..., 1:] - z[..., :-1]
    on_jump = jumps.abs() > tol
    assert residual.abs().max() <= tol
    if u.numel():
        assert (u.abs() - w_col).max() <= tol
        assert torch.where(on_jump, (u - w_col * torch.sign(jumps)).abs(), 0.0).max() <= tol


def _stable_margin(v: torch.Tensor, w: torch.Tensor) -> float:
    """Return how far ``v`` is from a change of segments: min of |jumps| and of ``w - |u|`` inside segments."""
    z, jumps = tv1d_rows(v.numpy(), w.double().numpy())
    z_t, jumps_t = torch.from_numpy(z), torch.from_numpy(jumps)
    u, _ = _dual_variable(v, z_t)
    inside = (w.unsqueeze(-1) - u.abs())[jumps_t == 0]
    steps = (z_t[:, 1:] - z_t[:, :-1]).abs()[jumps_t != 0]
    return float(torch.cat([inside, steps]).min())


def _untied_input(generator: torch.Generator, batch: int, n: int) -> torch.Tensor:
    return torch.randn(batch, n, generator=generator, dtype=torch.float64) * 2.0


def test_layer_matches_cvxpy_backend(generator: torch.Generator) -> None:
    z = Variable(10)
    t = Parameter(name="t", nonneg=True)
    x = _untied_input(generator, 6, 10)
    lam = torch.rand(6, generator=generator, dtype=torch.float64) + 0.5
    weight = torch.rand(6, generator=generator, dtype=torch.float64) * 2.0

    exact = ProxLayer(t * tv1d(z), lam=lam)
    reference = ProxLayer(t * tv1d(z), lam=lam, backend="cvxpy", solver_args=REFERENCE_SOLVER_ARGS)

    assert exact.plan.backend == "closed_form"
    assert (exact(x, t=weight) - reference(x, t=weight)).abs().max() <= 1e-6


def test_layer_merged_quadratic_matches_cvxpy(generator: torch.Generator) -> None:
    z = Variable(8)
    center = torch.linspace(-1.0, 1.0, 8, dtype=torch.float64).numpy()
    regularizer = 0.7 * tv1d(z) + 0.3 * sum_squares(z - center)
    x = _untied_input(generator, 5, 8)

    exact = ProxLayer(regularizer, lam=1.5)
    reference = ProxLayer(regularizer, lam=1.5, backend="cvxpy", solver_args=REFERENCE_SOLVER_ARGS)

    assert exact.plan.backend == "closed_form"
    assert (exact(x) - reference(x)).abs().max() <= 1e-6


def test_layer_gradcheck_x_lam_coefficient(generator: torch.Generator) -> None:
    z = Variable(8)
    t = Parameter(name="t", nonneg=True)
    layer = ProxLayer(t * tv1d(z), lam=1.0)
    x = _untied_input(generator, 4, 8)
    lam = torch.rand(4, generator=generator, dtype=torch.float64) + 1.0
    weight = torch.tensor(0.9, dtype=torch.float64)

    # v = x and w = t / lam; gradcheck's steps of 1e-6 must not change the segments.
    assert _stable_margin(x, weight / lam) > 1e-3
    _, jumps = tv1d_rows(x.numpy(), (weight / lam).numpy())
    assert (jumps == 0).any()  # some segment has more than one entry
    assert (jumps != 0).any()

    def run(x: torch.Tensor, lam: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        layer.lam = lam
        return layer(x, t=t)

    inputs = (x.requires_grad_(), lam.requires_grad_(), weight.requires_grad_())
    assert torch.autograd.gradcheck(run, inputs)


@pytest.mark.parametrize("method", METHODS)
def test_prox_gradcheck_per_row_weight(method: str, generator: torch.Generator) -> None:
    v = _untied_input(generator, 5, 12)
    w = torch.rand(5, generator=generator, dtype=torch.float64) * 1.5 + 0.2
    assert _stable_margin(v, w) > 1e-3

    inputs = (v.requires_grad_(), w.requires_grad_())
    assert torch.autograd.gradcheck(lambda v, w: prox_tv1d(v, w, method), inputs)


@pytest.mark.parametrize("method", METHODS)
@given(
    rows=st.lists(st.lists(st.integers(-4, 4), min_size=12, max_size=12), min_size=1, max_size=4),
    scale=st.sampled_from([0.1, 1.0, 30.0]),
    weight=st.floats(0.0, 6.0),
)
def test_prox_dual_certificate_with_ties(method: str, rows: list[list[int]], scale: float, weight: float) -> None:
    v = torch.tensor(rows, dtype=torch.float64) * scale
    w = torch.full((v.shape[0],), weight * scale, dtype=torch.float64)

    z = prox_tv1d(v, w, method)

    _assert_dual_certificate(v, w, z, tol=1e-9 * (1.0 + scale))


@pytest.mark.parametrize("method", METHODS)
@given(
    n=st.integers(1, 30),
    seed=st.integers(0, 2**31 - 1),
    weight=st.floats(0.0, 4.0),
)
def test_prox_dual_certificate_random(method: str, n: int, seed: int, weight: float) -> None:
    generator = torch.Generator().manual_seed(seed)
    v = torch.randn(3, n, generator=generator, dtype=torch.float64)
    w = torch.full((3,), weight, dtype=torch.float64)

    z = prox_tv1d(v, w, method)

    _assert_dual_certificate(v, w, z, tol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_numba_and_torch_paths_agree(dtype: torch.dtype, generator: torch.Generator) -> None:
    v = (torch.randn(64, 40, generator=generator, dtype=torch.float64) * 3.0).to(dtype)
    w = (torch.rand(64, generator=generator, dtype=torch.float64) * 3.0).to(dtype)
    upstream = torch.randn(64, 40, generator=generator, dtype=torch.float64).to(dtype)
    results = {}
    for method in METHODS:
        v_in, w_in = v.clone().requires_grad_(), w.clone().requires_grad_()
        z = prox_tv1d(v_in, w_in, method)
        z.backward(upstream)
        results[method] = (z.detach(), v_in.grad, w_in.grad)
    # float32: the paths round differently (the numba kernel works in float64).
    tol = 1e-5 if dtype == torch.float32 else 1e-12

    for name, numba_value, torch_value in zip(
        ("z", "grad v", "grad w"), results["numba"], results["torch"], strict=True
    ):
        assert (numba_value - torch_value).abs().max() <= tol * (1.0 + numba_value.abs().max()), name


def test_numba_and_torch_segments_agree(generator: torch.Generator) -> None:
    v = torch.randn(32, 25, generator=generator, dtype=torch.float64)
    w = torch.rand(32, generator=generator, dtype=torch.float64) * 2.0
    from proxopt.backends.closed_form.tv1d import _solve_fusion_path

    _, jumps_numba = tv1d_rows(v.numpy(), w.numpy())
    _, jumps_torch = _solve_fusion_path(v, w)

    assert torch.equal(torch.from_numpy(jumps_numba), jumps_torch)


@pytest.mark.parametrize("method", METHODS)
def test_prox_float32_matches_float64(method: str, generator: torch.Generator) -> None:
    v = torch.randn(16, 30, generator=generator, dtype=torch.float64)
    w = torch.rand(16, generator=generator, dtype=torch.float64)

    z32 = prox_tv1d(v.float(), w.float(), method)
    z64 = prox_tv1d(v, w, method)

    assert z32.dtype == torch.float32
    # float32 rounding of the input alone moves the output by a few ulps of its size.
    assert (z32.double() - z64).abs().max() <= 1e-5


@pytest.mark.parametrize("method", METHODS)
def test_prox_single_entry_is_identity(method: str) -> None:
    v = torch.tensor([[1.5], [-2.0]], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([0.3, 7.0], dtype=torch.float64, requires_grad=True)

    z = prox_tv1d(v, w, method)
    z.sum().backward()

    assert torch.equal(z.detach(), v.detach())
    assert torch.equal(v.grad, torch.ones_like(v))
    assert torch.equal(w.grad, torch.zeros_like(w))


@pytest.mark.parametrize("method", METHODS)
def test_prox_two_entries_closed_form(method: str) -> None:
    # For n = 2 the prox moves both entries toward each other by min(w, |gap| / 2).
    v = torch.tensor([[0.0, 1.0], [3.0, -1.0], [2.0, 2.5]], dtype=torch.float64)
    w = torch.tensor([0.2, 0.5, 1.0], dtype=torch.float64)
    gap = v[:, 1] - v[:, 0]
    shift = torch.minimum(w, gap.abs() / 2) * torch.sign(gap)
    expected = torch.stack([v[:, 0] + shift, v[:, 1] - shift], dim=1)

    assert torch.allclose(prox_tv1d(v, w, method), expected, atol=1e-15, rtol=0)


@pytest.mark.parametrize("method", METHODS)
def test_prox_constant_input_unchanged(method: str) -> None:
    v = torch.full((3, 7), 0.1, dtype=torch.float64)
    w = torch.tensor([0.0, 0.5, 100.0], dtype=torch.float64)

    z = prox_tv1d(v, w, method)

    # The mean of seven copies of 0.1 may differ from 0.1 in the last bit.
    assert (z - v).abs().max() <= 1e-16


@pytest.mark.parametrize("method", METHODS)
def test_prox_huge_weight_gives_mean(method: str, generator: torch.Generator) -> None:
    v = torch.randn(4, 20, generator=generator, dtype=torch.float64, requires_grad=True)
    w = torch.full((4,), 1e12, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(4, 20, generator=generator, dtype=torch.float64)

    z = prox_tv1d(v, w, method)
    z.backward(upstream)

    assert (z - v.mean(1, keepdim=True)).abs().max() <= 1e-15
    assert (v.grad - upstream.mean(1, keepdim=True)).abs().max() <= 1e-15
    assert torch.equal(w.grad, torch.zeros_like(w))


@pytest.mark.parametrize("method", METHODS)
def test_prox_zero_weight_is_identity(method: str) -> None:
    # Ties in v must not make the gradient average them at w = 0.
    v = torch.tensor([[0.0, 0.0, 1.0, 3.0, 3.0, -2.0]], dtype=torch.float64, requires_grad=True)
    w = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    upstream = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]], dtype=torch.float64)

    z = prox_tv1d(v, w, method)
    z.backward(upstream)

    assert torch.equal(z.detach(), v.detach())
    assert torch.equal(v.grad, upstream)
    # Right derivative dz/dw = (s_r - s_l) / |g|: the tie {0, 1} fuses at once and rises by
    # 1/2, entry 2 sits on a rising stretch (0), the tie {3, 4} is a peak and falls by 1,
    # entry 5 is a valley and rises by 1.
    expected_rates = torch.tensor([[0.5, 0.5, 0.0, -1.0, -1.0, 1.0]], dtype=torch.float64)
    assert torch.allclose(w.grad, (upstream * expected_rates).sum(1))


def test_layer_fast_path_matches_general_path(generator: torch.Generator) -> None:
    z = Variable(9)
    layer = ProxLayer(0.8 * tv1d(z), lam=2.0, solver_args=REFERENCE_SOLVER_ARGS)
    x = _untied_input(generator, 2, 3 * 9).reshape(2, 3, 9)

    fast = layer(x)
    layer.check = True  # disables the fast path and compares with cvxpy on the first call
    general = layer(x)

    assert layer._fast is not None
    assert torch.equal(fast, general)
    assert (fast - prox_tv1d(x, 0.4)).abs().max() == 0


def test_layer_keeps_dtype_and_shape(generator: torch.Generator) -> None:
    z = Variable(6)
    layer = ProxLayer(0.5 * tv1d(z), lam=1.0)
    x = torch.randn(2, 3, 6, generator=generator).float()

    out = layer(x)

    assert out.dtype == torch.float32
    assert out.shape == x.shape


@pytest.mark.parametrize(
    "build",
    [
        lambda z: tv1d(2.0 * z),
        lambda z: tv1d(z) + norm1(z),
        lambda z: -1.0 * tv1d(z),
    ],
    ids=["scaled_argument", "extra_term", "negative_coefficient"],
)
def test_recognizer_rejects_other_problems(build) -> None:
    from proxopt.backends.closed_form.tv1d import _recognize_tv1d
    from proxopt.compile.analysis import analyze

    z = Variable(5)

    assert _recognize_tv1d(analyze(build(z)), 1.0) is None


def test_recognizer_rejects_constraints() -> None:
    from proxopt.backends.closed_form.tv1d import _recognize_tv1d
    from proxopt.compile.analysis import analyze

    z = Variable(5)

    assert _recognize_tv1d(analyze(tv1d(z), [z >= 0]), 1.0) is None


def test_prox_rejects_nonfinite_input() -> None:
    v = torch.tensor([[0.0, float("nan"), 1.0]])

    with pytest.raises(InvalidInputError, match="non-finite"):
        prox_tv1d(v, 0.5)


def test_prox_rejects_negative_weight() -> None:
    with pytest.raises(InvalidInputError, match=">= 0"):
        prox_tv1d(torch.zeros(2, 3), torch.tensor([0.5, -0.1]))


def test_prox_rejects_unknown_method() -> None:
    with pytest.raises(InvalidInputError, match="unknown TV-1D method"):
        prox_tv1d(torch.zeros(2, 3), 0.5, "cuda")  # type: ignore[arg-type]


def test_prox_rejects_mismatched_weight_shape() -> None:
    with pytest.raises(ShapeError, match="broadcasts"):
        prox_tv1d(torch.zeros(2, 3), torch.ones(4))


def test_layer_rejects_negative_coefficient_value() -> None:
    z = Variable(4)
    t = Parameter(name="t")
    layer = ProxLayer(t * tv1d(z), lam=1.0)

    with pytest.raises(InvalidInputError, match="concave"):
        layer(torch.zeros(2, 4), t=torch.tensor(-0.5))


def test_layer_rejects_nonpositive_merged_weight() -> None:
    # a = lam - 2 * 0.8 = -0.6 after merging the negative identity quadratic.
    z = Variable(4)
    layer = ProxLayer(tv1d(z) - 0.8 * sum_squares(z), lam=1.0)

    with pytest.raises(InvalidInputError, match="needs a > 0"):
        layer(torch.zeros(2, 4))


def test_prox_half_precision_computed_in_float32(generator: torch.Generator) -> None:
    v = torch.randn(4, 10, generator=generator).half()

    z = prox_tv1d(v, 0.3)

    assert z.dtype == torch.float16
    assert torch.equal(z, prox_tv1d(v.float(), 0.3).half())


@pytest.mark.cuda
def test_torch_path_on_cuda_matches_numba(generator: torch.Generator) -> None:
    v = torch.randn(128, 50, generator=generator, dtype=torch.float64)
    w = torch.rand(128, generator=generator, dtype=torch.float64) * 2.0

    on_cuda = prox_tv1d(v.cuda(), w.cuda())

    assert on_cuda.device.type == "cuda"
    assert (on_cuda.cpu() - prox_tv1d(v, w, "numba")).abs().max() <= 1e-12
