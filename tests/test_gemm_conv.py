"""GEMM convolutions: equal to F.conv2d / F.conv3d (values and every gradient), chosen by timing once per shape."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dissect_monai.networks import ResNetFeaturePyramid
from dissect_monai.networks.segmentation import FeaturePyramidUNet
from dissect_monai.utils import GemmConv2d, GemmConv3d, convert_to_gemm_conv, prepare_module, resolve_precision
from dissect_monai.utils import gemm_conv as gc

# (input shape, out channels, kernel, stride, padding, bias)
SHAPES = [
    ((3, 5, 7, 9), 6, 3, 1, 1, True),
    ((2, 4, 8, 7), 5, 3, 2, 1, False),
    ((2, 3, 9, 11), 4, (3, 1), (2, 1), (0, 1), True),
    ((2, 1, 13, 13), 8, 7, 2, 3, False),
    ((2, 6, 5, 5), 3, 1, 2, 0, True),
    ((2, 6, 5, 4), 3, 1, 1, 0, False),
    ((4, 8, 2, 2), 8, 3, 1, 1, False),
    ((2, 3, 5, 6, 7), 4, 3, 2, 1, True),
    ((1, 2, 4, 3, 5), 3, (1, 3, 3), 1, (0, 1, 2), False),
]


@pytest.fixture(autouse=True)
def fresh_choices():
    gc.clear_gemm_conv_choices()
    yield
    gc.clear_gemm_conv_choices()


def _random(shape, out_channels, kernel, bias, dtype=torch.float32):
    d = len(shape) - 2
    kernel = (kernel,) * d if isinstance(kernel, int) else kernel
    fmt = torch.channels_last if d == 2 else torch.channels_last_3d
    x = torch.randn(shape, dtype=dtype).contiguous(memory_format=fmt).requires_grad_()
    w = torch.randn(out_channels, shape[1], *kernel, dtype=dtype).contiguous(memory_format=fmt).requires_grad_()
    b = torch.randn(out_channels, dtype=dtype, requires_grad=True) if bias else None
    return x, w, b


def _conv_and_grads(conv, x, w, b, stride, padding, grad_out=None):
    y = conv(x, w, b, stride, padding)
    grad_out = torch.randn_like(y.float()) if grad_out is None else grad_out
    leaves = [t for t in (x, w, b) if t is not None]
    return y, torch.autograd.grad(y, leaves, grad_out.to(y.dtype)), grad_out


@pytest.mark.parametrize("shape, out_channels, kernel, stride, padding, bias", SHAPES)
def test_equals_stock_convolution_fp32(shape, out_channels, kernel, stride, padding, bias):
    torch.manual_seed(0)
    x, w, b = _random(shape, out_channels, kernel, bias)
    stock = F.conv2d if len(shape) == 4 else F.conv3d
    y0, grads0, g = _conv_and_grads(stock, x, w, b, stride, padding)
    y1, grads1, _ = _conv_and_grads(gc.conv_gemm, x, w, b, stride, padding, g)
    assert y1.shape == y0.shape
    torch.testing.assert_close(y1, y0, rtol=1e-4, atol=1e-4)
    for a, c in zip(grads1, grads0):
        assert a.shape == c.shape
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape, out_channels, kernel, stride, padding, bias", SHAPES)
def test_equals_stock_convolution_bf16_autocast(shape, out_channels, kernel, stride, padding, bias):
    """Under CPU bf16 autocast both run on bf16-rounded inputs; they differ by bf16 rounding of the outputs."""
    torch.manual_seed(0)
    x, w, b = _random(shape, out_channels, kernel, bias)
    stock = F.conv2d if len(shape) == 4 else F.conv3d
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y0, grads0, g = _conv_and_grads(stock, x, w, b, stride, padding)
        y1, grads1, _ = _conv_and_grads(gc.conv_gemm, x, w, b, stride, padding, g)
    assert y1.dtype == y0.dtype == torch.bfloat16
    for a, c in zip((y1, *grads1), (y0, *grads0)):
        assert a.shape == c.shape and a.dtype == c.dtype
        scale = c.float().abs().max().item()
        torch.testing.assert_close(a.float(), c.float(), rtol=0, atol=2e-2 * scale)


def test_output_and_gradient_layout_is_channels_last():
    x, w, b = _random((2, 4, 6, 6), 8, 3, True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = gc.conv_gemm(x, w, b, 1, 1)
    assert y.is_contiguous(memory_format=torch.channels_last)
    gx, gw = torch.autograd.grad(y, (x, w), torch.ones_like(y))
    assert gx.dtype == gw.dtype == torch.float32 and gx.shape == x.shape and gw.shape == w.shape


def test_in_place_activation_on_the_output_keeps_the_gradients():
    """An in-place ReLU after the convolution (MLVICX's channel gate) was refused: the output was a view created
    inside the autograd Function."""
    torch.manual_seed(0)
    x, w, b = _random((2, 6, 5, 5), 3, 1, True)
    grads = []
    for conv in (F.conv2d, gc.conv_gemm):
        y = F.relu(conv(x, w, b, 1, 0), inplace=True)
        grads.append(torch.autograd.grad(y.square().sum(), (x, w, b)))
    for a, c in zip(*grads):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(4, 4, 3, groups=2),
        nn.Conv2d(4, 4, 3, dilation=2),
        nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(4, 4, 3, padding="same"),
        nn.Conv3d(4, 4, 3, groups=4),
    ],
)
def test_other_configurations_keep_the_stock_convolution(conv):
    assert type(convert_to_gemm_conv(conv)) is type(conv)
    gemm = (GemmConv2d if conv.weight.ndim == 4 else GemmConv3d)(
        4, 4, 3, padding=conv.padding, dilation=conv.dilation, groups=conv.groups, padding_mode=conv.padding_mode
    )
    x = torch.randn(1, 4, *(7,) * (conv.weight.ndim - 2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gemm(x)
    assert gc.gemm_conv_choices() == {}


def test_fp32_and_stock_policy_are_untouched():
    conv = GemmConv2d(3, 4, 3, padding=1)
    conv(torch.randn(2, 3, 8, 8))  # fp32, no autocast: the stock path, nothing timed
    assert gc.gemm_conv_choices() == {}
    bf16 = resolve_precision("bf16")
    for conv, gemm in ((nn.Conv2d, GemmConv2d), (nn.Conv3d, GemmConv3d)):
        net = nn.Sequential(conv(1, 4, 3), nn.ReLU(), conv(4, 4, 1))
        assert [type(m) for m in prepare_module(copy.deepcopy(net), "cpu", "fp32")[::2]] == [conv, conv]
        assert [type(m) for m in prepare_module(copy.deepcopy(net), "cpu", bf16, gemm_conv=False)[::2]] == [conv, conv]
        assert [type(m) for m in prepare_module(copy.deepcopy(net), "cpu", bf16)[::2]] == [gemm, gemm]


def test_choice_is_timed_once_per_shape_and_cached(monkeypatch):
    calls = []

    def decide(self, x, grad):
        calls.append(tuple(x.shape))
        return len(calls) == 1  # first shape: GEMM, second shape: stock

    monkeypatch.setattr(gc._GemmConvMixin, "_time_gemm_faster", decide)
    used = []
    real = gc.conv_gemm
    monkeypatch.setattr(gc, "conv_gemm", lambda *a: used.append(a[0].shape) or real(*a))
    twin_a, twin_b = GemmConv2d(3, 4, 3, padding=1), GemmConv2d(3, 4, 3, padding=1)
    small, large = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for _ in range(3):
            twin_a(small)
            twin_b(small)  # same configuration and shape: the cached decision
            twin_a(large)
    assert calls == [(2, 3, 4, 4), (2, 3, 6, 6)]
    assert used == [torch.Size([2, 3, 4, 4])] * 6
    assert sorted(gc.gemm_conv_choices().values()) == [False, True]


def test_timing_leaves_parameters_and_graph_alone():
    conv = prepare_module(nn.Conv2d(3, 4, 3, padding=1), "cpu", "bf16")
    x = torch.randn(2, 3, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
    assert len(gc.gemm_conv_choices()) == 1 and conv.weight.grad is None and x.grad is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = F.conv2d(x, conv.weight, conv.bias, 1, 1)
    torch.testing.assert_close(y.float(), reference.float(), rtol=0, atol=2e-2 * reference.abs().max().item())


def _always_gemm(monkeypatch):
    monkeypatch.setattr(gc._GemmConvMixin, "_time_gemm_faster", lambda self, x, grad: True)


def test_resnet18_step_same_loss_and_gradients_with_the_path_on_and_off(monkeypatch):
    _always_gemm(monkeypatch)
    torch.manual_seed(0)
    policy = resolve_precision("bf16")
    stock = prepare_module(ResNetFeaturePyramid(depth=18), "cpu", policy, gemm_conv=False)
    gemm = prepare_module(copy.deepcopy(stock), "cpu", policy)
    assert sum(isinstance(m, GemmConv2d) for m in gemm.modules()) == 20
    x = policy.format_input(torch.randn(4, 1, 32, 32))
    losses, grads = [], []
    for net in (stock, gemm):
        with policy.autocast():
            loss = sum(f.float().pow(2).mean() for f in net(x))
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    assert len(gc.gemm_conv_choices()) > 0
    assert losses[1] == pytest.approx(losses[0], rel=2e-2)
    assert F.cosine_similarity(grads[0], grads[1], dim=0) > 0.99


def test_state_dict_keys_and_checkpoints_interchange():
    torch.manual_seed(0)
    plain = FeaturePyramidUNet(out_channels=2)
    converted = prepare_module(copy.deepcopy(plain), "cpu", "bf16")
    assert any(isinstance(m, GemmConv2d) for m in converted.modules())
    assert list(converted.state_dict()) == list(plain.state_dict())
    fresh = FeaturePyramidUNet(out_channels=2)
    fresh.load_state_dict(converted.state_dict())  # strict: a checkpoint of the swapped net loads without it
    converted.load_state_dict(plain.state_dict())
    for a, c in zip(fresh.state_dict().values(), plain.state_dict().values()):
        assert torch.equal(a, c)


def test_3d_encoder_is_covered(monkeypatch):
    _always_gemm(monkeypatch)
    torch.manual_seed(0)
    policy = resolve_precision("bf16")
    stock = prepare_module(ResNetFeaturePyramid(spatial_dims=3, depth=10), "cpu", policy, gemm_conv=False)
    gemm = prepare_module(copy.deepcopy(stock), "cpu", policy)
    x = policy.format_input(torch.randn(2, 1, 16, 16, 16))
    with policy.autocast():
        y0, y1 = stock(x)[-1].float(), gemm(x)[-1].float()
    assert sum(isinstance(m, GemmConv3d) for m in gemm.modules()) > 0
    torch.testing.assert_close(y1, y0, rtol=0, atol=3e-2 * y0.abs().max().item())
