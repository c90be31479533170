"""BYOLLoss and CodeConsistencyLoss: values at known points, fp32 under bf16 autocast, no gradient to targets."""

from __future__ import annotations

import pytest
import torch

from dissect_monai.losses import BYOLLoss, CodeConsistencyLoss


def test_byol_loss_zero_for_identical_inputs() -> None:
    x = torch.randn(8, 16)
    assert BYOLLoss()(x, x.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert BYOLLoss()(x, 3.0 * x).item() == pytest.approx(0.0, abs=1e-6)  # scale-invariant


def test_byol_loss_known_values() -> None:
    e1, e2 = torch.eye(2)
    assert BYOLLoss()(e1[None], -e1[None]).item() == pytest.approx(4.0)
    assert BYOLLoss()(e1[None], e2[None]).item() == pytest.approx(2.0)


def test_byol_loss_fp32_under_autocast_and_target_detached() -> None:
    p = torch.randn(4, 8, requires_grad=True)
    z = torch.randn(4, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = BYOLLoss()(p.bfloat16(), z.bfloat16())
    assert loss.dtype == torch.float32
    loss.backward()
    assert p.grad is not None and z.grad is None


def test_code_consistency_zero_iff_histograms_agree() -> None:
    h = torch.softmax(torch.randn(3, 10), dim=1)
    loss = CodeConsistencyLoss()
    assert loss(h, h).item() == pytest.approx(0.0, abs=1e-6)
    other = torch.softmax(torch.randn(3, 10), dim=1)
    assert loss(other, h).item() > 0.01
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert loss(other.bfloat16(), h).dtype == torch.float32
