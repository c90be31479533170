"""One self-supervised training step for MONAI's Ignite trainers (``SupervisedTrainer(iteration_update=...)``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monai.utils import convert_to_tensor

from dissect_monai.utils.precision import PrecisionPolicy, resolve_precision

__all__ = ["NonFiniteTrainingError", "SSLIteration", "unwrap_module"]


class NonFiniteTrainingError(RuntimeError):
    """A loss, gradient norm or model state became NaN/Inf; training stops without touching the last checkpoint."""


def unwrap_module(network: torch.nn.Module) -> torch.nn.Module:
    """The module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper (``network`` itself otherwise)."""
    wrappers = (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
    return network.module if isinstance(network, wrappers) else network


class SSLIteration:
    """Two-view SSL step: forward both views through the network, backward, optimizer step, target EMA update.

    Used as ``iteration_update`` of :class:`monai.engines.SupervisedTrainer` (whose ``loss_function`` may be
    ``None``: the network computes its own losses). The engine's network must implement
    ``forward(view1, view2) -> dict[str, Tensor]`` with a scalar fp32 ``"loss"`` (the total being optimised)
    and each term by name, and ``update_target(progress: float) -> float`` (EMA of the target branch, returns
    the momentum used), as :class:`dissect_monai.networks.DiSSECT` does.

    Order within a step: forward under the precision policy (bf16 autocast + channels_last where fast), a
    finiteness check of the loss, backward, optional gradient clipping with a finiteness check of the
    gradient norm, ``optimizer.step()``, then ``update_target(progress)`` on the unwrapped module (so the
    EMA sees the freshly stepped online weights, also under DDP). ``progress`` is ``iteration / total
    iterations`` of the run.

    Args:
        view_keys: keys of the two views in the batch dictionary, each (B, C, H, W) or (B, C, H, W, D).
        batch_transform: applied to the collated batch dictionary, its tensors moved to the engine's device,
            before the views are read: the pretraining bundle generates its two views here, batched on the
            device (``dissect_monai.transforms.RandTwoViewsd``). ``None`` reads the views from the batch as
            the DataLoader delivers them.
        precision: ``"auto"``, ``"bf16"``, ``"fp32"`` or a :class:`PrecisionPolicy`
            (see :func:`dissect_monai.utils.resolve_precision`).
        grad_clip: max global L2 norm of the gradients; ``None`` only measures the norm.

    Returns (per call): a dict of detached fp32 scalars: every loss term of the network, ``"momentum"``
    and ``"grad_norm"``, stored by Ignite in ``engine.state.output``.

    Raises:
        NonFiniteTrainingError: when the loss or the gradient norm is NaN/Inf. The optimizer has not stepped,
            so the weights (and every checkpoint written so far) are the last good ones.
    """

    def __init__(
        self,
        view_keys: Sequence[str] = ("image", "image_2"),
        precision: str | PrecisionPolicy = "auto",
        grad_clip: float | None = None,
        batch_transform: Callable[[dict], Mapping[str, Any]] | None = None,
    ) -> None:
        if len(view_keys) != 2:
            raise ValueError(f"view_keys must name exactly two views, got {list(view_keys)}")
        self.view_keys = tuple(view_keys)
        self.batch_transform = batch_transform
        self.precision = precision
        self.grad_clip = grad_clip
        self._policy: PrecisionPolicy | None = None

    def policy(self, device: torch.device | str) -> PrecisionPolicy:
        """The precision policy resolved for ``device`` (resolved once, on the first step)."""
        if self._policy is None:
            self._policy = resolve_precision(self.precision, device)
        return self._policy

    def _view(self, batchdata: Mapping[str, Any], key: str, engine: Any, policy: PrecisionPolicy) -> torch.Tensor:
        if key not in batchdata:
            raise KeyError(f"SSL batch has no view {key!r}; keys present: {sorted(batchdata)}")
        view = convert_to_tensor(batchdata[key], track_meta=False)
        view = view.to(engine.state.device, non_blocking=getattr(engine, "non_blocking", False))
        return policy.format_input(view)

    def __call__(self, engine: Any, batchdata: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        policy = self.policy(engine.state.device)
        if self.batch_transform is not None:
            non_blocking = getattr(engine, "non_blocking", False)
            batchdata = self.batch_transform({
                k: v.to(engine.state.device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
                for k, v in batchdata.items()
            })
        view1 = self._view(batchdata, self.view_keys[0], engine, policy)
        view2 = self._view(batchdata, self.view_keys[1], engine, policy)
        network = engine.network
        network.train()
        engine.optimizer.zero_grad(set_to_none=getattr(engine, "optim_set_to_none", True))
        with policy.autocast():
            losses = network(view1, view2)
        if "loss" not in losses:
            raise KeyError(f"the network's forward must return a dict with 'loss'; got {sorted(losses)}")
        loss = losses["loss"]
        terms = {name: value.detach().float() for name, value in losses.items()}
        if not torch.isfinite(loss).all():
            raise NonFiniteTrainingError(
                f"non-finite loss at iteration {engine.state.iteration} (epoch {engine.state.epoch}): "
                + ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
                + "; stopping before the optimizer step, the last checkpoint written is the last good one"
            )
        loss.backward()
        params = [p for p in network.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip if self.grad_clip else math.inf)
        if not torch.isfinite(grad_norm):
            raise NonFiniteTrainingError(
                f"non-finite gradient norm ({grad_norm.item()}) at iteration {engine.state.iteration} "
                f"(epoch {engine.state.epoch}, loss {loss.item():.4g}); stopping before the optimizer step, "
                "the last checkpoint written is the last good one"
            )
        engine.optimizer.step()
        total = engine.state.max_epochs * engine.state.epoch_length
        momentum = unwrap_module(network).update_target(min(engine.state.iteration / total, 1.0))
        terms["momentum"] = torch.as_tensor(float(momentum))
        terms["grad_norm"] = grad_norm.detach().float()
        return terms
