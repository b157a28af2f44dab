"""The activation identities: each declared prox layer reproduces its torch reference."""

from __future__ import annotations

import json

import pytest
import torch

from proxopt.activations import ACTIVATIONS, sparsemax_reference
from proxopt.cli import main
from proxopt.verify import GRADIENT_TOLERANCE, VALUE_TOLERANCE, verify_activation


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_identity_on_default_route(name: str) -> None:
    result = verify_activation(ACTIVATIONS[name], samples=6)
    assert result.value_error <= VALUE_TOLERANCE, result
    assert result.grad_error <= GRADIENT_TOLERANCE, result
    assert result.passed


# Batch norm's set is nonconvex and softplus's R (a dilogarithm) has no cvxpy form.
WITHOUT_CVXPY_ROUTE = {"batch_norm": "closed_form", "softplus": "smooth"}


@pytest.mark.parametrize("name", [n for n in ACTIVATIONS if n not in WITHOUT_CVXPY_ROUTE])
def test_identity_on_cvxpy_route(name: str) -> None:
    result = verify_activation(ACTIVATIONS[name], backend="cvxpy", samples=6)
    assert result.backend == "cvxpy"
    assert result.value_error <= VALUE_TOLERANCE, result
    assert result.grad_error <= GRADIENT_TOLERANCE, result


@pytest.mark.parametrize("name", list(WITHOUT_CVXPY_ROUTE))
def test_fallback_without_cvxpy_route(name: str) -> None:
    result = verify_activation(ACTIVATIONS[name], backend="cvxpy", samples=4)
    assert result.backend == WITHOUT_CVXPY_ROUTE[name]
    assert result.note == f"no cvxpy route; used {WITHOUT_CVXPY_ROUTE[name]}"
    assert result.passed


def test_sparsemax_reference_sums_to_one() -> None:
    x = torch.tensor([[0.3, 2.0, 1.9, -5.0]], dtype=torch.float64)
    output = sparsemax_reference(x)
    assert torch.allclose(output.sum(-1), torch.ones(1, dtype=torch.float64))
    assert torch.allclose(output, torch.tensor([[0.0, 0.55, 0.45, 0.0]], dtype=torch.float64))


def test_verify_json_lists_every_activation(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["verify", "--json", "--samples", "4"])
    rows = json.loads(capsys.readouterr().out)
    assert status == 0
    assert [row["activation"] for row in rows] == list(ACTIVATIONS)
    for row in rows:
        assert set(row) >= {"activation", "backend", "value_error", "grad_error", "passed"}
        assert "saturated_value_error" in row
        assert "saturated_grad_error" in row
        assert row["passed"] is True


def test_verify_table_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["verify", "relu", "batch_norm", "--samples", "4"])
    output = capsys.readouterr().out
    assert status == 0
    assert "relu" in output
    assert "batch_norm" in output
    assert "sat. value" in output


def test_explain_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "batch_norm"]) == 0
    output = capsys.readouterr().out
    assert "backend: closed_form" in output
