"""Utilities shared by the engines and bundles: precision policy, torchrun helpers, strict JSON of results."""

from .distributed import distributed_device, init_distributed, wrap_ddp
from .precision import PrecisionPolicy, cpu_supports_bf16, prepare_module, resolve_precision
from .serialization import json_safe

__all__ = [
    "PrecisionPolicy",
    "cpu_supports_bf16",
    "distributed_device",
    "init_distributed",
    "json_safe",
    "prepare_module",
    "resolve_precision",
    "wrap_ddp",
]
