"""Ignite handlers for SSL pretraining: metrics to console/TensorBoard/JSON lines, progress bar, epoch seeding."""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data.utils import set_rnd

from dissect_monai.engines.ssl_iteration import unwrap_module

__all__ = ["SSLMetricsLogger", "ProgressBarHandler", "EpochSeeder", "is_main_process"]

logger = logging.getLogger(__name__)


def is_main_process() -> bool:
    """True outside ``torch.distributed`` or on rank 0."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _scalars(output: Any) -> dict[str, float]:
    if not isinstance(output, dict):
        return {}
    values = {}
    for name, value in output.items():
        if torch.is_tensor(value) and value.numel() == 1:
            values[name] = float(value.item())
        elif isinstance(value, (int, float)):
            values[name] = float(value)
    return values


class SSLMetricsLogger:
    """Log SSL training state every ``interval`` iterations and at each epoch end (rank 0 only).

    Each record holds the scalar entries of ``engine.state.output`` (loss terms, ``momentum``,
    ``grad_norm``), the learning rate of the first parameter group, images per second, and, when the
    (unwrapped) network has ``codebook_statistics()``, its per-scale codebook figures (perplexity, usage,
    dead codes). Records go to the ``dissect_monai.train`` logger (console, via the bundle's logging.conf),
    to TensorBoard under ``log_dir`` (tags ``train/<name>``, ``epoch/<name>``, ``codebook/<name>``) and,
    appended, to ``log_dir/metrics.jsonl`` (one JSON object per line with ``"kind": "iteration"|"epoch"``)
    from which ``scripts/pretrain_curves.py`` draws the curves. A resumed run appends to the same file.

    Args:
        log_dir: TensorBoard and JSON-lines directory; ``None`` logs to the console only.
        interval: iterations between iteration records.
        batch_size_key: batch key whose first dimension counts the images of an iteration.
        tensorboard: also write TensorBoard events (needs ``tensorboard``).
    """

    def __init__(
        self,
        log_dir: str | os.PathLike | None = None,
        interval: int = 10,
        batch_size_key: str = "image",
        tensorboard: bool = True,
    ) -> None:
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.interval = interval
        self.batch_size_key = batch_size_key
        self.tensorboard = tensorboard
        self.console = logging.getLogger("dissect_monai.train")
        self._writer: Any = None
        self._epoch_sums: dict[str, float] = defaultdict(float)
        self._epoch_count = 0
        self._images = 0
        self._tick = time.perf_counter()
        self._epoch_tick = time.perf_counter()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self.log_iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.log_epoch)
        engine.add_event_handler(Events.COMPLETED, self.close)

    def _epoch_started(self, engine: Engine) -> None:
        self._epoch_sums.clear()
        self._epoch_count = 0
        self._epoch_tick = time.perf_counter()

    def _accumulate(self, engine: Engine) -> None:
        for name, value in _scalars(engine.state.output).items():
            self._epoch_sums[name] += value
        self._epoch_count += 1
        batch = engine.state.batch
        if isinstance(batch, dict) and self.batch_size_key in batch:
            self._images += len(batch[self.batch_size_key])

    def _common(self, engine: Engine) -> dict[str, float]:
        record: dict[str, float] = {}
        optimizer = getattr(engine, "optimizer", None)
        if optimizer is not None:
            record["lr"] = float(optimizer.param_groups[0]["lr"])
        network = getattr(engine, "network", None)
        stats = getattr(unwrap_module(network), "codebook_statistics", None) if network is not None else None
        if callable(stats):
            record.update({f"codebook/{k}": float(v) for k, v in stats().items()})
        return record

    def _emit(self, kind: str, engine: Engine, values: dict[str, float]) -> None:
        step = engine.state.iteration
        record = {"kind": kind, "iteration": step, "epoch": engine.state.epoch, **values}
        text = "  ".join(f"{k}: {v:.4g}" for k, v in values.items())
        self.console.info(f"{kind} epoch {engine.state.epoch} iteration {step}: {text}")
        if self.log_dir is None:
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.tensorboard:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(log_dir=str(self.log_dir))
            prefix = "train" if kind == "iteration" else "epoch"
            for name, value in values.items():
                tag = name if name.startswith("codebook/") else f"{prefix}/{name}"
                self._writer.add_scalar(tag, value, step)
            self._writer.flush()

    def log_iteration(self, engine: Engine) -> None:
        if not is_main_process():
            return
        now = time.perf_counter()
        values = _scalars(engine.state.output)
        values["images_per_s"] = self._images / max(now - self._tick, 1e-9)
        values.update(self._common(engine))
        self._images, self._tick = 0, now
        self._emit("iteration", engine, values)

    def log_epoch(self, engine: Engine) -> None:
        if not is_main_process() or self._epoch_count == 0:
            return
        values = {name: total / self._epoch_count for name, total in self._epoch_sums.items()}
        values["epoch_time_s"] = time.perf_counter() - self._epoch_tick
        values.update(self._common(engine))
        self._emit("epoch", engine, values)

    def close(self, engine: Engine | None = None) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class ProgressBarHandler:
    """One tqdm bar over every iteration of the run (all epochs), showing epoch and loss (rank 0 only).

    The bar's total is ``max_epochs * epoch_length``, so tqdm's remaining-time estimate is the whole run's,
    not the current epoch's; a resumed run starts the bar at the restored iteration (and its rate, hence
    the estimate, counts only the iterations run in this process).

    Args:
        persist: keep the finished bar on screen.
        loss_key: entry of ``engine.state.output`` shown as the loss.
        file: stream the bar writes to (``None``: standard error).
    """

    def __init__(self, persist: bool = False, loss_key: str = "loss", file: Any = None) -> None:
        self.persist = persist
        self.loss_key = loss_key
        self.file = file
        self._bar: Any = None

    def attach(self, engine: Engine) -> None:
        if not is_main_process():
            return
        engine.add_event_handler(Events.STARTED, self._open)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._advance)
        engine.add_event_handler(Events.COMPLETED, self._close)
        engine.add_event_handler(Events.TERMINATE, self._close)

    def _open(self, engine: Engine) -> None:
        from tqdm.auto import tqdm

        state = engine.state
        total = state.max_epochs * state.epoch_length if state.epoch_length is not None else None
        self._bar = tqdm(
            total=total, initial=state.iteration, unit="it", leave=self.persist, file=self.file, dynamic_ncols=True
        )

    def _advance(self, engine: Engine) -> None:
        if self._bar is None:
            return
        postfix = {"epoch": f"{engine.state.epoch}/{engine.state.max_epochs}"}
        output = engine.state.output
        if isinstance(output, dict) and self.loss_key in output:
            postfix[self.loss_key] = f"{float(output[self.loss_key]):.4g}"
        self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(1)

    def _close(self, engine: Engine) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class EpochSeeder:
    """Reseed every random source at each epoch start from ``seed + epoch``, so a run resumed at an epoch
    boundary draws the same data order and augmentations as an uninterrupted one.

    Seeds Python, NumPy and torch (which also determines the DataLoader's shuffling and worker seeds: MONAI's
    ``DataLoader`` seeds each worker's transforms from it). With ``num_workers == 0`` the dataset's random
    transforms are reseeded directly (``monai.data.utils.set_rnd``). A ``DistributedSampler`` is
    handled by MONAI's trainer (``set_epoch``). ``transforms`` run outside the DataLoader (the bundle's batched
    views, applied by :class:`dissect_monai.engines.SSLIteration`) are reseeded the same way.

    Args:
        seed: base seed.
        transforms: further random transforms (objects with ``set_random_state``) to reseed at each epoch start.
    """

    def __init__(self, seed: int = 0, transforms: Sequence[Any] = ()) -> None:
        self.seed = int(seed)
        self.transforms = list(transforms)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        seed = (self.seed + engine.state.epoch) % (2**32)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        loader = getattr(engine, "data_loader", None)
        if loader is not None and getattr(loader, "num_workers", 0) == 0 and hasattr(loader, "dataset"):
            set_rnd(loader.dataset, seed)
        set_rnd(self.transforms, seed)
