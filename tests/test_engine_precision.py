"""Precision policy: bf16 autocast + channels_last only where asked or natively supported; fp32 otherwise."""

from __future__ import annotations

import pytest
import torch

from dissect_monai.utils import PrecisionPolicy, cpu_supports_bf16, prepare_module, resolve_precision


def test_explicit_modes():
    assert resolve_precision("fp32") == PrecisionPolicy("cpu", bf16=False, channels_last=False)
    assert resolve_precision("bf16") == PrecisionPolicy("cpu", bf16=True, channels_last=True)
    policy = resolve_precision("bf16")
    assert resolve_precision(policy) is policy
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp16")


def test_auto_follows_cpu_flags_and_env_override(monkeypatch):
    monkeypatch.delenv("DISSECT_PRECISION", raising=False)
    with open("/proc/cpuinfo") as f:
        native = any(flag in f.read().split() for flag in ("avx512_bf16", "amx_bf16"))
    assert cpu_supports_bf16() is native
    assert resolve_precision("auto").bf16 is native
    monkeypatch.setenv("DISSECT_PRECISION", "fp32")
    assert resolve_precision("auto").bf16 is False
    assert resolve_precision("bf16").bf16 is True  # an explicit request wins over the environment


def test_autocast_and_layout():
    policy = resolve_precision("bf16")
    conv = prepare_module(torch.nn.Conv2d(1, 4, 3), "cpu", policy)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and conv.weight.dtype == torch.float32
    x = policy.format_input(torch.rand(2, 1, 8, 8))
    assert x.is_contiguous(memory_format=torch.channels_last)
    with policy.autocast():
        assert conv(x).dtype == torch.bfloat16
    fp32 = resolve_precision("fp32")
    with fp32.autocast():
        assert conv(fp32.format_input(torch.rand(2, 1, 8, 8))).dtype == torch.float32


def test_3d_modules_use_channels_last_3d():
    policy = resolve_precision("bf16")
    conv = prepare_module(torch.nn.Conv3d(1, 2, 3), "cpu", policy)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert policy.format_input(torch.rand(1, 1, 4, 4, 4)).is_contiguous(memory_format=torch.channels_last_3d)
