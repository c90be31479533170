"""torchrun helpers for bundle configs: process group (NCCL on GPU, gloo on CPU), device, DDP wrapping."""

from __future__ import annotations

import os

import ignite.distributed as idist
import torch
import torch.distributed as dist

__all__ = ["init_distributed", "distributed_device", "wrap_ddp"]


def init_distributed(backend: str = "auto") -> int:
    """Initialise the default process group from torchrun's environment; returns this process's rank.

    Every rank also synchronises ignite's distributed helpers with the group here. Ignite detects the group on the
    first ``ignite.distributed`` call with a collective (a new gloo group), and its ``Checkpoint`` (so MONAI's
    ``CheckpointSaver``) makes that call when created: a saver created on rank 0 alone would wait forever for the
    other ranks. After this call, handlers may be created on rank 0 only.

    Args:
        backend: ``"auto"`` (NCCL when CUDA is available, gloo otherwise), or an explicit backend name.

    Raises:
        RuntimeError: when not launched by torchrun (no ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``).
    """
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"distributed training needs torchrun's environment; missing {missing}")
    if not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    idist.sync()
    return dist.get_rank()


def distributed_device() -> torch.device:
    """``cuda:<LOCAL_RANK>`` when CUDA is available (and selects it), else ``cpu``."""
    if torch.cuda.is_available():
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def wrap_ddp(
    module: torch.nn.Module, device: torch.device | str, find_unused_parameters: bool = False
) -> torch.nn.parallel.DistributedDataParallel:
    """Wrap ``module`` (already on ``device`` and in its memory layout) in DistributedDataParallel."""
    device = torch.device(device)
    device_ids = [device] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(
        module, device_ids=device_ids, find_unused_parameters=find_unused_parameters
    )
