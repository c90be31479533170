"""Loss and codebook curves of the pretraining runs, from their metrics.jsonl logs.

Reads ``runs/pretrain/<run>/logs/metrics.jsonl`` (written by ``dissect_monai.engines.SSLMetricsLogger``) and
``runs/pretrain/<run>/run.json`` (written by ``scripts/run_pretraining.py``) and writes

    results/pretraining.json         per run: config, epochs done / planned, wall time, per-epoch figures
    results/pretraining.md           the same as tables
    results/pretraining_curves.png   loss terms per iteration (both runs) and codebook perplexity / usage per scale

Usage: ``.venv/bin/python scripts/pretrain_curves.py [--runs dissect_64 byol_64]``. Safe to run while the
runs are going on (it reads what has been logged so far; a resumed run's repeated iterations keep the last).
"""

from __future__ import annotations

import argparse
import json
import statistics
from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LOSS_TERMS = ("loss", "continuous_loss", "discrete_loss", "commitment_loss", "consistency_loss")


def read_metrics(path: Path) -> tuple[list[dict], list[dict]]:
    """Iteration and epoch records, one per iteration/epoch (the last written wins after a resume)."""
    iterations: dict[int, dict] = {}
    epochs: dict[int, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            (iterations if record["kind"] == "iteration" else epochs)[record["iteration"]] = record
    return [iterations[k] for k in sorted(iterations)], [epochs[k] for k in sorted(epochs)]


def engine_end(log: Path) -> datetime | None:
    """Time stamp of Ignite's last "Engine run finished/complete" line in a run's console log."""
    end = None
    if log.is_file():
        for line in log.read_text(errors="replace").splitlines():
            if "Engine run finished" in line or "Engine run complete" in line:
                end = datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
    return end


def summarise(run_dir: Path) -> dict:
    iterations, epochs = read_metrics(run_dir / "logs" / "metrics.jsonl")
    info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
    end = engine_end(run_dir / "train.log")
    wall = round((end - datetime.fromisoformat(info["started"])).total_seconds()) if end and "started" in info else None
    epoch_rows = []
    for e in epochs:
        row = {"epoch": e["epoch"], "iteration": e["iteration"], "epoch_time_s": round(e["epoch_time_s"], 1)}
        row.update({k: round(e[k], 4) for k in LOSS_TERMS if k in e})
        row.update({k.split("/", 1)[1]: round(v, 3) for k, v in e.items() if k.startswith("codebook/")})
        epoch_rows.append(row)
    return {
        "run": run_dir.name,
        "epochs_planned": info.get("epochs"),
        "epochs_done": len(epochs),
        "iterations_done": iterations[-1]["iteration"] if iterations else 0,
        "finished": info["returncode"] == 0 if "returncode" in info else end is not None,
        "wall_time_s": wall,  # launch (run.json) to the end of training (train.log): data caching included
        "training_time_s": round(sum(e["epoch_time_s"] for e in epochs), 1),
        "median_images_per_s": round(statistics.median(r["images_per_s"] for r in iterations), 1)
        if iterations else None,
        "threads": info.get("threads"),
        "command": info.get("command"),
        "final_model": str((run_dir / "model.pt").relative_to(REPO)) if (run_dir / "model.pt").is_file() else None,
        "epochs": epoch_rows,
        "_iterations": iterations,
    }


def plot(summaries: list[dict], out: Path) -> None:
    dissect = [s for s in summaries if any(k.startswith("codebook/") for it in s["_iterations"][:1] for k in it)]
    scales = sorted({k[len("codebook/"):-len("_perplexity")] for s in dissect for k in s["_iterations"][0]
                     if k.startswith("codebook/") and k.endswith("_perplexity")})
    ncols = 3 if scales else 1
    fig, axes = plt.subplots(1, ncols, figsize=(5 * ncols, 4), squeeze=False)
    ax = axes[0][0]
    for s in summaries:
        its = s["_iterations"]
        for term in LOSS_TERMS:
            if its and term in its[0]:
                style = "-" if term == "loss" else "--"
                ax.plot([r["iteration"] for r in its], [r[term] for r in its], style, label=f"{s['run']} {term}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title("SSL loss terms")
    ax.legend(fontsize=7)
    for col, stat in enumerate(("perplexity", "usage"), start=1):
        if col >= ncols:
            break
        ax = axes[0][col]
        for s in dissect:
            its = s["_iterations"]
            for scale in scales:
                key = f"codebook/{scale}_{stat}"
                ax.plot([r["iteration"] for r in its], [r[key] for r in its], label=f"{s['run']} {scale}")
        ax.set_xlabel("iteration")
        ax.set_title(f"codebook {stat} per scale (last batch)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def markdown(summaries: list[dict]) -> str:
    lines = ["# Pretraining runs (DiSSECT vs BYOL, ResNet-18, 64 px, pretraining pool)", ""]
    lines.append("Generated by `scripts/pretrain_curves.py` from `runs/pretrain/<run>/logs/metrics.jsonl`.")
    lines.append("")
    lines.append("| run | epochs done / planned | iterations | finished | training time (s) | wall time (s) "
                 "| threads | images/s (median) |")
    lines.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for s in summaries:
        lines.append(
            f"| {s['run']} | {s['epochs_done']} / {s['epochs_planned']} | {s['iterations_done']} | {s['finished']} | "
            f"{s['training_time_s']} | {s['wall_time_s']} | {s['threads']} | {s['median_images_per_s']} |"
        )
    for s in summaries:
        if not s["epochs"]:
            continue
        keys = [k for k in s["epochs"][0] if k not in ("epoch", "iteration")]
        title = f"## {s['run']} per epoch (means over the epoch; codebook figures of the epoch's last batch)"
        lines += ["", title, ""]
        lines.append("| epoch | " + " | ".join(keys) + " |")
        lines.append("| --- " * (len(keys) + 1) + "|")
        for row in s["epochs"]:
            lines.append(f"| {row['epoch']} | " + " | ".join(str(row.get(k, "")) for k in keys) + " |")
    lines += ["", "Command of each run:", ""]
    lines += [f"- {s['run']}: `{s['command']}`" for s in summaries if s["command"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=["dissect_64", "byol_64"])
    parser.add_argument("--runs_dir", type=Path, default=REPO / "runs" / "pretrain")
    parser.add_argument("--out_dir", type=Path, default=REPO / "results")
    args = parser.parse_args()
    summaries = [summarise(args.runs_dir / name) for name in args.runs if (args.runs_dir / name).is_dir()]
    if not summaries:
        raise SystemExit(f"no runs found under {args.runs_dir}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    plot(summaries, args.out_dir / "pretraining_curves.png")
    (args.out_dir / "pretraining.md").write_text(markdown(summaries))
    public = [{k: v for k, v in s.items() if not k.startswith("_")} for s in summaries]
    (args.out_dir / "pretraining.json").write_text(json.dumps(public, indent=2) + "\n")
    print(f"wrote {args.out_dir / 'pretraining.json'}, .md and _curves.png")


if __name__ == "__main__":
    main()
