#!/usr/bin/env python
"""Label-efficiency evaluation of frozen and fine-tuned representations on NIH pneumonia and Kermany pneumonia.

The protocol is :mod:`dissect_monai.evaluation.label_efficiency`: frozen linear probes at 1 / 5 / 10 / 100 % of the
labels (5 label samples by patient), kNN and, on NIH, per-view AUC and the view shortcut probe; fine-tuning through
the classification bundle at 10 % (3 samples) and 100 %. Rows: raw pixels, a frozen random-init ResNet-18,
supervised-from-scratch (the bundle, random init), and each ``CHECKPOINT`` given (``--method NAME=METHOD``: the
preset whose encoder it holds; default the preset named like the row, else ``byol``'s plain ResNet-18). Finished
cells are kept in ``<work-dir>/rows/<row>.json``: a rerun computes only what is missing, and a row whose checkpoint
changed starts over. The report is ``<results>.{json,md,png}`` from every stored row.

    python scripts/evaluate_representations.py                       # reference rows only
    python scripts/evaluate_representations.py dissect=runs/pretrain/dissect/models/model.pt --finetune
    python scripts/evaluate_representations.py mae-run=runs/compare/mae_64px_1ep/model.pt --method mae-run=mae
    python scripts/evaluate_representations.py --report-only
"""

from __future__ import annotations

import argparse
import sys
from functools import cache
from pathlib import Path

import torch

from dissect_monai.data import LABEL_FRACTIONS, default_data_root
from dissect_monai.evaluation import (
    BENCHMARKS,
    REFERENCE_ROWS,
    ProtocolSettings,
    RowStore,
    StepBudget,
    checkpoint_rows,
    load_benchmark,
    method_assignments,
    reference_row,
    run_row,
)
from dissect_monai.evaluation.reports import write_label_efficiency_report
from dissect_monai.networks.presets import method_names

from repo_paths import CLASSIFICATION_BUNDLE, METHODS_DIR, PRETRAIN_BUNDLE, RESULTS, RUNS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoints", nargs="*", metavar="[NAME=]CHECKPOINT",
                   help="pretraining checkpoints (bundle models/model.pt or training checkpoint)")
    p.add_argument("--rows", nargs="*", default=list(REFERENCE_ROWS), choices=list(REFERENCE_ROWS))
    p.add_argument("--benchmarks", nargs="*", default=list(BENCHMARKS), choices=list(BENCHMARKS))
    p.add_argument("--fractions", nargs="*", type=float, default=list(LABEL_FRACTIONS), help="probe label fractions")
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2, 3, 4], help="probe label samples")
    p.add_argument("--ft-fractions", nargs="*", type=float, default=[0.1, 1.0])
    p.add_argument("--ft-seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--ft-steps", type=int, default=300, help="fine-tune budget: optimiser steps per cell")
    p.add_argument("--ft-batch", type=int, default=32)
    p.add_argument("--ft-val-every", type=int, default=50, help="fine-tune validation interval in steps")
    p.add_argument("--ft-lr", type=float, default=1e-3)
    p.add_argument("--ft-encoder-lr", type=float, default=1e-4, help="a pretrained encoder's fine-tune lr")
    p.add_argument("--finetune", action="store_true", help="also fine-tune each checkpoint")
    p.add_argument("--descriptor", action="store_true",
                   help="also probe [encoder feature, quantised descriptor] of checkpoints with a quantizer")
    p.add_argument("--method", action="append", default=[], metavar="NAME=METHOD")
    p.add_argument("--label", action="append", default=[], metavar="NAME=TEXT", help="display label of a row")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--depth", type=int, default=18, help="ResNet depth of the ResNet methods' encoders")
    p.add_argument("--data-root", type=Path, default=None, help="default: $DISSECT_DATA_DIR (default_data_root)")
    p.add_argument("--work-dir", type=Path, default=RUNS / "representations")
    p.add_argument("--results", type=Path, default=RESULTS / "representations",
                   help="output prefix: <prefix>.json, .md, .png")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--report-only", action="store_true", help="only assemble the report from stored rows")
    return p.parse_args(argv)


def settings_of(args: argparse.Namespace) -> ProtocolSettings:
    return ProtocolSettings(
        methods_dir=str(METHODS_DIR), pretrain_bundle=str(PRETRAIN_BUNDLE),
        image_size=args.image_size, depth=args.depth, probe_fractions=tuple(args.fractions),
        probe_seeds=tuple(args.seeds), finetune_fractions=tuple(args.ft_fractions), finetune_seeds=tuple(args.ft_seeds),
        finetune_budget=StepBudget(args.ft_steps, args.ft_batch, args.ft_val_every), learning_rate=args.ft_lr,
        encoder_lr=args.ft_encoder_lr, precision=args.precision, threads=args.threads)


def describe_rows(args: argparse.Namespace, settings: ProtocolSettings) -> list:
    labels = dict(item.split("=", 1) for item in args.label)
    try:
        methods = method_assignments(args.method, METHODS_DIR)
    except ValueError as e:
        raise SystemExit(str(e)) from e
    presets = method_names(METHODS_DIR)
    rows = [reference_row(name, settings) for name in args.rows]
    for spec in args.checkpoints:
        name, _, path = spec.rpartition("=")
        name = name or Path(path).parent.parent.name or Path(path).stem
        method = methods.get(name, name if name in presets else "byol")
        try:
            rows += checkpoint_rows(name, path, method, settings, labels.get(name), args.descriptor, args.finetune)
        except FileNotFoundError as e:
            raise SystemExit(str(e)) from e
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    data_root = args.data_root or default_data_root()
    settings = settings_of(args)
    if not args.report_only:
        specs = [BENCHMARKS[b] for b in args.benchmarks]
        benchmark_data = cache(lambda spec: load_benchmark(spec, args.image_size, args.work_dir / "images", data_root))
        for row in describe_rows(args, settings):
            store = RowStore(args.work_dir / "rows", row)
            if store.discarded:
                print(f"[{row.name}] stored cells came from another checkpoint or budget: recomputing", flush=True)
            run_row(row, specs, store, settings, args.work_dir, data_root, CLASSIFICATION_BUNDLE, benchmark_data,
                    log=lambda text: print(text, flush=True))
    write_label_efficiency_report(args.work_dir / "rows", args.results, settings)
    print(f"wrote {args.results}.json / .md / .png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
