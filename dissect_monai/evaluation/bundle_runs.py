"""Train and test runs through the bundles' own configs (``ConfigWorkflow``), at a fixed optimiser-step budget.

The classification fine-tune cells and the segmentation runs both go through here, so a row of either table is
exactly what ``python -m monai.bundle run`` of that bundle gives with the same overrides.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monai.bundle import ConfigWorkflow

from dissect_monai.networks.presets import method_names

__all__ = [
    "StepBudget",
    "TrainedRun",
    "bundle_workflow",
    "method_assignments",
    "method_encoder_config",
    "run_workflow",
    "train_for_steps",
]


@dataclass(frozen=True)
class StepBudget:
    """The same number of optimiser steps for every row and label fraction (epochs follow from the train size).

    Attributes:
        steps: optimiser steps per run (at least; whole epochs are run).
        batch_size: train batch size.
        val_every_steps: validation interval in steps (the best validation checkpoint is kept).
    """

    steps: int
    batch_size: int
    val_every_steps: int

    def schedule(self, n_train: int) -> tuple[int, int, int]:
        """``(epochs, val_interval in epochs, steps per epoch)`` for ``n_train`` training items: at least ``steps``
        steps, validated about every ``val_every_steps``, the epochs a multiple of the interval so that the last
        epoch is always validated (the trained network is never left out of the selection)."""
        if n_train < 1:
            raise ValueError("the training datalist is empty")
        per_epoch = math.ceil(n_train / self.batch_size)
        interval = max(1, round(self.val_every_steps / per_epoch))
        epochs = interval * math.ceil(max(1, math.ceil(self.steps / per_epoch)) / interval)
        return epochs, interval, per_epoch


@dataclass(frozen=True)
class TrainedRun:
    """What a training workflow did: the train datalist, the schedule, its wall time and best validation metric."""

    datalist: list[dict]
    epochs: int
    steps: int
    seconds: float
    best_val: float


def bundle_workflow(bundle: str | os.PathLike, configs: Sequence[str], **override: Any) -> ConfigWorkflow:
    """A (not yet initialised) train-type ``ConfigWorkflow`` of ``bundle``'s ``configs`` (merged in order) with
    ``override`` values by config id (e.g. ``label_fraction=0.1``, ``**{"network_def#encoder": {...}}``)."""
    bundle = Path(bundle)
    return ConfigWorkflow(
        config_file=[str(bundle / "configs" / c) for c in configs],
        meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=str(bundle / "configs" / "logging.conf"),
        workflow_type="train",
        bundle_root=str(bundle),
        **override,
    )


def run_workflow(workflow: ConfigWorkflow) -> ConfigWorkflow:
    """Initialise, run and finalise ``workflow``."""
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return workflow


def train_for_steps(workflow: ConfigWorkflow, budget: StepBudget) -> TrainedRun:
    """Run a bundle's training workflow (not initialised) for ``budget``: sets its ``batch_size``, ``epochs`` and
    ``val_interval`` from the size of its ``train#datalist``, then runs it; the best metric of
    ``validate#evaluator`` is the validation score of the kept checkpoint."""
    workflow.parser["batch_size"] = budget.batch_size
    datalist = list(workflow.parser.get_parsed_content("train#datalist"))
    epochs, val_interval, per_epoch = budget.schedule(len(datalist))
    workflow.parser["epochs"] = epochs
    workflow.parser["val_interval"] = val_interval
    start = time.time()
    run_workflow(workflow)
    best = float(workflow.parser.get_parsed_content("validate#evaluator").state.best_metric)
    return TrainedRun(datalist, epochs, epochs * per_epoch, time.time() - start, best)


def method_encoder_config(
    method: str, image_size: int, checkpoint: str | None, methods_dir: str | os.PathLike,
    pretrain_bundle: str | os.PathLike, depth: int | None = None,
) -> dict:
    """Bundle config (for ``network_def#encoder``) of ``method``'s encoder as a feature pyramid, optionally loaded
    from a pretraining ``checkpoint`` (:func:`dissect_monai.networks.presets.method_encoder`); the preset is
    ``<methods_dir>/<method>.yaml`` merged on the ``pretrain_bundle``'s ``train.yaml``."""
    config: dict[str, Any] = {"_target_": "dissect_monai.networks.presets.method_encoder", "method": method,
                              "image_size": image_size, "methods_dir": str(methods_dir),
                              "bundle_root": str(pretrain_bundle), "checkpoint": checkpoint}
    if depth is not None:
        config["overrides"] = {"depth": depth}
    return config


def method_assignments(items: Sequence[str], methods_dir: str | os.PathLike) -> dict[str, str]:
    """``["NAME=METHOD", ...]`` (the scripts' ``--method``) as ``{name: method}``, every method a preset of
    ``methods_dir`` (the repository's ``configs/methods``; :func:`dissect_monai.networks.presets.method_names`, the
    one method list).

    Raises:
        ValueError: an item without ``=``, or an unknown preset (the message lists the known ones).
    """
    if any("=" not in item for item in items):
        raise ValueError(f"method assignments must be NAME=METHOD, got {list(items)}")
    methods = dict(item.split("=", 1) for item in items)
    known = method_names(methods_dir)
    unknown = sorted(set(methods.values()) - set(known))
    if unknown:
        raise ValueError(f"unknown method preset(s) {unknown}; choose from {known}")
    return methods
