"""Every SSL method at the same pretraining budget: pretrain, evaluate representations and segmentation, report.

Stages (each resumable: finished work is skipped, interrupted work resumes):

1. ``pretrain``: every method preset of ``configs/methods`` (``dissect_monai.networks.presets.method_names``)
   through the pretraining bundle with the same image size, epochs, batch, optimiser schedule and views (the
   bundle's), one run after the other, into ``runs/compare/<method>_<size>px_<epochs>ep/`` (``model.pt``,
   ``checkpoint.pt``, ``run.json`` with wall time; ``dissect_monai.evaluation.launch``).
2. ``representations``: ``scripts/evaluate_representations.py`` (frozen linear probe at 1/5/10/100 % of the
   labels x 5 seeds, kNN, NIH view shortcut probe; plus the raw / random-init / supervised reference rows, the
   last fine-tuned through the classification bundle) on every finished checkpoint, each with the encoder its
   method pretrains (``dissect_monai.networks.presets``).
3. ``segmentation``: ``scripts/evaluate_segmentation.py`` (lung-seg Dice, frozen and fine-tuned encoder, 10 %
   of train) on the same checkpoints plus a random-init ResNet-18; a ViT's U-Net decodes its token maps at three
   depths.
4. ``report``: ``results/comparison.{md,json,png}`` (``dissect_monai.evaluation.reports.write_method_comparison``):
   a row per method (plus random init and supervised), AUC at each label fraction on both benchmarks, kNN,
   shortcut-probe AUC, lung Dice at 10 %, pretraining wall time and the budget; and the label-efficiency plot of
   all methods.

    .venv/bin/python scripts/compare_methods.py --plan                 # budget estimate, runs nothing
    nohup .venv/bin/python scripts/compare_methods.py --epochs 3 --threads 1 > runs/compare/compare.log 2>&1 &
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from dissect_monai.evaluation import read_json
from dissect_monai.evaluation.launch import RecordedRun, bundle_command, run_finished
from dissect_monai.evaluation.reports import write_method_comparison
from dissect_monai.networks.presets import method_names

from repo_paths import METHODS_DIR, REPO, RESULTS, RUNS
from repo_paths import PRETRAIN_BUNDLE as BUNDLE


def epochs_of(args: argparse.Namespace, method: str) -> int:
    """The method's pretraining epochs: the common budget, or its reduced budget from ``--reduced-epochs``."""
    return args.reduced_epochs.get(method, args.epochs)


def run_dir(args: argparse.Namespace, method: str) -> Path:
    return args.work_dir / f"{method}_{args.image_size}px_{epochs_of(args, method)}ep"


def pretrain(method: str, args: argparse.Namespace) -> None:
    out, epochs = run_dir(args, method), epochs_of(args, method)
    command = bundle_command(
        BUNDLE, [BUNDLE / "configs" / "train.yaml", METHODS_DIR / f"{method}.yaml"], output_dir=out,
        log_dir=out / "logs", image_size=args.image_size, epochs=epochs, warmup_epochs=args.warmup_epochs,
        batch_size=args.batch_size, num_threads=args.threads, seed=args.seed, progress_bar=False)
    record = {"method": method, "image_size": args.image_size, "epochs": epochs, "batch_size": args.batch_size,
              "threads": args.threads}
    run = RecordedRun.start(out, command, record, threads=args.threads, cwd=REPO)
    if run is None:
        print(f"[pretrain] {method}: finished earlier, skipped", flush=True)
        return
    print(f"[pretrain] {method}: {'resuming' if run.record['resumed'] else 'starting'} ({out})", flush=True)
    if run.wait() != 0:
        print(f"[pretrain] {method}: FAILED (exit {run.process.returncode}), see {out / 'train.log'}", flush=True)


def evaluate(stage: str, args: argparse.Namespace) -> None:
    checkpoints = {m: run_dir(args, m) / "model.pt" for m in args.methods if run_finished(run_dir(args, m))}
    common = ["--image-size", str(args.image_size), "--threads", str(args.threads)]
    if stage == "representations":
        cmd = [sys.executable, str(REPO / "scripts" / "evaluate_representations.py"),
               *[f"{m}={p}" for m, p in checkpoints.items()], *common,
               "--ft-steps", str(args.ft_steps), "--ft-batch", str(args.ft_batch),
               "--work-dir", str(args.work_dir / "representations"),
               "--results", str(args.results_dir / "representations")]
    else:
        cmd = [sys.executable, str(REPO / "scripts" / "evaluate_segmentation.py"), "--encoder", "random",
               *[x for m, p in checkpoints.items() for x in ("--encoder", f"{m}={p}")], *common,
               "--fractions", "0.1", "--seeds", *map(str, args.seg_seeds), "--ct-epochs", "0",
               "--work-dir", str(args.work_dir / "segmentation"),
               "--results", str(args.results_dir / "segmentation")]
    print(f"[{stage}] {' '.join(cmd)}", flush=True)
    code = subprocess.call(cmd, cwd=REPO)
    if code != 0:
        print(f"[{stage}] FAILED (exit {code})", flush=True)


