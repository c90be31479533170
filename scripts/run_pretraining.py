"""Recreate or resume the project's pretraining runs (DiSSECT and the BYOL baseline) with the bundle.

Each run is ``python -m monai.bundle run`` of ``bundles/dissect_cxr_pretrain/configs/train.yaml`` with
overrides, writing to ``runs/pretrain/<name>/``:

    checkpoint.pt   resumable training checkpoint (model incl. target + codebooks, optimizer, scheduler, iteration)
    model.pt        final inference network (the embedder) state dict: the file the transfer stages load
    logs/           TensorBoard events + metrics.jsonl (curves: scripts/pretrain_curves.py)
    train.log       console output of the run
    run.json        the command, start/end time, wall time (summed over resumes), exit code

A finished run (``model.pt`` present and ``run.json`` saying it completed) is skipped; an interrupted one
resumes from its ``checkpoint.pt`` (``dissect_monai.evaluation.launch``). Runs go one after the other, or in
parallel with ``--parallel`` (use ``--threads 1`` then: one core each).

    nohup .venv/bin/python scripts/run_pretraining.py --epochs 30 --parallel --threads 1 \
        > runs/pretrain/launcher.log 2>&1 &
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dissect_monai.evaluation.launch import bundle_command, run_recorded

from repo_paths import PRETRAIN_BUNDLE as BUNDLE
from repo_paths import REPO
from repo_paths import RUNS as RUNS_DIR

RUNS = {
    "dissect_64": {"quantizer": True, "image_size": 64},
    "byol_64": {"quantizer": False, "image_size": 64},
    "dissect_128": {"quantizer": True, "image_size": 128},
    "byol_128": {"quantizer": False, "image_size": 128},
}


def command(name: str, out_dir: Path, args: argparse.Namespace) -> list[str]:
    spec = RUNS[name]
    overrides = {"output_dir": out_dir, "log_dir": out_dir / "logs", "image_size": spec["image_size"],
                 "quantizer": spec["quantizer"], "epochs": args.epochs, "warmup_epochs": args.warmup_epochs,
                 "batch_size": args.batch_size, "num_threads": args.threads, "seed": args.seed, "progress_bar": False}
    if args.save_interval:
        overrides["save_interval"] = args.save_interval
    if args.dataset_dir:
        overrides["dataset_dir"] = Path(args.dataset_dir).resolve()
    return bundle_command(BUNDLE, [BUNDLE / "configs" / "train.yaml"], **overrides)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=["dissect_64", "byol_64"], choices=sorted(RUNS))
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--warmup_epochs", type=float, default=1.0)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save_interval", type=int, default=0, help="iterations; default: one epoch")
    parser.add_argument("--dataset_dir", default=None, help="default: the bundle's ($DISSECT_DATA_DIR)")
    parser.add_argument("--parallel", action="store_true", help="run all at once (with --threads 1)")
    parser.add_argument("--runs_dir", type=Path, default=RUNS_DIR / "pretrain")
    args = parser.parse_args(argv)
    runs = [(args.runs_dir / name, command(name, args.runs_dir / name, args),
             {"name": name, "method": "dissect" if RUNS[name]["quantizer"] else "byol",
              "image_size": RUNS[name]["image_size"], "epochs": args.epochs, "warmup_epochs": args.warmup_epochs,
              "threads": args.threads}) for name in args.runs]
    codes = run_recorded(runs, threads=args.threads, parallel=args.parallel, cwd=REPO)
    for run_dir, code in codes.items():
        print(f"{Path(run_dir).name}: {'finished earlier, skipped' if code is None else f'exit {code}'}", flush=True)
    return max((c for c in codes.values() if c is not None), default=0)


if __name__ == "__main__":
    sys.exit(main())
