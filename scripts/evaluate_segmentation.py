"""Segmentation transfer benchmark: lung-seg test Dice / HD95 per encoder and label fraction, and 3D Dice per organ.

Every run goes through the bundles themselves (``ConfigWorkflow`` on ``train.yaml`` then ``train.yaml`` +
``evaluate.yaml``), with ``ckpt_dir`` / ``output_dir`` under ``--work-dir`` (default ``runs/segmentation``). A run
whose ``result.json`` exists is reused, so the script resumes where it stopped and rows can be added later (e.g.
when a pretraining checkpoint appears). Writes ``results/segmentation.json`` and ``results/segmentation.md``.

An ``--encoder NAME=CHECKPOINT`` row uses the encoder its SSL method pretrains (``--method NAME=METHOD``; by default
the preset of ``configs/methods`` named like the row, else the bundle's ResNet-18): the bundle's U-Net decodes that
encoder's stage maps (five for the ResNet methods, the token maps at 1/3, 2/3 and full depth for a ViT).

2D protocol (fixed so rows compare): 64 px, feature-pyramid U-Net, the same optimiser, augmentations and
number of optimiser steps (``--steps``) for every row and fraction; validation Dice every ``--val-every`` epochs
picks the checkpoint; test = the 39 frontal lung-seg test images, Dice and HD95 (pixels of the 256 px image) on
the original grid.

    python scripts/evaluate_segmentation.py --encoder random \\
        --encoder dissect=runs/pretrain/dissect/models/model.pt --encoder byol=runs/pretrain/byol/models/model.pt
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigWorkflow

from dissect_monai.networks.presets import method_names

REPO = Path(__file__).resolve().parents[1]
LUNG = REPO / "bundles" / "dissect_cxr_lung_segmentation"
CT = REPO / "bundles" / "dissect_ct_segmentation"
METHODS_DIR = REPO / "configs" / "methods"
PRETRAIN = REPO / "bundles" / "dissect_cxr_pretrain"
FRONTAL = ("PA", "AP", "AP Supine")
CT_ORGANS = ("spleen", "kidney_right", "kidney_left", "liver")


def _workflow(bundle: Path, configs: list[str], initialize: bool = True, **override) -> ConfigWorkflow:
    wf = ConfigWorkflow(
        config_file=[str(bundle / "configs" / c) for c in configs],
        meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=str(bundle / "configs" / "logging.conf"),
        workflow_type="train",
        bundle_root=str(bundle),
        **override,
    )
    if initialize:
        wf.initialize()
    return wf


def _run(wf: ConfigWorkflow) -> None:
    wf.run()
    wf.finalize()


def _read_raw(path: Path) -> dict[str, list[float]]:
    """MetricsSaver ``*_raw.csv``: filename -> per-class values (NaN where undefined)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return {r[0]: [float(v) for v in r[1:-1]] for r in rows[1:]}


def _summary(values: list[float]) -> dict[str, float]:
    arr = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    return {"mean": float(arr.mean()), "std": float(arr.std()), "median": float(np.median(arr)), "n": int(arr.size)}


def method_encoder_config(method: str, image_size: int, checkpoint: str | None) -> dict:
    """Bundle config of ``method``'s pretrained encoder as a feature pyramid (for ``network_def#encoder``)."""
    return {"_target_": "dissect_monai.networks.presets.method_encoder", "method": method, "image_size": image_size,
            "methods_dir": str(METHODS_DIR), "bundle_root": str(PRETRAIN), "checkpoint": checkpoint}


def discard_stale_run(run_dir: Path, checkpoint: str | None) -> bool:
    """Delete ``run_dir`` if its finished result was trained from another encoder checkpoint (a new checkpoint under
    a row name used before); returns whether it did. Runs without a recorded row are kept."""
    result_file = run_dir / "result.json"
    if not result_file.is_file():
        return False
    row = json.loads(result_file.read_text()).get("row")
    if row is None or row.get("checkpoint") == checkpoint:
        return False
    shutil.rmtree(run_dir)
    return True