def report(args: argparse.Namespace) -> dict:
    rep_file = (args.results_dir / "representations").with_suffix(".json")
    seg_file = (args.results_dir / "segmentation").with_suffix(".json")
    methods = {}
    for name in args.methods:
        record_file = run_dir(args, name) / "run.json"
        record = read_json(record_file) if record_file.is_file() else {}
        notes = ([f"reduced budget: {epochs_of(args, name)} epoch(s)"] if name in args.reduced_epochs else []) + (
            ["pretraining failed, see its train.log"] if record.get("returncode") not in (None, 0) else [])
        methods[name] = {"pretrained": run_finished(run_dir(args, name)), "wall_seconds": record.get("wall_seconds"),
                         "note": "; ".join(notes)}
    budget = {"image_size": args.image_size, "epochs": args.epochs, "batch_size": args.batch_size,
              "threads_per_run": args.threads, "views": "the pretraining bundle's two views for all "
              "(DINO adds its 4 local crops, MAE / I-JEPA their masks)",
              "supervised": f"fine-tuned from scratch through the classification bundle, {args.ft_steps} steps x "
                            f"{args.ft_batch}",
              "backbones": "ResNet-18 (ResNet methods), ViT patch 8 width 192 x 6 blocks (ViT methods)"}
    return write_method_comparison(
        methods, read_json(rep_file)["summary"] if rep_file.is_file() else {},
        read_json(seg_file).get("lung", {}) if seg_file.is_file() else {}, budget,
        args.results_dir.parent / "comparison", seg_seeds=len(args.seg_seeds))


def plan(args: argparse.Namespace) -> None:
    """Print the budget estimate from measured 1-epoch wall times of ``runs/pretrain/<method>_64`` where present."""
    total = 0.0
    print(f"budget: {len(args.methods)} methods x {args.epochs} epoch(s) at {args.image_size} px, batch "
          f"{args.batch_size}, {args.threads} thread(s), one run at a time")
    for m in args.methods:
        record_file = RUNS / "pretrain" / f"{m}_64" / "run.json"
        measured = read_json(record_file) if record_file.is_file() else {}
        if measured.get("wall_seconds"):
            estimate = measured["wall_seconds"] / float(measured.get("epochs") or 1) * (args.image_size / 64) ** 2
            total += estimate * epochs_of(args, m)
            print(f"  {m}: ~{estimate * epochs_of(args, m) / 3600:.1f} h (measured {estimate:.0f} s/epoch)")
        else:
            print(f"  {m}: no measured epoch time")
    print(f"pretraining total (measured methods): ~{total / 3600:.1f} h, then the evaluations")


def main(argv: list[str] | None = None) -> int:
    methods = method_names(METHODS_DIR)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=methods, choices=methods)
    ap.add_argument("--stages", nargs="+", default=["pretrain", "representations", "segmentation", "report"],
                    choices=["pretrain", "representations", "segmentation", "report"])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--reduced-epochs", nargs="*", default=[], metavar="METHOD=EPOCHS",
                    help="methods run at a smaller budget than --epochs (stated in the table), e.g. mlvicx=1")
    ap.add_argument("--warmup-epochs", type=float, default=1.0)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seg-seeds", type=int, nargs="+", default=[0], help="seeds of the lung segmentation runs")
    ap.add_argument("--ft-steps", type=int, default=300, help="supervised reference row: optimiser steps per cell")
    ap.add_argument("--ft-batch", type=int, default=32, help="supervised reference row: batch size")
    ap.add_argument("--work-dir", type=Path, default=RUNS / "compare")
    ap.add_argument("--results-dir", type=Path, default=RESULTS / "compare")
    ap.add_argument("--plan", action="store_true", help="print the budget estimate and exit")
    args = ap.parse_args(argv)
    args.reduced_epochs = {m: int(e) for m, e in (item.split("=", 1) for item in args.reduced_epochs)}
    unknown = sorted(set(args.reduced_epochs) - set(methods))
    if unknown:
        ap.error(f"--reduced-epochs names unknown methods {unknown}; choose from {methods}")
    if args.plan:
        plan(args)
        return 0
    if "pretrain" in args.stages:
        for method in args.methods:
            pretrain(method, args)
    for stage in ("representations", "segmentation"):
        if stage in args.stages:
            evaluate(stage, args)
    if "report" in args.stages:
        report(args)
        print((args.results_dir.parent / "comparison.md").read_text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
