"""Utilities shared by the engines and bundles: precision policy (with its GEMM convolutions), the machine a figure
was measured on, torchrun helpers, bundle checks."""

from .bundle import BundleRootError, check_bundle_root
from .distributed import distributed_device, init_distributed, wrap_ddp
from .gemm_conv import GemmConv2d, GemmConv3d, convert_to_gemm_conv
from .machine import machine_state
from .precision import PrecisionPolicy, cpu_has_amx, cpu_supports_bf16, prepare_module, resolve_precision

__all__ = [
    "BundleRootError",
    "GemmConv2d",
    "GemmConv3d",
    "check_bundle_root",
    "PrecisionPolicy",
    "convert_to_gemm_conv",
    "cpu_has_amx",
    "cpu_supports_bf16",
    "distributed_device",
    "init_distributed",
    "machine_state",
    "prepare_module",
    "resolve_precision",
    "wrap_ddp",
]
