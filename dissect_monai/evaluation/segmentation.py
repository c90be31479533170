"""Segmentation transfer runs through the bundles: lung-seg Dice / HD95 per encoder, mode and label fraction, and
the 3D CT bundle's Dice per organ.

Each run trains with the bundle's ``train.yaml`` (``ConfigWorkflow``, a fixed step budget) and tests with
``train.yaml`` + ``evaluate.yaml``; its ``result.json`` (written atomically) makes it reusable, unless the
encoder checkpoint it was trained from changed (:func:`discard_stale_run` compares file fingerprints).
"""

from __future__ import annotations

import csv
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dissect_monai.evaluation.bundle_runs import (
    StepBudget,
    bundle_workflow,
    method_encoder_config,
    run_workflow,
    train_for_steps,
)
from dissect_monai.evaluation.metrics import mean_std
from dissect_monai.evaluation.results import file_fingerprint, read_json, write_json

__all__ = [
    "CT_ORGANS",
    "LungRow",
    "collect_runs",
    "discard_stale_run",
    "read_metric_csv",
    "train_and_test_ct",
    "train_and_test_lung",
]

#: the CT bundle's output channels after background, in order
CT_ORGANS = ("spleen", "kidney_right", "kidney_left", "liver")


@dataclass(frozen=True)
class LungRow:
    """An encoder of the lung table: display name, ``frozen`` / ``fine-tuned``, its pretraining checkpoint (``None``:
    random init) and the method preset whose encoder the checkpoint holds (``None``: the bundle's ResNet-18)."""

    encoder: str
    mode: str
    checkpoint: str | None
    method: str | None

    @property
    def freeze(self) -> bool:
        return self.mode == "frozen"

    def checkpoint_fingerprint(self) -> str | None:
        return file_fingerprint(self.checkpoint) if self.checkpoint else None


