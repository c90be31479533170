"""Recreate or resume the project's pretraining runs (DiSSECT and the BYOL baseline) with the bundle.

Each run is ``python -m monai.bundle run`` of ``bundles/dissect_cxr_pretrain/configs/train.yaml`` with
overrides, writing to ``runs/pretrain/<name>/``:

    checkpoint.pt   resumable training checkpoint (model incl. target + codebooks, optimizer, scheduler, iteration)
    model.pt        final inference network (the embedder) state dict: the file the transfer stages load
    logs/           TensorBoard events + metrics.jsonl (curves: scripts/pretrain_curves.py)
    train.log       console output of the run
    run.json        the command, start/end time, wall time, exit code

A finished run (``model.pt`` present and ``run.json`` saying it completed) is skipped; an interrupted one
resumes from its ``checkpoint.pt``. Runs go one after the other, or in parallel with ``--parallel``
(use ``--threads 1`` then: one core each).

    nohup .venv/bin/python scripts/run_pretraining.py --epochs 30 --parallel --threads 1 \
        > runs/pretrain/launcher.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "dissect_cxr_pretrain"
RUNS = {
    "dissect_64": {"quantizer": True, "image_size": 64},
    "byol_64": {"quantizer": False, "image_size": 64},
    "dissect_128": {"quantizer": True, "image_size": 128},
    "byol_128": {"quantizer": False, "image_size": 128},
}


def command(name: str, out_dir: Path, args: argparse.Namespace) -> list[str]:
    spec = RUNS[name]
    cmd = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", str(BUNDLE / "configs" / "train.yaml"),
        "--meta_file", str(BUNDLE / "configs" / "metadata.json"),
        "--logging_file", str(BUNDLE / "configs" / "logging.conf"),
        "--bundle_root", str(BUNDLE),
        "--output_dir", str(out_dir),
        "--log_dir", str(out_dir / "logs"),
        "--image_size", str(spec["image_size"]),
        "--quantizer", str(spec["quantizer"]),
        "--epochs", str(args.epochs),
        "--warmup_epochs", str(args.warmup_epochs),
        "--batch_size", str(args.batch_size),
        "--num_threads", str(args.threads),
        "--seed", str(args.seed),
        "--progress_bar", "False",
    ]
    if args.save_interval:
        cmd += ["--save_interval", str(args.save_interval)]
    if args.dataset_dir:
        cmd += ["--dataset_dir", str(Path(args.dataset_dir).resolve())]
    return cmd


def start(name: str, args: argparse.Namespace) -> tuple[subprocess.Popen, dict, Path] | None:
    out_dir = Path(args.runs_dir) / name
    out_dir.mkdir(parents=True, exist_ok=True)
    record_file = out_dir / "run.json"
    if (out_dir / "model.pt").is_file() and record_file.is_file():
        if json.loads(record_file.read_text()).get("returncode") == 0:
            print(f"{name}: finished earlier ({out_dir / 'model.pt'}), skipped", flush=True)
            return None
    cmd = command(name, out_dir, args)
    record = {
        "name": name,
        "command": " ".join(cmd),
        "epochs": args.epochs,
        "warmup_epochs": args.warmup_epochs,
        "threads": args.threads,
        "resumed": (out_dir / "checkpoint.pt").is_file(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    record_file.write_text(json.dumps(record, indent=2) + "\n")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1")
    log = open(out_dir / "train.log", "a", encoding="utf-8")
    print(f"{name}: {'resuming' if record['resumed'] else 'starting'}, log {out_dir / 'train.log'}", flush=True)
    record["_t0"] = time.time()
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), record, record_file


def finish(proc: subprocess.Popen, record: dict, record_file: Path) -> int:
    code = proc.wait()
    record["wall_time_s"] = round(time.time() - record.pop("_t0"), 1)
    record["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record["returncode"] = code
    record_file.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{record['name']}: exit {code} after {record['wall_time_s']} s", flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=["dissect_64", "byol_64"], choices=sorted(RUNS))
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--warmup_epochs", type=float, default=1.0)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save_interval", type=int, default=0, help="iterations; default: one epoch")
    parser.add_argument("--dataset_dir", default=None, help="default: $DISSECT_DATA_DIR or ../shared/data")
    parser.add_argument("--parallel", action="store_true", help="run all at once (with --threads 1)")
    parser.add_argument("--runs_dir", type=Path, default=REPO / "runs" / "pretrain")
    args = parser.parse_args(argv)
    codes = []
    if args.parallel:
        running = [s for s in (start(name, args) for name in args.runs) if s is not None]
        while running:  # record each run's end as it happens (its wall time must not wait for the others)
            done = [s for s in running if s[0].poll() is not None]
            codes += [finish(*s) for s in done]
            running = [s for s in running if s not in done]
            time.sleep(1)
    else:
        for name in args.runs:
            s = start(name, args)
            if s is not None:
                codes.append(finish(*s))
    return max(codes, default=0)


if __name__ == "__main__":
    sys.exit(main())
