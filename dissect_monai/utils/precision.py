"""Numeric precision policy: bf16 autocast + channels_last where the hardware runs it fast, fp32 elsewhere.

On CPUs with AVX512-BF16 or AMX, a bf16 convolution under ``torch.autocast("cpu", dtype=torch.bfloat16)``
with channels_last tensors runs several times faster than the fp32 NCHW default. Numerically sensitive
parts (vector-quantiser distances, losses, EMA updates) are expected to leave the autocast region
themselves (``torch.autocast(..., enabled=False)`` + ``.float()``).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import ContextManager

import torch

from dissect_monai.utils.gemm_conv import convert_to_gemm_conv

__all__ = ["PrecisionPolicy", "cpu_has_amx", "cpu_supports_bf16", "resolve_precision", "prepare_module"]

PRECISION_ENV = "DISSECT_PRECISION"
_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
_MODES = ("auto", "bf16", "fp32")


@lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AVX512-BF16 or AMX-BF16 in ``/proc/cpuinfo``).

    Elsewhere (no ``/proc/cpuinfo``, older CPUs) bf16 autocast would be emulated and slower than fp32,
    so the answer is False.
    """
    return any(flag in _cpu_flags() for flag in _BF16_CPU_FLAGS)


def cpu_has_amx() -> bool:
    """True when the CPU has AMX bf16 tiles (``amx_bf16``), where bf16 matrix products run several times faster
    than with AVX512-BF16 alone."""
    return "amx_bf16" in _cpu_flags()


@dataclass(frozen=True)
class PrecisionPolicy:
    """How a step runs: device type, whether to autocast to bf16, and whether to use channels_last.

    Args:
        device_type: ``"cpu"`` or ``"cuda"``.
        bf16: run the forward pass under ``torch.autocast(device_type, dtype=torch.bfloat16)``.
        channels_last: keep 4-D (5-D) inputs and the network in channels_last (channels_last_3d) layout.
    """

    device_type: str
    bf16: bool
    channels_last: bool

    @property
    def name(self) -> str:
        return "bf16+channels_last" if self.bf16 and self.channels_last else ("bf16" if self.bf16 else "fp32")

    def autocast(self) -> ContextManager:
        """Context for the forward pass: bf16 autocast, or a no-op in fp32 mode."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=torch.bfloat16)

    def format_input(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x`` (B, C, H, W) or (B, C, H, W, D) in the policy's memory layout (unchanged otherwise)."""
        if not self.channels_last:
            return x
        if x.ndim == 4:
            return x.contiguous(memory_format=torch.channels_last)
        if x.ndim == 5:
            return x.contiguous(memory_format=torch.channels_last_3d)
        return x


def resolve_precision(mode: str | PrecisionPolicy = "auto", device: str | torch.device = "cpu") -> PrecisionPolicy:
    """Turn a precision request into a :class:`PrecisionPolicy`.

    Args:
        mode: ``"auto"`` (bf16 + channels_last on a CPU with native bf16 or a CUDA device supporting bf16,
            fp32 otherwise), ``"bf16"`` (force) or ``"fp32"``. The environment variable ``DISSECT_PRECISION``
            overrides ``"auto"``. An existing policy is returned unchanged.
        device: the device the step runs on.

    Raises:
        ValueError: for an unknown mode.
    """
    if isinstance(mode, PrecisionPolicy):
        return mode
    if mode == "auto":
        mode = os.environ.get(PRECISION_ENV, "auto")
    if mode not in _MODES:
        raise ValueError(f"precision must be one of {_MODES}, got {mode!r}")
    device_type = torch.device(device).type
    if mode == "fp32":
        return PrecisionPolicy(device_type, bf16=False, channels_last=False)
    if mode == "bf16":
        return PrecisionPolicy(device_type, bf16=True, channels_last=True)
    if device_type == "cuda":
        fast = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    else:
        fast = device_type == "cpu" and cpu_supports_bf16()
    return PrecisionPolicy(device_type, bf16=fast, channels_last=fast)


def prepare_module(
    module: torch.nn.Module,
    device: str | torch.device = "cpu",
    precision: str | PrecisionPolicy = "auto",
    gemm_conv: bool = True,
) -> torch.nn.Module:
    """Move ``module`` to ``device`` and, under a channels_last policy, to that layout (channels_last_3d for 3-D nets).

    Under a bf16 + channels_last policy on a CPU, the plain ``Conv2d`` / ``Conv3d`` layers are also swapped
    for :class:`~dissect_monai.utils.gemm_conv.GemmConv2d` / ``GemmConv3d``
    (:func:`~dissect_monai.utils.gemm_conv.convert_to_gemm_conv`), which run each input shape as GEMMs
    where that was timed faster than oneDNN at first use; parameters and ``state_dict`` keys are unchanged.
    Call this before wrapping the module in DistributedDataParallel, so gradient buckets match the layout.
    Parameters stay fp32 (autocast casts per operation).

    Args:
        module: the network.
        device: where it runs.
        precision: a mode for :func:`resolve_precision` or a policy.
        gemm_conv: allow the GEMM convolution swap (``False`` keeps the stock layers, e.g. to compare).
    """
    policy = resolve_precision(precision, device)
    module = module.to(device)
    if policy.channels_last:
        spatial_3d = any(p.ndim == 5 for p in module.parameters())
        module = module.to(memory_format=torch.channels_last_3d if spatial_3d else torch.channels_last)
    if gemm_conv and policy.bf16 and policy.channels_last and policy.device_type == "cpu":
        module = convert_to_gemm_conv(module)
    return module