def train_and_test_lung(run_dir: Path, checkpoint: str | None, freeze: bool, fraction: float, seed: int,
                        steps: int, val_every_steps: int, batch_size: int, image_size: int,
                        method: str | None = None) -> dict:
    """One 2D run: train on ``fraction`` of the frontal train split for ``steps`` optimiser steps, test on test.

    ``method``: the SSL method preset whose encoder ``checkpoint`` holds (None: the bundle's ResNet-18).
    """
    result_file = run_dir / "result.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    common = {"ckpt_dir": str(run_dir / "models"), "output_dir": str(run_dir / "eval"), "seed": seed,
              "image_size": image_size, "batch_size": batch_size}
    if method:  # the test workflow loads the trained U-Net over this architecture, so it needs no checkpoint
        common["network_def#encoder"] = method_encoder_config(method, image_size, None)
    encoder = {"network_def#encoder": method_encoder_config(method, image_size, checkpoint)} if method else \
        {"encoder_checkpoint": checkpoint}
    wf = _workflow(LUNG, ["train.yaml"], initialize=False, label_fraction=fraction, freeze_encoder=freeze,
                   **{**common, **encoder})
    n_train = len(wf.parser.get_parsed_content("train#datalist"))
    iters_per_epoch = math.ceil(n_train / batch_size)
    epochs = max(1, math.ceil(steps / iters_per_epoch))
    wf.parser["epochs"] = epochs
    wf.parser["val_interval"] = min(epochs, max(1, round(val_every_steps / iters_per_epoch)))
    wf.initialize()
    start = time.time()
    _run(wf)
    train_seconds = time.time() - start
    best_val = float(wf.parser.get_parsed_content("validate#evaluator").state.best_metric)
    test = _workflow(LUNG, ["train.yaml", "evaluate.yaml"], **common)
    _run(test)
    dice = _read_raw(run_dir / "eval" / "test_mean_dice_raw.csv")
    hd95 = _read_raw(run_dir / "eval" / "test_hd95_raw.csv")
    result = {
        "n_train_images": n_train, "epochs": epochs, "steps": epochs * iters_per_epoch, "seed": seed,
        "train_seconds": round(train_seconds, 1), "best_val_dice": best_val,
        "test_dice": _summary([v[0] for v in dice.values()]), "test_hd95": _summary([v[0] for v in hd95.values()]),
        "per_image_dice": {Path(k).name: v[0] for k, v in dice.items()},
    }
    result_file.write_text(json.dumps(result, indent=2))
    return result


