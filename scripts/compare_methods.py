"""Every SSL method at the same pretraining budget: pretrain, evaluate representations and segmentation, report.

Stages (each resumable: finished work is skipped, interrupted work resumes):

1. ``pretrain``: every method preset of ``configs/methods`` through the pretraining bundle with the same image
   size, epochs, batch, optimiser schedule and views (the bundle's), one run after the other, into
   ``runs/compare/<method>_<size>px_<epochs>ep/`` (``model.pt``, ``checkpoint.pt``, ``run.json`` with wall time).
2. ``representations``: ``scripts/evaluate_representations.py`` (frozen linear probe at 1/5/10/100 % of the
   labels x 5 seeds, kNN, NIH view shortcut probe; plus the raw / random-init / supervised reference rows) on
   every finished checkpoint, each with the encoder its method pretrains (``dissect_monai.networks.presets``).
3. ``segmentation``: ``scripts/evaluate_segmentation.py`` (lung-seg Dice, frozen and fine-tuned encoder, 10 %
   of train) on the same checkpoints plus a random-init ResNet-18; a ViT's U-Net decodes its token maps at three
   depths.
4. ``report``: ``results/comparison.{md,json,png}``: a row per method (plus random init and supervised), AUC at
   each label fraction on both benchmarks, kNN, shortcut-probe AUC, lung Dice at 10 %, pretraining wall time and
   the budget; and the label-efficiency plot of all methods.

    .venv/bin/python scripts/compare_methods.py --plan                 # budget estimate, runs nothing
    nohup .venv/bin/python scripts/compare_methods.py --epochs 3 --threads 1 > runs/compare/compare.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from dissect_monai.networks.presets import method_names

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "dissect_cxr_pretrain"
METHODS_DIR = REPO / "configs" / "methods"
#: the method presets of configs/methods
METHODS = tuple(method_names(METHODS_DIR))
FRACTIONS = ("0.01", "0.05", "0.1", "1")


def epochs_of(args: argparse.Namespace, method: str) -> int:
    """The method's pretraining epochs: the common budget, or its reduced budget from ``--reduced-epochs``."""
    return args.reduced_epochs.get(method, args.epochs)


def run_dir(args: argparse.Namespace, method: str) -> Path:
    return args.work_dir / f"{method}_{args.image_size}px_{epochs_of(args, method)}ep"


def finished(directory: Path) -> bool:
    record = directory / "run.json"
    return (directory / "model.pt").is_file() and record.is_file() and json.loads(record.read_text()).get(
        "returncode") == 0


