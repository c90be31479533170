"""Utilities shared by the engines and bundles: precision policy and torchrun helpers."""

from .distributed import distributed_device, init_distributed, wrap_ddp
from .precision import PrecisionPolicy, cpu_supports_bf16, prepare_module, resolve_precision

__all__ = [
    "PrecisionPolicy",
    "cpu_supports_bf16",
    "distributed_device",
    "init_distributed",
    "prepare_module",
    "resolve_precision",
    "wrap_ddp",
]
