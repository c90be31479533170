"""Utilities shared by the engines and bundles: precision policy, torchrun helpers, bundle checks."""

from .bundle import BundleRootError, check_bundle_root
from .distributed import distributed_device, init_distributed, wrap_ddp
from .precision import PrecisionPolicy, cpu_supports_bf16, prepare_module, resolve_precision

__all__ = [
    "BundleRootError",
    "check_bundle_root",
    "PrecisionPolicy",
    "cpu_supports_bf16",
    "distributed_device",
    "init_distributed",
    "prepare_module",
    "resolve_precision",
    "wrap_ddp",
]
