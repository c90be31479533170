"""Convolutions as one GEMM on channels-last data, for the small maps where oneDNN's bf16 kernels are slow.

On a CPU, a bf16 channels_last 3x3 convolution of a 64 px ResNet-18 runs at a fraction of the speed of a
bf16 matrix product of the same size once the maps are small (8x8 and below): oneDNN's direct kernels are
tuned for large maps. Written as ``im2col`` + one matrix product, the same convolution runs at GEMM speed:

- forward: the zero-padded channels-last input ``(B, *S_pad, C)`` is viewed, without copying, as
  ``(B, *S_out, *K, C)`` through :meth:`torch.Tensor.as_strided` (one window per output position), made
  into the rows ``(B * prod(S_out), prod(K) * C)`` by one copy, and multiplied by the weight
  ``(prod(K) * C, O)``; the result ``(B * prod(S_out), O)`` *is* the channels-last output.
- backward: grad weight = ``grad_out.T @ rows``. Grad input, at stride 1: the same ``im2col`` + GEMM on
  the output gradient with the flipped, transposed weight (a transposed convolution); at other strides
  and on the smallest maps,
  ``grad_out @ weight`` gives the gradient of every window row, and a precomputed index (cached per shape)
  gathers, for each input position, the ``prod(K)`` window entries that read it (a zero row where none
  does), summed over the taps: the adjoint of the strided view (``col2im``) as one gather and one sum.

:class:`GemmConv2d` / :class:`GemmConv3d` are drop-in subclasses of :class:`torch.nn.Conv2d` /
:class:`torch.nn.Conv3d` (same parameters, same ``state_dict`` keys). At the first call with a given input
shape, each times its configuration both ways (the stock ``F.conv*`` and the GEMM, forward and, when
gradients are needed, backward; least process CPU time of a few calls) and caches the faster, like
``torch.backends.cudnn.benchmark``; layers of the same configuration and input shape share one decision.
The GEMM path runs only on CPU tensors in bf16 (under CPU bf16 autocast or with bf16 inputs), for
``groups == 1``, ``dilation == 1``, integer zero padding; everything else (fp32, CUDA, other
configurations) runs the stock convolution unchanged.
:func:`convert_to_gemm_conv` swaps them into a network in place of its ``Conv2d`` / ``Conv3d`` layers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "GemmConv2d",
    "GemmConv3d",
    "conv_gemm",
    "convert_to_gemm_conv",
    "gemm_conv_choices",
    "clear_gemm_conv_choices",
]

_STOCK = {2: F.conv2d, 3: F.conv3d}
_TIMING_REPEATS = 3

# (spatial dims, in, out, kernel, stride, padding, bias, input shape, dtype, input needs grad, weight needs grad)
# -> True when the GEMM path was measured faster
_CHOICES: dict[tuple, bool] = {}


def _output_size(size: Sequence[int], kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int]) -> list:
    return [(s + 2 * p - k) // st + 1 for s, k, st, p in zip(size, kernel, stride, padding)]


def _window_rows(
    x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int]
) -> torch.Tensor:
    """``im2col``: ``(B, C, *S)`` -> ``(B * prod(S_out), prod(K) * C)``, rows ordered (b, *out), columns (*k, c)."""
    b, c, *size = x.shape
    d = len(size)
    last = x.movedim(1, -1)  # (B, *S, C): a view of channels-last memory
    if any(padding):
        padded = last.new_zeros(b, *(s + 2 * p for s, p in zip(size, padding)), c)
        padded[(slice(None), *(slice(p, p + s) for s, p in zip(size, padding)))] = last
    else:
        padded = last.contiguous()
    out = _output_size(size, kernel, stride, padding)
    st = padded.stride()
    windows = padded.as_strided(
        (b, *out, *kernel, c), (st[0], *(st[1 + i] * stride[i] for i in range(d)), *st[1:1 + d], st[-1])
    )
    return windows.reshape(b * math.prod(out), math.prod(kernel) * c)


@lru_cache(maxsize=64)
def _gather_index(
    batch: int, size: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...], padding: tuple[int, ...]
) -> torch.Tensor:
    """For every input position (b, *s) and tap (*k), the window row ``(b * prod(S_out) + q) * prod(K) + t``
    that reads it, or ``batch * prod(S_out) * prod(K)`` (a zero row) where no output position does;
    shape ``(batch * prod(S) * prod(K),)``."""
    out = _output_size(size, kernel, stride, padding)
    taps = math.prod(kernel)
    grids = torch.meshgrid(*(torch.arange(n) for n in (*size, *kernel)), indexing="ij")
    d = len(size)
    q = torch.zeros(grids[0].shape, dtype=torch.long)
    valid = torch.ones(grids[0].shape, dtype=torch.bool)
    for i in range(d):
        offset = grids[i] + padding[i] - grids[d + i]
        o = torch.div(offset, stride[i], rounding_mode="floor")
        valid &= (offset % stride[i] == 0) & (o >= 0) & (o < out[i])
        q = q * out[i] + o.clamp(0, out[i] - 1)
    t = torch.zeros(grids[0].shape, dtype=torch.long)
    for i in range(d):
        t = t * kernel[i] + grids[d + i]
    per_image = torch.where(valid, q * taps + t, -1).reshape(-1)
    rows_per_image = math.prod(out) * taps
    index = per_image + torch.arange(batch).view(-1, 1) * rows_per_image
    index = torch.where(per_image >= 0, index, batch * rows_per_image)
    return index.reshape(-1)


def _input_grad(
    g: torch.Tensor,
    w: torch.Tensor,
    batch: int,
    channels: int,
    size: tuple[int, ...],
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
) -> torch.Tensor:
    """Gradient ``(B, C, *S)`` (channels-last) of the input from the output gradient rows ``g`` ``(B * prod(S_out), O)``
    and the weight matrix ``w`` ``(O, prod(K) * C)``.

    Stride 1 (padding < kernel) on maps of more positions than taps: the input gradient is the convolution
    of the output gradient, padded by ``kernel - 1 - padding``, with the spatially flipped, transposed weight:
    one more ``im2col`` + GEMM. Otherwise (strides, and maps so small that most of that ``im2col`` would be
    padding, e.g. 2x2 with a 3x3 kernel, where this measured faster): ``g @ w`` gives the gradient of every
    window row, and :func:`_gather_index` sums, for each input position, the window entries that read it.
    """
    o, taps, d = w.shape[0], math.prod(kernel), len(size)
    if all(s == 1 for s in stride) and all(p < k for p, k in zip(padding, kernel)) and math.prod(size) > taps:
        spatial = list(range(1, d + 1))
        flipped = w.view(o, *kernel, channels).flip(spatial).permute(d + 1, *spatial, 0)  # (C, *K, O)
        out_size = _output_size(size, kernel, stride, padding)
        g_map = g.view(batch, *out_size, o).movedim(-1, 1)
        rows = _window_rows(g_map, kernel, stride, [k - 1 - p for k, p in zip(kernel, padding)])
        return (rows @ flipped.reshape(channels, taps * o).t()).view(batch, *size, channels).movedim(-1, 1)
    window_grad = g.new_empty(g.shape[0] * taps + 1, channels)
    torch.mm(g, w, out=window_grad[:-1].view(g.shape[0], taps * channels))
    window_grad[-1] = 0
    index = _gather_index(batch, size, kernel, stride, padding)
    summed = window_grad.index_select(0, index).view(-1, taps, channels).sum(1)
    return summed.view(batch, *size, channels).movedim(-1, 1)


class _ConvGemm(torch.autograd.Function):
    """Convolution (groups 1, dilation 1, zero padding) with forward and backward as GEMMs on channels-last data.

    The output is the GEMM's ``(B * prod(S_out), O)`` matrix itself, not a view of it: :func:`conv_gemm` reshapes it
    outside the Function, so that an in-place operation on the result (``nn.ReLU(inplace=True)``) is recorded by
    autograd instead of being refused.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.bfloat16)
    def forward(ctx, x, weight, bias, stride, padding):  # type: ignore[override]
        b, c, *size = x.shape
        o, _, *kernel = weight.shape
        rows = _window_rows(x, kernel, stride, padding)
        w = weight.movedim(1, -1).reshape(o, -1)  # (O, *K * C): a view of a channels-last weight
        y = torch.addmm(bias, rows, w.t()) if bias is not None else rows @ w.t()
        ctx.save_for_backward(rows, w)
        ctx.geometry = (b, c, tuple(size), tuple(kernel), tuple(stride), tuple(padding), bias is not None)
        return y

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad):  # type: ignore[override]
        rows, w = ctx.saved_tensors
        b, c, size, kernel, stride, padding, has_bias = ctx.geometry
        o = w.shape[0]
        g = grad.reshape(-1, o).to(rows.dtype)  # (B * prod(S_out), O)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _input_grad(g, w, b, c, size, kernel, stride, padding)
        if ctx.needs_input_grad[1]:
            grad_w = (g.t() @ rows).view(o, *kernel, c).movedim(-1, 1)
        if has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0)
        return grad_x, grad_w, grad_b, None, None