def pretrain(method: str, args: argparse.Namespace) -> None:
    out = run_dir(args, method)
    if finished(out):
        print(f"[pretrain] {method}: finished earlier, skipped", flush=True)
        return
    out.mkdir(parents=True, exist_ok=True)
    configs = [str(BUNDLE / "configs" / "train.yaml"), str(METHODS_DIR / f"{method}.yaml")]
    epochs = epochs_of(args, method)
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps(configs),
        "--meta_file", str(BUNDLE / "configs" / "metadata.json"),
        "--logging_file", str(BUNDLE / "configs" / "logging.conf"), "--bundle_root", str(BUNDLE),
        "--output_dir", str(out), "--log_dir", str(out / "logs"), "--image_size", str(args.image_size),
        "--epochs", str(epochs), "--warmup_epochs", str(args.warmup_epochs), "--batch_size", str(args.batch_size),
        "--num_threads", str(args.threads), "--seed", str(args.seed), "--progress_bar", "False",
    ]
    previous = json.loads((out / "run.json").read_text()) if (out / "run.json").is_file() else {}
    record = {"method": method, "image_size": args.image_size, "epochs": epochs, "batch_size": args.batch_size,
              "threads": args.threads, "command": " ".join(cmd), "resumed": (out / "checkpoint.pt").is_file(),
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    print(f"[pretrain] {method}: {'resuming' if record['resumed'] else 'starting'} ({out})", flush=True)
    start = time.time()
    with open(out / "train.log", "a") as log:
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    record.update(returncode=code, wall_seconds=round(time.time() - start + previous.get("wall_seconds", 0.0), 1))
    (out / "run.json").write_text(json.dumps(record, indent=2))
    if code != 0:
        print(f"[pretrain] {method}: FAILED (exit {code}), see {out / 'train.log'}", flush=True)


def evaluable(args: argparse.Namespace) -> dict[str, Path]:
    return {m: run_dir(args, m) / "model.pt" for m in args.methods if finished(run_dir(args, m))}


def evaluate(stage: str, args: argparse.Namespace) -> None:
    checkpoints = evaluable(args)
    common = ["--image-size", str(args.image_size), "--threads", str(args.threads)]
    if stage == "representations":
        cmd = [sys.executable, str(REPO / "scripts" / "evaluate_representations.py"),
               *[f"{m}={p}" for m, p in checkpoints.items()], *common,
               "--ft-steps", str(args.ft_steps), "--ft-batch", str(args.ft_batch), "--ft-evaluations", "5",
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


def _seed_stats(values: list[float]) -> dict | None:
    """Mean, sample sd and count over seeds (None without values)."""
    if not values:
        return None
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "n": len(values)}


def _cell(entry: dict | None) -> str:
    if not entry or entry.get("n", 0) == 0 or entry.get("mean") is None:
        return "—"
    return f"{entry['mean']:.3f} ± {entry['std']:.3f}"


def report(args: argparse.Namespace) -> dict:
    rep_file = (args.results_dir / "representations").with_suffix(".json")
    seg_file = (args.results_dir / "segmentation").with_suffix(".json")
    reps = json.loads(rep_file.read_text())["summary"] if rep_file.is_file() else {}
    lung = json.loads(seg_file.read_text()).get("lung", {}) if seg_file.is_file() else {}
    dice: dict[tuple[str, str], list[float]] = {}
    for entry in lung.values():
        row = entry.get("row", {})
        if float(row.get("fraction", 0)) == 0.1 and entry.get("test_dice"):
            dice.setdefault((row["encoder"], row["mode"]), []).append(entry["test_dice"]["mean"])
    rows = []
    for name in ("random", "supervised", *args.methods):
        directory = run_dir(args, name) if name in METHODS else None
        record = json.loads((directory / "run.json").read_text()) if directory and (directory / "run.json").is_file() \
            else {}
        summary = reps.get(name, {})
        seg_name = "random init" if name == "random" else name
        row = {
            "name": name,
            "pretrained": finished(directory) if directory else None,
            "wall_seconds": record.get("wall_seconds"),
            "note": "; ".join(
                ([f"reduced budget: {epochs_of(args, name)} epoch(s)"] if name in args.reduced_epochs else [])
                + (["pretraining failed, see its train.log"] if record.get("returncode") not in (None, 0) else [])),
            "auc": {bench: {f: summary.get(bench, {}).get("fractions", {}).get(f, {}).get("test_auc")
                            for f in FRACTIONS} for bench in ("nih", "kermany")},
            "knn": {bench: summary.get(bench, {}).get("knn20_acc") for bench in ("nih", "kermany")},
            "shortcut_auc": summary.get("nih", {}).get("view_probe_auc"),
            "lung_dice_10": {mode: _seed_stats(dice.get((seg_name, mode), [])) for mode in ("frozen", "fine-tuned")},
        }
        rows.append(row)
    result = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "budget": {"image_size": args.image_size, "epochs": args.epochs, "batch_size": args.batch_size,
                         "threads_per_run": args.threads, "views": "the pretraining bundle's two views for all "
                         "(DINO adds its 4 local crops, MAE / I-JEPA their masks)",
                         "supervised": f"fine-tuned from scratch, {args.ft_steps} steps x {args.ft_batch}",
                         "backbones": "ResNet-18 (ResNet methods), ViT patch 8 width 192 x 6 blocks (ViT methods)"},
              "rows": rows}
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir.parent / "comparison.json").write_text(json.dumps(result, indent=2))
    (args.results_dir.parent / "comparison.md").write_text(markdown(result))
    plot(rows, args.results_dir.parent / "comparison.png")
    return result