def read_metric_csv(path: str | os.PathLike) -> dict[str, list[float]]:
    """MONAI ``MetricsSaver``'s ``*_raw.csv``: file name -> per-class values (NaN where undefined)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return {r[0]: [float(v) for v in r[1:-1]] for r in rows[1:]}


def discard_stale_run(run_dir: str | os.PathLike, row: LungRow) -> bool:
    """Delete ``run_dir`` if its finished result was trained from another checkpoint than ``row``'s (by contents: a
    new checkpoint under a row name or path used before); returns whether it did."""
    run_dir = Path(run_dir)
    result_file = run_dir / "result.json"
    if not result_file.is_file():
        return False
    stored = read_json(result_file).get("row", {})
    if stored.get("checkpoint_fingerprint") == row.checkpoint_fingerprint():
        return False
    shutil.rmtree(run_dir)
    return True


def train_and_test_lung(
    bundle: str | os.PathLike, run_dir: str | os.PathLike, row: LungRow, fraction: float, seed: int,
    budget: StepBudget, image_size: int, overrides: dict[str, Any] | None = None, *,
    methods_dir: str | os.PathLike, pretrain_bundle: str | os.PathLike,
) -> dict[str, Any]:
    """One 2D run of the lung bundle: train on ``fraction`` of train (by patient, seeded) for ``budget``, test on
    the test split (Dice and HD95 per image on the original grid); reuses a finished ``result.json``, and starts a
    run that has none from an empty ``run_dir``.

    Args:
        overrides: further bundle overrides by config id (e.g. ``num_threads``).
        methods_dir / pretrain_bundle: the method presets and the pretraining bundle they extend (the row's
            method encoder, :func:`~dissect_monai.evaluation.bundle_runs.method_encoder_config`).
    """
    run_dir = Path(run_dir)
    result_file = run_dir / "result.json"
    if result_file.is_file():
        return read_json(result_file)
    shutil.rmtree(run_dir, ignore_errors=True)  # what an interrupted attempt left
    common: dict[str, Any] = {"ckpt_dir": str(run_dir / "models"), "output_dir": str(run_dir / "eval"), "seed": seed,
                              "image_size": image_size, "batch_size": budget.batch_size, **(overrides or {})}
    if row.method:  # the test workflow loads the trained U-Net over this architecture, so it needs no checkpoint
        common["network_def#encoder"] = method_encoder_config(row.method, image_size, None, methods_dir,
                                                              pretrain_bundle)
    encoder = ({"network_def#encoder": method_encoder_config(row.method, image_size, row.checkpoint, methods_dir,
                                                             pretrain_bundle)} if row.method
               else {"encoder_checkpoint": row.checkpoint})
    trained = train_for_steps(bundle_workflow(bundle, ["train.yaml"], label_fraction=fraction,
                                              freeze_encoder=row.freeze, **{**common, **encoder}), budget)
    run_workflow(bundle_workflow(bundle, ["train.yaml", "evaluate.yaml"], **common))
    dice = read_metric_csv(run_dir / "eval" / "test_mean_dice_raw.csv")
    hd95 = read_metric_csv(run_dir / "eval" / "test_hd95_raw.csv")
    result = {
        "row": {"encoder": row.encoder, "mode": row.mode, "checkpoint": row.checkpoint, "method": row.method,
                "checkpoint_fingerprint": row.checkpoint_fingerprint(), "fraction": fraction},
        "config": {"steps": budget.steps, "batch_size": budget.batch_size, "image_size": image_size,
                   "val_every_steps": budget.val_every_steps},
        "n_train_images": len(trained.datalist), "epochs": trained.epochs, "steps": trained.steps, "seed": seed,
        "train_seconds": round(trained.seconds, 1), "best_val_dice": trained.best_val,
        "test_dice": mean_std(v[0] for v in dice.values()).as_dict(),
        "test_hd95": mean_std(v[0] for v in hd95.values()).as_dict(),
        "per_image_dice": {Path(k).name: v[0] for k, v in dice.items()},
    }
    write_json(result_file, result)
    return result


def train_and_test_ct(
    bundle: str | os.PathLike, run_dir: str | os.PathLike, epochs: int, seed: int,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """3D run of the CT bundle: train on its training volume, Dice per organ on it (fit) and on the held-out DICOM
    series (test); reuses a finished ``result.json``. ``overrides``: further bundle overrides by config id."""
    run_dir = Path(run_dir)
    result_file = run_dir / "result.json"
    if result_file.is_file():
        return read_json(result_file)
    shutil.rmtree(run_dir, ignore_errors=True)  # what an interrupted attempt left
    common = {"ckpt_dir": str(run_dir / "models"), "seed": seed, **(overrides or {})}
    start = time.time()
    run_workflow(bundle_workflow(bundle, ["train.yaml"], epochs=epochs, val_interval=max(1, epochs // 5),
                                 output_dir=str(run_dir / "eval_train"), **common))
    seconds = time.time() - start
    out = {}
    for name, extra in (("test_dicom_series", {}), ("fit_training_volume", {"validate#datalist": "@train#datalist"})):
        eval_dir = run_dir / f"eval_{name}"
        run_workflow(bundle_workflow(bundle, ["train.yaml", "evaluate.yaml"], output_dir=str(eval_dir), **common,
                                     **extra))
        values = next(iter(read_metric_csv(eval_dir / "test_mean_dice_raw.csv").values()))
        out[name] = {organ: (v if np.isfinite(v) else None) for organ, v in zip(CT_ORGANS, values)}
    result = {"epochs": epochs, "seed": seed, "train_seconds": round(seconds, 1), **out}
    write_json(result_file, result)
    return result


def collect_runs(work_dir: str | os.PathLike) -> dict[str, Any]:
    """Every finished run under ``work_dir`` (``*/result.json``): ``{"lung": {run: result}, "ct": result or None}``,
    so separate invocations fill one report."""
    lung, ct = {}, None
    for result_file in sorted(Path(work_dir).glob("*/result.json")):
        result = read_json(result_file)
        if "row" in result:
            lung[result_file.parent.name] = result
        elif result_file.parent.name.startswith("ct_"):
            ct = result
    return {"lung": lung, "ct": ct}