def train_and_test_ct(run_dir: Path, epochs: int, seed: int) -> dict:
    """3D run: train on example_ct_sm, Dice per organ on it (fit) and on the held-out DICOM series (test)."""
    result_file = run_dir / "result.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    common = {"ckpt_dir": str(run_dir / "models"), "seed": seed}
    wf = _workflow(CT, ["train.yaml"], epochs=epochs, val_interval=max(1, epochs // 5),
                   output_dir=str(run_dir / "eval_train"), **common)
    start = time.time()
    _run(wf)
    train_seconds = time.time() - start
    out = {}
    for name, extra in (("test_dicom_series", {}),
                        ("fit_training_volume", {"validate#datalist": "@train#datalist"})):
        eval_dir = run_dir / f"eval_{name}"
        _run(_workflow(CT, ["train.yaml", "evaluate.yaml"], output_dir=str(eval_dir), **common, **extra))
        values = next(iter(_read_raw(eval_dir / "test_mean_dice_raw.csv").values()))
        out[name] = {organ: (v if np.isfinite(v) else None) for organ, v in zip(CT_ORGANS, values)}
    result = {"epochs": epochs, "seed": seed, "train_seconds": round(train_seconds, 1), **out}
    result_file.write_text(json.dumps(result, indent=2))
    return result


def collect(work_dir: Path, missing: list[str]) -> dict:
    """Every finished run under ``work_dir`` (its ``result.json``), so separate invocations can fill one report."""
    lung, ct = {}, None
    for result_file in sorted(work_dir.glob("*/result.json")):
        r = json.loads(result_file.read_text())
        if "row" in r:
            lung[result_file.parent.name] = r
        elif result_file.parent.name.startswith("ct_"):
            ct = r
    return {"lung": lung, "ct": ct, "missing_encoders": missing}


def write_report(results: dict, out: Path) -> None:
    """``out``.json (all runs) and ``out``.md (tables)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    out_md = out.with_suffix(".md")
    budget_keys = ("steps", "batch_size", "image_size", "val_every_steps")
    budgets = {json.dumps({k: r["config"][k] for k in budget_keys}) for r in results["lung"].values()}
    if len(budgets) > 1:
        raise ValueError(f"runs under one work dir used different budgets: {sorted(budgets)}")
    cfg = json.loads(budgets.pop()) if budgets else {"image_size": 64, "batch_size": 16, "steps": 0}
    groups: dict[tuple, list[dict]] = {}
    for r in results["lung"].values():
        groups.setdefault((r["row"]["fraction"], r["row"]["encoder"], r["row"]["mode"]), []).append(r)
    lines = [
        "# Segmentation transfer",
        "",
        "Written by `scripts/evaluate_segmentation.py` (resumable; reruns reuse finished runs).",
        "",
        "## Lung segmentation (cxr-lung-seg, frontal images)",
        "",
        f"Budget: {cfg['image_size']} px, feature-pyramid U-Net on the row's encoder (ResNet-18, or the row's method's "
        f"encoder: MLVICX's pyramid, or a ViT's token maps at three depths), AdamW lr 1e-3, batch {cfg['batch_size']}, "
        f"{cfg['steps']} optimiser steps per run whatever the fraction (epochs = steps / batches per epoch), "
        "validation Dice on the 21 frontal val images picks the checkpoint. The label fraction is a patient-level "
        "subset of the 138 frontal train images, drawn with the run's seed (so seeds differ in images and init). "
        "Test: the 39 frontal test images; Dice and HD95 (pixels of the 256 px image, on the original grid after "
        "Invertd). `test Dice` = mean over seeds of each run's mean over test images, ± sd over seeds (n seeds); "
        "`image sd` = sd over test images (mean over seeds). The lung-seg lateral and CT-slice images have empty "
        "masks and are left out of every split.",
        "",
        "| train fraction | encoder | encoder weights | seeds | train images | steps | test Dice | image sd | "
        "test HD95 (px) | val Dice | train time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = {"random init": 0}
    for (fraction, encoder, mode), runs in sorted(groups.items(),
                                                  key=lambda kv: (kv[0][0], order.get(kv[0][1], 1), kv[0][1:])):
        dice = np.array([r["test_dice"]["mean"] for r in runs])
        spread = f" ± {dice.std(ddof=1):.3f}" if len(runs) > 1 else ""
        lines.append(
            f"| {fraction:.0%} | {encoder} | {mode} | {len(runs)} | "
            f"{'/'.join(sorted({str(r['n_train_images']) for r in runs}))} | {runs[0]['steps']} | "
            f"{dice.mean():.3f}{spread} | {np.mean([r['test_dice']['std'] for r in runs]):.3f} | "
            f"{np.mean([r['test_hd95']['mean'] for r in runs]):.1f} | "
            f"{np.mean([r['best_val_dice'] for r in runs]):.3f} | "
            f"{np.mean([r['train_seconds'] for r in runs]):.0f} |"
        )
    missing = results.get("missing_encoders", [])
    if missing:
        lines += ["", "Not run (no checkpoint given or found): " + ", ".join(missing) + "."]
    if results.get("ct"):
        ct = results["ct"]
        lines += [
            "",
            "## Abdominal CT organs (TotalSegmentator label maps)",
            "",
            f"Trained on example_ct_sm (3 mm, one labelled volume) for {ct['epochs']} epochs of 8 patches "
            f"64x64x32 ({ct['train_seconds']} s), random init. Test = the 20-slice CT DICOM series (a different "
            "scan; its label map has no kidneys, so kidney Dice there is undefined). Fit = the training volume. "
            "Label maps are TotalSegmentator predictions, not manual ground truth.",
            "",
            "| organ | test Dice (DICOM series) | fit Dice (training volume) |",
            "|---|---|---|",
        ]
        for organ in CT_ORGANS:
            t = ct["test_dicom_series"].get(organ)
            f = ct["fit_training_volume"].get(organ)
            lines.append(f"| {organ} | {'n/a' if t is None else f'{t:.3f}'} | {'n/a' if f is None else f'{f:.3f}'} |")
    out_md.write_text("\n".join(lines) + "\n")


def main() -> int:
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
    ap.add_argument("--work-dir", type=Path, default=REPO / "runs" / "segmentation")
    ap.add_argument("--results", type=Path, default=REPO / "results" / "segmentation")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    methods = dict(item.split("=", 1) for item in args.method)
    presets = method_names(METHODS_DIR)
    unknown = sorted(set(methods.values()) - set(presets))
    if unknown:
        ap.error(f"unknown method preset(s) {unknown}; choose from {presets}")
    rows = []
    missing = []
    for spec in [] if args.no_lung else (args.encoder or ["random"]):
        if spec == "random":
            rows.append({"encoder": "random init", "mode": "fine-tuned", "checkpoint": None, "freeze": False,
                         "method": None})
            continue
        name, _, path = spec.partition("=")
        if not path or not Path(path).is_file():
            missing.append(f"{name} ({path or 'no path'})")
            continue
        method = methods.get(name, name if name in presets else None)
        for freeze in (False, True):
            rows.append({"encoder": name, "mode": "frozen" if freeze else "fine-tuned", "checkpoint": path,
                         "freeze": freeze, "method": method})

    config = {"steps": args.steps, "batch_size": args.batch_size, "image_size": args.image_size,
              "seeds": args.seeds, "fractions": args.fractions, "val_every_steps": args.val_every_steps}
    for row in rows:
        for fraction in args.fractions:
            for seed in args.seeds:
                key = f"{row['encoder']}|{row['mode']}|{fraction}|{seed}".replace(" ", "_")
                run_dir = args.work_dir / key.replace("|", "_")
                if discard_stale_run(run_dir, row["checkpoint"]):
                    print(f"[segmentation] {key}: earlier result came from another checkpoint, rerun", flush=True)
                print(f"[segmentation] {key}", flush=True)
                r = train_and_test_lung(run_dir, row["checkpoint"], row["freeze"], fraction, seed, args.steps,
                                        args.val_every_steps, args.batch_size, args.image_size, row["method"])
                if "row" not in r:
                    r["row"] = {k: row[k] for k in ("encoder", "mode", "checkpoint", "method")} | {"fraction": fraction}
                    r["config"] = config
                    (run_dir / "result.json").write_text(json.dumps(r, indent=2))
                write_report(collect(args.work_dir, missing), args.results)
    if args.ct_epochs > 0:
        print("[segmentation] ct", flush=True)
        train_and_test_ct(args.work_dir / f"ct_e{args.ct_epochs}", args.ct_epochs, args.seeds[0])
    write_report(collect(args.work_dir, missing), args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