def markdown(result: dict) -> str:
    b = result["budget"]
    lines = [
        "# SSL methods compared at the same budget",
        "",
        f"Budget per method: {b['epochs']} epoch(s) of the pretraining pool at {b['image_size']} px, batch "
        f"{b['batch_size']}, {b['threads_per_run']} CPU thread(s); {b['views']}; {b['backbones']}. "
        f"Supervised reference: {b['supervised']}.",
        "Made by `scripts/compare_methods.py` (resumable). Evaluation protocol: `results/compare/representations.md`",
        "and `results/compare/segmentation.md`. A dash means not run (yet) or not supported (see notes).",
        "AUC cells: mean ± sd over 5 label samples (the 100 % probe is deterministic); lung Dice: mean ± sd over seeds "
        "(n). NIH test has 206 images, so AUC differences under ~0.03 are noise; Kermany test has 624.",
        "",
        "| method | NIH AUC 1 % | 5 % | 10 % | 100 % | Kermany AUC 1 % | 5 % | 10 % | 100 % | kNN acc NIH "
        "| view shortcut AUC (lower = less shortcut) | lung Dice 10 % frozen | fine-tuned "
        "| pretraining wall time (s) | notes |",
        "| --- " * 15 + "|",
    ]
    for r in result["rows"]:
        aucs = [_cell(r["auc"][bench][f]) for bench in ("nih", "kermany") for f in FRACTIONS]
        knn = r["knn"]["nih"]
        cells = [r["name"], *aucs, "—" if knn is None else f"{knn:.3f}",
                 "—" if r["shortcut_auc"] is None else f"{r['shortcut_auc']:.3f}",
                 *[_cell(r["lung_dice_10"][m]) + (f" (n={r['lung_dice_10'][m]['n']})" if r["lung_dice_10"][m] else "")
                   for m in ("frozen", "fine-tuned")],
                 "—" if r["wall_seconds"] is None else f"{r['wall_seconds']:.0f}",
                 "; ".join(n for n in (r["note"], "not pretrained yet" if r["pretrained"] is False else "") if n)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, bench in zip(axes, ("nih", "kermany")):
        for i, r in enumerate(rows):  # one colour per row; the reference rows dashed
            points = [(float(f) * 100, r["auc"][bench][f]["mean"]) for f in FRACTIONS
                      if r["auc"][bench][f] and r["auc"][bench][f].get("mean") is not None]
            if points:
                ax.plot(*zip(*points), marker="o", label=r["name"], color=plt.cm.tab20(i % 20),
                        linestyle="--" if r["name"] in ("random", "supervised") else "-")
        ax.set_xscale("log")
        ax.set_xlabel("labelled fraction of train (%)")
        ax.set_ylabel("test ROC AUC (frozen linear probe)")
        ax.set_title(bench)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plan(args: argparse.Namespace) -> None:
    """Print the budget estimate from measured 1-epoch wall times of ``runs/pretrain/<method>_64`` where present."""
    total = 0.0
    print(f"budget: {len(args.methods)} methods x {args.epochs} epoch(s) at {args.image_size} px, batch "
          f"{args.batch_size}, {args.threads} thread(s), one run at a time")
    for m in args.methods:
        record = REPO / "runs" / "pretrain" / f"{m}_64" / "run.json"
        measured = json.loads(record.read_text()) if record.is_file() else {}
        seconds = measured.get("wall_seconds") or measured.get("wall_time_s")  # ours / run_pretraining.py's
        per_epoch = seconds / float(measured.get("epochs") or 1) if seconds else None
        if per_epoch is not None:
            scale = (args.image_size / 64) ** 2
            estimate = per_epoch * scale * epochs_of(args, m)
            total += estimate
            print(f"  {m}: ~{estimate / 3600:.1f} h (measured {per_epoch:.0f} s/epoch at 64 px on this machine)")
        else:
            print(f"  {m}: no measured epoch time")
    print(f"pretraining total (measured methods): ~{total / 3600:.1f} h, then the evaluations")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
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
    ap.add_argument("--ft-steps", type=int, default=150, help="supervised reference row: optimiser steps per cell")
    ap.add_argument("--ft-batch", type=int, default=32, help="supervised reference row: batch size")
    ap.add_argument("--work-dir", type=Path, default=REPO / "runs" / "compare")
    ap.add_argument("--results-dir", type=Path, default=REPO / "results" / "compare")
    ap.add_argument("--plan", action="store_true", help="print the budget estimate and exit")
    args = ap.parse_args(argv)
    args.reduced_epochs = {m: int(e) for m, e in (item.split("=", 1) for item in args.reduced_epochs)}
    unknown = sorted(set(args.reduced_epochs) - set(METHODS))
    if unknown:
        ap.error(f"--reduced-epochs names unknown methods {unknown}; choose from {list(METHODS)}")
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
        result = report(args)
        print(markdown(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