def conv_gemm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: Sequence[int] | int = 1,
    padding: Sequence[int] | int = 0,
) -> torch.Tensor:
    """``F.conv2d`` / ``F.conv3d`` (groups 1, dilation 1, zero padding) computed as GEMMs on channels-last data.

    Args:
        x: ``(B, C, *S)`` input with 2 or 3 spatial dims (any layout; channels-last avoids a copy).
        weight: ``(O, C, *K)``.
        bias: ``(O,)`` or ``None``.
        stride, padding: per spatial dim, or one int for all.

    Returns:
        ``(B, O, *S_out)`` in channels-last layout; bf16 under CPU bf16 autocast.
    """
    d = x.ndim - 2
    stride = (stride,) * d if isinstance(stride, int) else tuple(stride)
    padding = (padding,) * d if isinstance(padding, int) else tuple(padding)
    out = _output_size(list(x.shape[2:]), list(weight.shape[2:]), stride, padding)
    y = _ConvGemm.apply(x, weight, bias, stride, padding)
    return y.view(x.shape[0], *out, weight.shape[0]).movedim(-1, 1)


def gemm_conv_choices() -> dict[tuple, bool]:
    """A copy of the cached decisions: key (see module source) -> True where the GEMM path was faster."""
    return dict(_CHOICES)


