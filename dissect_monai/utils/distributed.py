"""torchrun helpers: process group (NCCL on GPU, gloo on CPU), device, DDP wrapping, and the collectives the
losses use so that batch statistics are global (every rank's samples), not per rank."""

from __future__ import annotations

import os

import ignite.distributed as idist
import torch
import torch.distributed as dist

__all__ = ["init_distributed", "distributed_device", "wrap_ddp", "is_distributed", "gather_with_grad", "all_reduce_sum"]


def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums every rank's gradient of the gathered tensor and keeps this
    rank's rows: with DistributedDataParallel averaging parameter gradients over ``W`` ranks, a loss computed on the
    gathered batch then gets exactly the gradient of the same loss on one ``W``-times larger batch."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(dist.get_world_size())]
        dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
        counts = [int(n) for n in sizes]
        padded = x.new_zeros((max(counts), *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded)
        rank = dist.get_rank()
        ctx.start, ctx.stop = sum(counts[:rank]), sum(counts[: rank + 1])
        return torch.cat([part[:n] for part, n in zip(parts, counts)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.start:ctx.stop]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` ``(B_r, *)`` concatenated in rank order, ``(sum B_r, *)``, differentiable; ``x`` itself
    outside a multi-rank process group. Ranks may hold different batch sizes."""
    return _GatherWithGrad.apply(x) if is_distributed() else x


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over all ranks (in place, no gradient); ``x`` unchanged outside a multi-rank process group."""
    if is_distributed():
        dist.all_reduce(x)
    return x


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
