"""Loss and codebook curves of the pretraining runs, from their metrics.jsonl logs.

Reads ``runs/pretrain/<run>/logs/metrics.jsonl`` (written by ``dissect_monai.engines.SSLMetricsLogger``) and
``runs/pretrain/<run>/run.json`` (written by ``scripts/run_pretraining.py``) and writes, through
``dissect_monai.evaluation.pretraining``:

    results/pretraining.json         per run: config, epochs done / planned, wall time, per-epoch figures
    results/pretraining.md           the same as tables
    results/pretraining_curves.png   loss terms per iteration (both runs) and codebook perplexity / usage per scale

Usage: ``.venv/bin/python scripts/pretrain_curves.py [--runs dissect_64 byol_64]``. Safe to run while the
runs are going on (it reads what has been logged so far; a resumed run's repeated iterations keep the last).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dissect_monai.evaluation.pretraining import write_pretraining_report

from repo_paths import RESULTS, RUNS


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=["dissect_64", "byol_64"])
    parser.add_argument("--runs_dir", type=Path, default=RUNS / "pretrain")
    parser.add_argument("--out_dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    run_dirs = [args.runs_dir / name for name in args.runs if (args.runs_dir / name).is_dir()]
    if not run_dirs:
        raise SystemExit(f"no runs found under {args.runs_dir}")
    write_pretraining_report(run_dirs, args.out_dir)
    print(f"wrote {args.out_dir / 'pretraining.json'}, .md and _curves.png")


if __name__ == "__main__":
    main()
