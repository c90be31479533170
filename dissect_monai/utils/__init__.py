"""Utilities shared by the engines and bundles: precision policy (with its GEMM convolutions) and torchrun helpers."""

from .distributed import distributed_device, init_distributed, wrap_ddp
from .gemm_conv import GemmConv2d, GemmConv3d, convert_to_gemm_conv
from .precision import PrecisionPolicy, cpu_has_amx, cpu_supports_bf16, prepare_module, resolve_precision

__all__ = [
    "GemmConv2d",
    "GemmConv3d",
    "PrecisionPolicy",
    "convert_to_gemm_conv",
    "cpu_has_amx",
    "cpu_supports_bf16",
    "distributed_device",
    "init_distributed",
    "prepare_module",
    "resolve_precision",
    "wrap_ddp",
]
