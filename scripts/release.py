#!/usr/bin/env python
"""The release run: from the pretraining pool to shipped bundle weights, in one resumable command.

Stages (:mod:`dissect_monai.evaluation.release`, every one through the bundles' own configs):

1. ``pretrain``        DiSSECT and BYOL (quantizer off), ResNet-18, 64 px, the same ``--epochs`` (default 120:
                       about 2.5 h of DiSSECT on the idle 2-core machine); ``--method`` starts one of them
2. ``classification``  Kermany and NIH pneumonia: linear probe 1 / 5 / 10 / 100 % (5 label samples below 100 %),
                       fine-tune 10 % (3 samples) and 100 %; DiSSECT, BYOL, random-init and supervised rows; per-view
                       AUC and the NIH view-shortcut probe
3. ``segmentation``    lung segmentation at 256 px, frozen and fine-tuned, 10 % and 100 %; DiSSECT, BYOL, random init
4. ``export``          fp16 ``models/model.pt`` + ``large_files.yml`` + measured ``eval_metrics`` for
                       dissect_cxr_pretrain, dissect_cxr_classification and dissect_cxr_lung_segmentation

State lives in ``--run-dir`` (default ``~/.cache/dissect-monai/release``); a rerun skips every finished run and
cell. Stop a run with SIGINT or SIGTERM (``pkill -INT -f scripts/release.py``): the stage records its time so
far. After each stage ``results/release.{json,md}`` is rewritten, never from a run folder that lacks runs the
committed ``release.json`` records (a new machine: ``--plan`` says so; ``--performance-from-record`` still refreshes
the bundles' Performance sections from that record). TorchScript is rebuilt from a shipped ``model.pt`` by
``python -m monai.bundle ckpt_export`` (:mod:`dissect_monai.engines.export`).

    python scripts/release.py --plan
    nohup python scripts/release.py --stage pretrain --method dissect > ~/.cache/dissect-monai/release.log 2>&1 &
    nohup python scripts/release.py > ~/.cache/dissect-monai/release.log 2>&1 &
    python scripts/release.py --stage segmentation
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections import Counter
from pathlib import Path

import torch

from dissect_monai.evaluation.bundle_runs import StepBudget
from dissect_monai.evaluation.release import (
    DEFAULT_RUN_DIR,
    PRETRAIN_METHODS,
    STAGES,
    ReleaseSettings,
    collect_release,
    export_sources,
    plan,
    read_release_record,
    require_recorded_runs,
    run_stage,
    runs_missing_from_run_folder,
    write_performance_sections,
    write_release_report,
)

from repo_paths import REPO, RESULTS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--plan", action="store_true", help="print the stages, what is finished and the time left; run none")
    p.add_argument("--stage", choices=STAGES, help="run this stage only (default: every stage in order)")
    p.add_argument("--report-only", action="store_true", help="only rewrite results/release.* from the run folder")
    p.add_argument("--performance-from-record", action="store_true",
                   help="only rewrite the shipped bundles' README Performance sections from the committed "
                        "results/release.json (for a machine whose run folder no longer holds the runs)")
    p.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR)
    p.add_argument("--data-root", type=Path, default=None, help="default: $DISSECT_DATA_DIR (default_data_root)")
    p.add_argument("--results", type=Path, default=RESULTS, help="folder of release.{json,md}")
    p.add_argument("--epochs", type=int, default=ReleaseSettings.epochs,
                   help="pretraining epochs of both DiSSECT and BYOL")
    p.add_argument("--method", choices=list(PRETRAIN_METHODS), action="append", dest="methods",
                   help="pretraining run(s) the pretrain stage starts (repeatable; default: all of them)")
    p.add_argument("--batch-size", type=int, default=64, help="pretraining batch")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ft-steps", type=int, default=300, help="optimiser steps per fine-tune cell")
    p.add_argument("--seg-steps", type=int, default=300, help="optimiser steps per lung run")
    p.add_argument("--seg-seeds", type=int, nargs="+", default=[0, 1, 2])
    return p.parse_args(argv)


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def install_stop_signals() -> None:
    """SIGINT and SIGTERM end the run through an exception, so the stage in progress records its wall time in
    ``stages.json`` (``run_stage``'s ``finally``); SIGINT also when a shell started the run in the background
    (``nohup ... &`` ignores it)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _stop)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    install_stop_signals()
    if args.epochs < 1:
        raise SystemExit("--epochs must be at least 1")
    settings = ReleaseSettings(
        repo=REPO, run_dir=args.run_dir.expanduser().resolve(), data_root=args.data_root, epochs=args.epochs,
        batch_size=args.batch_size, threads=args.threads,
        finetune_budget=StepBudget(args.ft_steps, 32, 50), segmentation_budget=StepBudget(args.seg_steps, 16, 50),
        segmentation_seeds=tuple(args.seg_seeds), pretrain_methods=tuple(args.methods or PRETRAIN_METHODS))
    if args.plan:
        print(plan(settings))
        missing = runs_missing_from_run_folder(args.results, collect_release(settings))
        if missing:
            kinds = Counter(name.split("/", 1)[0] for name in missing)
            print(f"{args.results / 'release.json'} records finished runs this run folder lacks ("
                  + ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
                  + "): the report will not be rewritten from it; resuming here retrains them")
        return 0
    if args.performance_from_record:
        write_performance_sections(settings, read_release_record(settings, args.results / "release.json"))
        print(f"rewrote the Performance sections of {', '.join(export_sources(settings))}", file=sys.stderr)
        return 0
    torch.set_num_threads(args.threads)
    try:  # before any stage runs: its report could not be written
        require_recorded_runs(settings, args.results)
    except RuntimeError as error:
        raise SystemExit(str(error)) from None
    if not args.report_only:
        for stage in [args.stage] if args.stage else STAGES:
            print(f"[release] stage {stage}", flush=True)
            run_stage(stage, settings, log=lambda text: print(text, flush=True))
            write_release_report(settings, args.results)
    write_release_report(settings, args.results)
    print(f"wrote {args.results / 'release.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
