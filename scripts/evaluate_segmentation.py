#!/usr/bin/env python
"""Segmentation transfer benchmark: lung-seg test Dice / HD95 per encoder and label fraction, and 3D Dice per organ.

Every run goes through the bundles themselves (:mod:`dissect_monai.evaluation.segmentation`: ``ConfigWorkflow`` on
``train.yaml``, then ``train.yaml`` + ``evaluate.yaml``) under ``--work-dir`` (default ``runs/segmentation``). A run
whose ``result.json`` exists is reused unless its encoder checkpoint changed, so the script resumes where it stopped
and rows can be added later. Writes ``results/segmentation.json`` and ``results/segmentation.md``.

An ``--encoder NAME=CHECKPOINT`` row uses the encoder its SSL method pretrains (``--method NAME=METHOD``; by default
the preset of ``configs/methods`` named like the row, else the bundle's ResNet-18), frozen and fine-tuned; the
bundle's U-Net decodes that encoder's stage maps (the token maps at 1/3, 2/3 and full depth for a ViT). Every row
and fraction gets the same optimiser steps (``--steps``); validation Dice every ``--val-every-steps`` picks the
checkpoint; test = the frontal lung-seg test images, Dice and HD95 on the original grid.

    python scripts/evaluate_segmentation.py --encoder random \\
        --encoder dissect=runs/pretrain/dissect/models/model.pt --encoder byol=runs/pretrain/byol/models/model.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from dissect_monai.data import default_data_root
from dissect_monai.evaluation import (
    LungRow,
    StepBudget,
    collect_runs,
    discard_stale_run,
    method_assignments,
    train_and_test_ct,
    train_and_test_lung,
)
from dissect_monai.evaluation.reports import write_segmentation_report
from dissect_monai.networks.presets import method_names

from repo_paths import CT_BUNDLE as CT
from repo_paths import LUNG_BUNDLE as LUNG
from repo_paths import METHODS_DIR, PRETRAIN_BUNDLE, RESULTS, RUNS


def lung_rows(encoders: list[str], methods: dict[str, str]) -> tuple[list[LungRow], list[str]]:
    """The rows of ``--encoder`` values (``random`` or ``NAME=CHECKPOINT``) and the encoders without a checkpoint."""
    presets = method_names(METHODS_DIR)
    rows, missing = [], []
    for spec in encoders:
        if spec == "random":
            rows.append(LungRow("random init", "fine-tuned", None, None))
            continue
        name, _, path = spec.partition("=")
        if not path or not Path(path).is_file():
            missing.append(f"{name} ({path or 'no path'})")
            continue
        method = methods.get(name, name if name in presets else None)
        rows += [LungRow(name, mode, str(Path(path).resolve()), method) for mode in ("fine-tuned", "frozen")]
    return rows, missing


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", action="append", default=[],
                    help="'random' or NAME=CHECKPOINT (pretraining bundle models/model.pt or training checkpoint)")
    ap.add_argument("--method", action="append", default=[], metavar="NAME=METHOD",
                    help="method preset whose encoder NAME's checkpoint holds (default: the preset named NAME if any, "
                         "else the bundle's ResNet-18)")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.1, 1.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--val-every-steps", type=int, default=10, help="validation interval in optimiser steps")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--ct-epochs", type=int, default=60, help="0 skips the 3D run")
    ap.add_argument("--no-lung", action="store_true", help="skip the 2D runs (e.g. the 3D run alone)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-root", type=Path, default=None, help="default: $DISSECT_DATA_DIR (default_data_root)")
    ap.add_argument("--work-dir", type=Path, default=RUNS / "segmentation")
    ap.add_argument("--results", type=Path, default=RESULTS / "segmentation")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        methods = method_assignments(args.method, METHODS_DIR)
    except ValueError as e:
        ap.error(str(e))
    rows, missing = lung_rows([] if args.no_lung else (args.encoder or ["random"]), methods)
    budget = StepBudget(args.steps, args.batch_size, args.val_every_steps)
    data_root = args.data_root or default_data_root()
    overrides = {"num_threads": args.threads, "dataset_dir": str(data_root / "cxr-lung-seg")}
    for row in rows:
        for fraction in args.fractions:
            for seed in args.seeds:
                key = f"{row.encoder}_{row.mode}_{fraction}_{seed}".replace(" ", "_")
                if discard_stale_run(args.work_dir / key, row):
                    print(f"[segmentation] {key}: earlier result came from another checkpoint, rerun", flush=True)
                print(f"[segmentation] {key}", flush=True)
                train_and_test_lung(LUNG, args.work_dir / key, row, fraction, seed, budget, args.image_size, overrides,
                                    methods_dir=METHODS_DIR, pretrain_bundle=PRETRAIN_BUNDLE)
                write_segmentation_report({**collect_runs(args.work_dir), "missing_encoders": missing}, args.results)
    if args.ct_epochs > 0:
        print("[segmentation] ct", flush=True)
        train_and_test_ct(CT, args.work_dir / f"ct_e{args.ct_epochs}", args.ct_epochs, args.seeds[0],
                          {"dataset_dir": str(data_root / "totalseg-ct")})
    write_segmentation_report({**collect_runs(args.work_dir), "missing_encoders": missing}, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