def clear_gemm_conv_choices() -> None:
    """Forget every cached decision (the next call of each shape times both paths again)."""
    _CHOICES.clear()


def _cpu_seconds(run) -> float:
    """Least process CPU time of ``_TIMING_REPEATS`` calls of ``run`` after a warm-up (oneDNN primitive
    creation, first touch of the buffers); CPU time, so time the process spent preempted by other jobs on a
    shared machine does not count."""
    run()
    best = math.inf
    for _ in range(_TIMING_REPEATS):
        start = time.process_time()
        run()
        best = min(best, time.process_time() - start)
    return best


class _GemmConvMixin:
    """Shared forward of :class:`GemmConv2d` / :class:`GemmConv3d` (see the module docstring)."""

    def _gemm_supported(self) -> bool:
        return (
            self.groups == 1
            and all(v == 1 for v in self.dilation)
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
        )

    def _compute_dtype(self, x: torch.Tensor) -> torch.dtype:
        if torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16:
            return torch.bfloat16
        return x.dtype

    def uses_gemm(self, x: torch.Tensor) -> bool:
        """Whether a call with ``x`` (in the current autocast and grad mode) runs the GEMM path; the first call
        with a new shape times both paths."""
        if x.device.type != "cpu" or self._compute_dtype(x) != torch.bfloat16 or not self._gemm_supported():
            return False
        grad = torch.is_grad_enabled()
        key = (
            x.ndim - 2, self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
            self.bias is not None, tuple(x.shape), torch.bfloat16,
            grad and x.requires_grad, grad and self.weight.requires_grad,
        )  # fmt: skip
        if key not in _CHOICES:
            _CHOICES[key] = self._time_gemm_faster(x, grad)
        return _CHOICES[key]

    def _time_gemm_faster(self, x: torch.Tensor, grad: bool) -> bool:
        """Time the stock convolution and the GEMM path on detached copies of ``x`` and the parameters."""
        stock = _STOCK[x.ndim - 2]
        xi = x.detach().requires_grad_(grad and x.requires_grad)
        w = self.weight.detach().requires_grad_(grad and self.weight.requires_grad)
        b = None if self.bias is None else self.bias.detach().requires_grad_(grad and self.bias.requires_grad)
        leaves = [t for t in (xi, w, b) if t is not None and t.requires_grad]

        def run(conv):
            def step() -> None:
                with torch.set_grad_enabled(bool(leaves)):
                    y = conv()
                    if leaves:
                        torch.autograd.grad(y, leaves, torch.ones_like(y))

            return step

        gemm = _cpu_seconds(run(lambda: conv_gemm(xi, w, b, self.stride, self.padding)))
        reference = _cpu_seconds(run(lambda: stock(xi, w, b, self.stride, self.padding)))
        return gemm < reference

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uses_gemm(x):
            return conv_gemm(x, self.weight, self.bias, self.stride, self.padding)
        return super().forward(x)  # type: ignore[misc]


class GemmConv2d(_GemmConvMixin, nn.Conv2d):
    """:class:`torch.nn.Conv2d` that runs as GEMMs where that was measured faster (see the module docstring)."""


class GemmConv3d(_GemmConvMixin, nn.Conv3d):
    """:class:`torch.nn.Conv3d` that runs as GEMMs where that was measured faster (see the module docstring)."""


_SWAPS: dict[type, type] = {nn.Conv2d: GemmConv2d, nn.Conv3d: GemmConv3d}


def _swapped(conv: nn.Conv2d | nn.Conv3d) -> nn.Module:
    new = _SWAPS[type(conv)](
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
        conv.groups, conv.bias is not None, conv.padding_mode, device="meta",
    )  # fmt: skip
    new.weight = conv.weight
    new.bias = conv.bias
    new.train(conv.training)
    return new if new._gemm_supported() else conv


def convert_to_gemm_conv(module: nn.Module) -> nn.Module:
    """Replace every plain ``nn.Conv2d`` / ``nn.Conv3d`` in ``module`` by :class:`GemmConv2d` / :class:`GemmConv3d`.

    The new layers hold the same parameter objects under the same names, so ``state_dict`` keys and values,
    optimisers built before or after, and checkpoints saved with or without the swap are interchangeable.
    Configurations the GEMM path does not cover (groups, dilation, non-zero padding modes, string padding)
    and subclasses of the convolutions are left as they are. Returns ``module`` (changed in place), or the
    swapped layer when ``module`` itself is a convolution.
    """
    if type(module) in _SWAPS:
        return _swapped(module)
    for parent in module.modules():
        for name, child in list(parent.named_children()):
            if type(child) in _SWAPS:
                setattr(parent, name, _swapped(child))
    return module
