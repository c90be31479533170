#!/usr/bin/env python
"""Label-efficiency evaluation of frozen representations on NIH pneumonia and Kermany pneumonia.

For every row (raw pixels, a frozen random-init ResNet-18, supervised-from-scratch, and each
``CHECKPOINT`` given) and each benchmark:

* the encoder of a checkpoint row is the one its SSL method pretrains, built from the pretraining bundle and the
  method preset (``--method NAME=METHOD``; by default the preset named like the row, else ``byol``'s plain
  ResNet-18 pyramid): ResNet-18, MLVICX's pyramid with context bottlenecks, or a ViT;

* frozen features of train / val / test (cached in ``runs/representations/features``);
* logistic regression (standardised features, C picked on the val split's ROC AUC) trained on 1 / 5 / 10 /
  100 % of train, sampled by patient, 5 seeds -> test ROC AUC (and per view on NIH, accuracy on Kermany);
* kNN (k=20, cosine) test accuracy with 100 % of train;
* shortcut probe on NIH: test ROC AUC of a logistic regression predicting the view (AP vs PA) from the
  same features (train 100 %, C on val).

The supervised row fine-tunes a randomly initialised ResNet-18 at each fraction and seed (fixed step budget,
best step on val AUC); with ``--finetune`` checkpoints get the same fine-tuning rows.

Each finished cell is stored at once in ``runs/representations/rows/<row>.json``; a rerun skips finished cells
(resumable, and several invocations may run side by side on different rows). At the end all rows found are
assembled into ``results/representations.{json,md,png}``.

Usage::

    python scripts/evaluate_representations.py                       # reference rows only
    python scripts/evaluate_representations.py dissect=runs/pretrain/dissect/models/model.pt byol=...
    python scripts/evaluate_representations.py mae-run=runs/compare/mae_64px_1ep/model.pt --method mae-run=mae
    python scripts/evaluate_representations.py --rows raw random --report-only
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dissect_monai.data import LABEL_FRACTIONS, dataset_datalist, sample_label_fraction
from dissect_monai.engines.evaluation import (
    extract_features,
    finetune_classifier,
    fit_logistic_probe,
    json_safe,
    knn_accuracy,
    roc_auc,
    roc_auc_by_group,
)
from dissect_monai.networks.classification import EncoderClassifier, QuantisedDescriptor
from dissect_monai.networks.presets import build_method_embedder, method_encoder, method_names
from dissect_monai.networks.quantizer import MultiScaleQuantizer
from dissect_monai.utils import prepare_module, resolve_precision

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS: dict[str, dict] = {
    "nih": {"dataset": "nih-cxr-pneumonia", "title": "NIH pneumonia (adults, test 206)", "group": "view"},
    "kermany": {
        "dataset": "kermany-pneumonia", "title": "Kermany pneumonia (children, official test 624)", "group": None
    },
}
REFERENCE_ROWS = ("raw", "random", "supervised")
ROW_LABELS = {
    "raw": "raw pixels (64x64)",
    "random": "random-init ResNet-18 (frozen)",
    "supervised": "supervised from scratch (fine-tuned ResNet-18)",
}
#: published PneumoniaMNIST (same official Kermany test split) figures, MedMNIST v2 (Yang et al., Sci Data 2023).
MEDMNIST_V2 = {"ResNet-18 (224 px)": {"auc": 0.956, "acc": 0.864}}
SEEDS = (0, 1, 2, 3, 4)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoints", nargs="*", metavar="[NAME=]CHECKPOINT",
                   help="pretraining checkpoints (bundle models/model.pt or training checkpoint)")
    p.add_argument("--rows", nargs="*", default=list(REFERENCE_ROWS), help=f"reference rows, of {REFERENCE_ROWS}")
    p.add_argument("--benchmarks", nargs="*", default=list(BENCHMARKS), choices=list(BENCHMARKS))
    p.add_argument("--fractions", nargs="*", type=float, default=list(LABEL_FRACTIONS))
    p.add_argument("--seeds", nargs="*", type=int, default=list(SEEDS))
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--depth", type=int, default=18, help="ResNet depth of the ResNet methods' encoders")
    p.add_argument("--data-root", default=None, help="folder with the datasets (default ../shared/data)")
    p.add_argument("--work-dir", default=str(REPO_ROOT / "runs" / "representations"))
    p.add_argument("--results", default=str(REPO_ROOT / "results" / "representations"),
                   help="output prefix: <prefix>.json, .md, .png")
    p.add_argument("--finetune", action="store_true", help="also fine-tune each checkpoint at each fraction")
    p.add_argument("--descriptor", action="store_true",
                   help="also probe [encoder feature, quantised descriptor] of checkpoints with a quantizer")
    p.add_argument("--method", action="append", default=[], metavar="NAME=METHOD",
                   help="method preset (configs/methods) whose encoder a checkpoint row holds; default: the preset "
                        "named like the row if there is one, else byol (plain ResNet-18 pyramid)")
    p.add_argument("--label", action="append", default=[], metavar="NAME=TEXT",
                   help="display label of a checkpoint row (e.g. 'dissect=DiSSECT (epoch 40, preliminary)')")
    p.add_argument("--ft-steps", type=int, default=30, help="fine-tune budget: optimizer steps per cell")
    p.add_argument("--ft-batch", type=int, default=16)
    p.add_argument("--ft-evaluations", type=int, default=1,
                   help="val AUC evaluations per fine-tune (best kept; 1 = the last step, no selection)")
    p.add_argument("--ft-seeds", nargs="*", type=int, default=[0, 1, 2],
                   help="seeds of fine-tuning rows (run seed by seed, so a partial run still gives whole seeds)")
    p.add_argument("--ft-lr", type=float, default=1e-3)
    p.add_argument("--ft-encoder-lr", type=float, default=None, help="encoder lr when fine-tuning a checkpoint")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--report-only", action="store_true", help="only assemble the report from finished rows")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------- data
def load_benchmark(bench: str, size: int, work_dir: Path, data_root: str | None) -> dict[str, np.ndarray]:
    """Decoded images ``(N, 1, size, size)`` float16 in [0, 1] + labels, patient ids, split, view; cached as npz.

    Images go through the project's loader (``load_image_transforms``, intensity "unit") and an area resize,
    the preprocessing of the pretraining bundle. Kermany keeps every official test image (624, the
    MedMNIST split) and drops the byte-identical copies within train / val.
    """
    cache = work_dir / "images" / f"{bench}_{size}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    from monai.transforms import Compose, Resized

    from dissect_monai.transforms import load_image_transforms

    name = BENCHMARKS[bench]["dataset"]
    items = dataset_datalist(name, ("train", "val"), data_root) + dataset_datalist(
        name, "test", data_root, drop_duplicates=False
    )
    load = Compose([*load_image_transforms("image"), Resized(keys="image", spatial_size=(size, size), mode="area")])
    images = np.stack([np.asarray(load({"image": it["image"]})["image"], dtype=np.float16) for it in items])
    data = {
        "images": images,
        "label": np.array([int(it["label"]) for it in items]),
        "patient_id": np.array([str(it["patient_id"]) for it in items]),
        "split": np.array([str(it["split"]) for it in items]),
        "view": np.array([str(it.get("view", "")) for it in items]),
        "image": np.array([Path(it["image"]).name for it in items]),
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, **data)
    os.replace(tmp, cache)
    return data


def split_indices(data: dict[str, np.ndarray], split: str) -> np.ndarray:
    return np.flatnonzero(data["split"] == split)


def fraction_indices(data: dict[str, np.ndarray], fraction: float, seed: int) -> np.ndarray:
    """Train indices of the data layer's patient-level label-fraction sample."""
    train = split_indices(data, "train")
    items = [{"index": int(i), "label": int(data["label"][i]), "patient_id": str(data["patient_id"][i])} for i in train]
    return np.array([it["index"] for it in sample_label_fraction(items, fraction, seed=seed)])


# ------------------------------------------------------------------------------------------- features
def row_encoder(row: dict, args: argparse.Namespace, seed: int = 0) -> torch.nn.Module:
    """The row's method encoder as a feature pyramid (random init drawn with ``seed``, or the checkpoint's weights)."""
    torch.manual_seed(seed)
    return method_encoder(row["method"], args.image_size, row.get("checkpoint"), overrides={"depth": args.depth})


def descriptor_classifier(row: dict, args: argparse.Namespace) -> EncoderClassifier:
    """A 1-output EncoderClassifier on the row's encoder + DiSSECT's quantised multi-scale descriptor (the
    pretraining bundle's default quantizer, C2..C4, 512 codes x 64), both loaded from the row's checkpoint."""
    encoder = row_encoder(row, args)
    quantizer = MultiScaleQuantizer([encoder.out_channels[s] for s in (1, 2, 3)], num_codes=512, code_dims=64)
    model = EncoderClassifier(encoder, num_classes=1, descriptor=QuantisedDescriptor(quantizer, scales=(1, 2, 3)))
    return model.load_pretrained(row["checkpoint"])


def file_fingerprint(path: str) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def row_features(
    row: dict, bench: str, data: dict[str, np.ndarray], args: argparse.Namespace
) -> tuple[np.ndarray, float]:
    """Features ``(N, D)`` of every image of ``bench`` for a frozen row, cached; and the seconds it took."""
    cache = Path(args.work_dir) / "features" / f"{row['name']}_{bench}_{args.image_size}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            if str(z["fingerprint"]) == row["fingerprint"]:
                return z["features"], float(z["seconds"])
    start = time.time()
    images = torch.as_tensor(data["images"]).float()
    if row["kind"] == "raw":
        features = images.flatten(1).numpy()
    elif row.get("descriptor"):
        model = prepare_module(descriptor_classifier(row, args), "cpu", args.precision).eval()
        features = extract_features(model.features, images, batch_size=128, precision=args.precision)
    else:  # the embedding the pretraining bundle ships: pooled deepest map, or the ViT's class / mean token
        torch.manual_seed(0)
        embedder = build_method_embedder(row["method"], args.image_size, row.get("checkpoint"), {"depth": args.depth})
        embedder = prepare_module(embedder, "cpu", args.precision).eval()
        with torch.no_grad():
            features = extract_features(embedder, images, batch_size=128, precision=args.precision)
    seconds = time.time() - start
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, features=features.astype(np.float32), fingerprint=row["fingerprint"], seconds=seconds)
    os.replace(tmp, cache)
    return features, seconds


# ---------------------------------------------------------------------------------------------- cells
def probe_cell(features: np.ndarray, data: dict, train_idx: np.ndarray, group: str | None) -> dict:
    """Logistic regression on ``features[train_idx]``, C on val, evaluated on test."""
    start = time.time()
    y = data["label"]
    val, test = split_indices(data, "val"), split_indices(data, "test")
    probe = fit_logistic_probe(features[train_idx], y[train_idx], features[val], y[val])
    scores = probe.predict_proba(features[test])
    cell = {
        "test_auc": roc_auc(y[test], scores),
        "test_acc": float(((scores >= 0.5) == y[test]).mean()),
        "val_auc": probe.val_auc,
        "C": probe.c,
        "n_train": int(len(train_idx)),
        "n_train_patients": int(len(set(data["patient_id"][train_idx].tolist()))),
    }
    if group:
        cell[f"test_auc_by_{group}"] = roc_auc_by_group(y[test], scores, data[group][test])
    cell["seconds"] = time.time() - start
    return cell


def finetune_cell(
    row: dict, data: dict, train_idx: np.ndarray, seed: int, group: str | None, args: argparse.Namespace
) -> dict:
    """Fine-tune the whole network (random init, or the row's checkpoint) on ``train_idx``; best step on val AUC."""
    start = time.time()
    images = torch.as_tensor(data["images"])
    y = torch.as_tensor(data["label"]).float()[:, None]
    val, test = split_indices(data, "val"), split_indices(data, "test")
    encoder = row_encoder(row, args, seed)
    model = prepare_module(EncoderClassifier(encoder, num_classes=1), "cpu", args.precision)
    steps = args.ft_steps
    encoder_lr = args.ft_encoder_lr if row.get("checkpoint") and args.ft_encoder_lr else args.ft_lr
    result = finetune_classifier(
        model, images[train_idx].float(), y[train_idx], images[val].float(), y[val], steps=steps,
        batch_size=args.ft_batch, lr=args.ft_lr, encoder_lr=encoder_lr, evaluations=args.ft_evaluations, seed=seed,
        precision=args.precision,
    )
    logits = extract_features(model, images[test].float(), precision=args.precision)[:, 0]
    scores = 1.0 / (1.0 + np.exp(-logits))
    yt = data["label"][test]
    cell = {
        "test_auc": roc_auc(yt, scores),
        "test_acc": float(((scores >= 0.5) == yt).mean()),
        "val_auc": result.best_val_auc,
        "best_step": result.best_step,
        "steps": steps,
        "n_train": int(len(train_idx)),
        "n_train_patients": int(len(set(data["patient_id"][train_idx].tolist()))),
    }
    if group:
        cell[f"test_auc_by_{group}"] = roc_auc_by_group(yt, scores, data[group][test])
    cell["seconds"] = time.time() - start
    return cell


def frozen_extras(features: np.ndarray, data: dict, bench: str) -> dict:
    """kNN (k=20) test accuracy with all of train, and on NIH the view shortcut probe (test AUC, AP vs PA)."""
    train, val, test = (split_indices(data, s) for s in ("train", "val", "test"))
    y = data["label"]
    out = {"knn20_acc": knn_accuracy(features[train], y[train], features[test], y[test], k=20)}
    if BENCHMARKS[bench]["group"] == "view":
        view = (data["view"] == "AP").astype(int)
        probe = fit_logistic_probe(features[train], view[train], features[val], view[val])
        out["view_probe_auc"] = roc_auc(view[test], probe.predict_proba(features[test]))
    return out


# --------------------------------------------------------------------------------------------- rows
class RowStore:
    """One JSON file per row: finished cells survive interruptions (written atomically after each cell)."""

    def __init__(self, work_dir: Path, row: dict) -> None:
        self.path = work_dir / "rows" / f"{row['name']}.json"
        self.data = {}
        if self.path.is_file():
            self.data = json.loads(self.path.read_text())
        if self.data.get("fingerprint") != row["fingerprint"]:
            self.data = {"benchmarks": {}}  # a different checkpoint under the same name: start over
        self.data.update({k: v for k, v in row.items() if k != "benchmarks"})

    def bench(self, bench: str) -> dict:
        return self.data["benchmarks"].setdefault(bench, {"cells": {}})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(json_safe(self.data), indent=1))
        os.replace(tmp, self.path)


def run_row(row: dict, args: argparse.Namespace, benchmarks: dict[str, dict]) -> None:
    store = RowStore(Path(args.work_dir), row)
    features = {}
    if row["mode"] == "probe":
        for bench, data in benchmarks.items():
            features[bench], seconds = row_features(row, bench, data, args)
            result = store.bench(bench)
            result["feature_seconds"] = seconds
            if "knn20_acc" not in result:
                result.update(frozen_extras(features[bench], data, bench))
                store.save()
        tasks = [(b, f, s) for b in benchmarks for f in args.fractions for s in args.seeds]
    else:  # seed-major: an interrupted run still holds whole seeds of every benchmark and fraction
        tasks = [(b, f, s) for s in args.ft_seeds for b in benchmarks for f in args.fractions]
    for bench, fraction, seed in tasks:
        data, group = benchmarks[bench], BENCHMARKS[bench]["group"]
        cells = store.bench(bench)["cells"]
        key, skey = f"{fraction:g}", str(seed)
        done = cells.get(key, {})
        if skey in done:
            continue
        train_idx = fraction_indices(data, fraction, seed)
        if row["mode"] == "probe" and fraction == 1 and done:
            # every seed trains on all of train and the probe is deterministic: reuse, don't recompute
            first = next(iter(done))
            cell = {**done[first], "seconds": 0.0, "same_as_seed": int(first)}
        elif row["mode"] == "probe":
            cell = probe_cell(features[bench], data, train_idx, group)
        else:
            cell = finetune_cell(row, data, train_idx, seed, group, args)
        cells.setdefault(key, {})[skey] = cell
        store.save()
        print(f"[{row['name']}] {bench} {key} seed {seed}: test AUC {cell['test_auc']:.3f} "
              f"({cell['seconds']:.0f} s)", flush=True)


def _budget(args: argparse.Namespace, mode: str = "finetune") -> str:
    """Fine-tune settings in a row fingerprint, so a changed budget never mixes with old cells."""
    if mode != "finetune":
        return ""
    return f"-ft{args.ft_steps}x{args.ft_batch}-lr{args.ft_lr:g}-e{args.ft_evaluations}"


def describe_rows(args: argparse.Namespace) -> list[dict]:
    labels = dict(item.split("=", 1) for item in args.label)
    methods = dict(item.split("=", 1) for item in args.method)
    presets = method_names()
    unknown = sorted(set(methods.values()) - set(presets))
    if unknown:
        raise SystemExit(f"unknown method preset(s) {unknown}; choose from {presets}")
    rows = []
    for name in args.rows:
        if name not in REFERENCE_ROWS:
            raise SystemExit(f"unknown reference row {name!r}; choose from {REFERENCE_ROWS}")
        mode = "finetune" if name == "supervised" else "probe"
        rows.append({"name": name, "label": ROW_LABELS[name], "kind": name, "mode": mode, "method": "byol",
                     "fingerprint": f"{name}-d{args.depth}-s{args.image_size}" + _budget(args, mode)})
    for spec in args.checkpoints:
        name, _, path = spec.rpartition("=")
        path = os.path.abspath(path)
        if not os.path.isfile(path):
            raise SystemExit(f"checkpoint not found: {path}")
        name = name or Path(path).parent.parent.name or Path(path).stem
        method = methods.get(name, name if name in presets else "byol")
        fp = f"ckpt-{file_fingerprint(path)}-m{method}-d{args.depth}-s{args.image_size}"
        base = {"kind": "checkpoint", "checkpoint": path, "method": method, "label": labels.get(name, name)}
        rows.append({**base, "name": name, "mode": "probe", "fingerprint": fp})
        if args.descriptor:
            rows.append({**base, "name": f"{name}-vq", "mode": "probe", "descriptor": True, "fingerprint": fp + "-vq",
                         "label": labels.get(name, name) + " + quantised descriptor"})
        if args.finetune:
            rows.append({**base, "name": f"{name}-finetune", "mode": "finetune", "fingerprint": fp + _budget(args),
                         "label": labels.get(name, name) + " (fine-tuned)"})
    return rows


# ------------------------------------------------------------------------------------------- report
def _stats(values: list[float]) -> tuple[float, float, int]:
    v = [x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return float("nan"), float("nan"), 0
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v)


def summarise(rows: list[dict]) -> dict:
    """Mean / std / n over seeds per row, benchmark and fraction (test AUC, accuracy, per-view AUC)."""
    summary = {}
    for row in rows:
        out = {}
        for bench, res in row["benchmarks"].items():
            cells = {}
            for fraction, seeds in res["cells"].items():
                vals = list(seeds.values())
                entry = {}
                for metric in ("test_auc", "test_acc", "val_auc"):
                    m, s, n = _stats([c.get(metric) for c in vals])
                    entry[metric] = {"mean": m, "std": s, "n": n}
                by = [c[k] for c in vals for k in c if k.startswith("test_auc_by_")]
                for g in sorted({g for b in by for g in b}):
                    m, s, n = _stats([b.get(g) for b in by])
                    entry[f"test_auc_{g}"] = {"mean": m, "std": s, "n": n}
                entry["seconds"] = float(sum(c.get("seconds", 0.0) for c in vals))
                entry["n_train"] = int(np.median([c["n_train"] for c in vals]))
                cells[fraction] = entry
            total = sum(e["seconds"] for e in cells.values()) + res.get("feature_seconds", 0.0)
            out[bench] = {"fractions": cells, "seconds_total": total,
                          **{k: res[k] for k in ("knn20_acc", "view_probe_auc") if k in res}}
        summary[row["name"]] = out
    return summary


def _fmt(entry: dict | None, metric: str = "test_auc") -> str:
    if not entry or metric not in entry or entry[metric]["n"] == 0:
        return "—"
    e = entry[metric]
    if e["n"] == 1:
        return f"{e['mean']:.3f} (n=1)"
    seeds = "" if e["n"] == len(SEEDS) else f" (n={e['n']})"
    return f"{e['mean']:.3f} ± {e['std']:.3f}{seeds}"


def write_report(work_dir: Path, prefix: Path, args: argparse.Namespace) -> None:
    rows = [json.loads(p.read_text()) for p in sorted((work_dir / "rows").glob("*.json"))]
    order = {n: i for i, n in enumerate(("raw", "random", "supervised"))}
    rows.sort(key=lambda r: (order.get(r["name"], 9), "preliminary" in r.get("label", ""), r["name"]))
    summary = summarise(rows)
    fractions = sorted({f for s in summary.values() for b in s.values() for f in b["fractions"]}, key=float)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "protocol": {
            "image_size": args.image_size, "backbone": f"ResNet-{args.depth} (MONAI, stride-2 stem), 1 input channel",
            "preprocessing": "LoadImaged(MedicalImageReader) + MedicalIntensityd (unit, [0,1]) + area resize; "
                             "no normalisation",
            "probe": "standardised features, L2 logistic regression, C in 1e-4..10 picked on val ROC AUC (full val)",
            "fractions": "patient-level samples of train (dissect_monai.data.sample_label_fraction), seeds 0-4",
            "knn": "k=20, cosine, majority vote, 100 % of train, test accuracy",
            "shortcut_probe": "NIH: logistic regression view AP vs PA, train 100 %, C on val, test ROC AUC",
            "finetune_budget": {"steps": args.ft_steps, "batch": args.ft_batch, "lr": args.ft_lr,
                                "seeds": args.ft_seeds,
                                "optimizer": "AdamW wd 1e-4, cosine decay, BCE, random shifts <= 4 px",
                                "selection": (f"{args.ft_evaluations} evaluations on val, best val AUC (never test)"
                                              if args.ft_evaluations > 1 else "none (last step; val AUC reported)")},
            "threads": args.threads, "precision": resolve_precision(args.precision).name,
            "test_sets": {"nih": "206 images (100 pneumonia)", "kermany": "official test, 624 (390 pneumonia)"},
        },
        "medmnist_v2_pneumonia": MEDMNIST_V2,
        "rows": {r["name"]: {k: r[k] for k in ("label", "kind", "mode", "fingerprint", "checkpoint", "descriptor")
                             if k in r}
                 for r in rows},
        "summary": summary,
        "cells": {r["name"]: r["benchmarks"] for r in rows},
    }
    prefix.with_suffix(".json").write_text(json.dumps(json_safe(report), indent=1))
    prefix.with_suffix(".md").write_text(markdown(report, rows, fractions))
    plot(report, rows, fractions, prefix.with_suffix(".png"))


def markdown(report: dict, rows: list[dict], fractions: list[str]) -> str:
    s, p = report["summary"], report["protocol"]
    fheads = [f"{float(f) * 100:g} %" for f in fractions]
    lines = [
        "# Frozen-representation and label-efficiency evaluation",
        "",
        f"Generated by `scripts/evaluate_representations.py` (resumable; cells in `runs/representations/rows`). "
        f"{p['image_size']} px, {p['backbone']}; precision {p['precision']}, {p['threads']} CPU threads "
        "(shared machine, so times are indicative).",
        "",
        f"- Probe: {p['probe']}. Fractions: {p['fractions']}. Mean ± std over seeds (at 100 % every seed uses "
        "the same train set, so a logistic-regression std is 0).",
        f"- kNN: {p['knn']}. Shortcut probe: {p['shortcut_probe']} (lower = less view information).",
        f"- Supervised / fine-tuned rows: {p['finetune_budget']['optimizer']}; budget (2 CPU cores shared with the "
        f"pretraining runs): {p['finetune_budget']['steps']} steps of batch {p['finetune_budget']['batch']} per "
        f"cell, lr {p['finetune_budget']['lr']:g}, seeds {p['finetune_budget']['seeds']}; selection: "
        f"{p['finetune_budget']['selection']}. This is a small budget: the row is a floor for training from "
        "scratch, not its ceiling.",
        "- NIH test has 206 images: overall differences under ~0.03 (0.04 per view) are noise.",
        "",
    ]
    for bench, spec in BENCHMARKS.items():
        present = [r for r in rows if bench in s[r["name"]]]
        if not present:
            continue
        extra = ["kNN-20 acc"] + (["view-probe AUC"] if spec["group"] == "view" else [])
        lines += [f"## {spec['title']}: test ROC AUC", "", _table_head(["row", *fheads, *extra, "time"])]
        for r in present:
            b = s[r["name"]][bench]
            cells = [_fmt(b["fractions"].get(f)) for f in fractions]
            cells.append(f"{b['knn20_acc']:.3f}" if "knn20_acc" in b else "—")
            if spec["group"] == "view":
                cells.append(f"{b['view_probe_auc']:.3f}" if "view_probe_auc" in b else "—")
            lines.append(_table_row([r["label"], *cells, f"{b['seconds_total'] / 60:.1f} min"]))
        lines.append("")
        if spec["group"] == "view":
            lines += ["### NIH test ROC AUC per view (AP / PA)", "", _table_head(["row", *fheads])]
            for r in present:
                b = s[r["name"]][bench]["fractions"]
                cells = [f"{_fmt(b.get(f), 'test_auc_AP')} / {_fmt(b.get(f), 'test_auc_PA')}" for f in fractions]
                lines.append(_table_row([r["label"], *cells]))
        else:
            lines += ["### Kermany test accuracy (threshold 0.5)", "", _table_head(["row", *fheads])]
            for r in present:
                b = s[r["name"]][bench]["fractions"]
                lines.append(_table_row([r["label"], *(_fmt(b.get(f), "test_acc") for f in fractions)]))
            lines += ["", "Published on the same official test split (PneumoniaMNIST, MedMNIST v2, 100 % of train, "
                      "as quoted in ../shared/data/README.md):", ""]
            lines += [f"- {name}: AUC {ref['auc']:.3f}, accuracy {ref['acc']:.3f}"
                      for name, ref in report["medmnist_v2_pneumonia"].items()]
        lines.append("")
    lines += comparison(s, fractions)
    lines += ["![label efficiency](representations.png)", ""]
    return "\n".join(lines)


def _table_head(columns: list[str]) -> str:
    return _table_row(columns) + "\n" + "|---" * len(columns) + "|"


def _table_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def comparison(summary: dict, fractions: list[str], base: str = "byol") -> list[str]:
    """DiSSECT rows minus the BYOL row (same budget): mean test AUC per benchmark and fraction, said plainly."""
    if base not in summary:
        return []
    lines = []
    for name in (n for n in summary if n.startswith("dissect") and "-ep" not in n):
        lines += [f"## {name} vs {base} (difference of mean test ROC AUC; same backbone, data and pretraining budget)",
                  "", _table_head(["benchmark", *(f"{float(f) * 100:g} %" for f in fractions), "view-probe AUC"])]
        worse, within, better = [], [], []
        for bench in BENCHMARKS:
            a, b = summary[name].get(bench), summary[base].get(bench)
            if not a or not b:
                continue
            noise = 0.03 if bench == "nih" else 0.02
            cells = []
            for f in fractions:
                ea, eb = a["fractions"].get(f), b["fractions"].get(f)
                if not ea or not eb or not ea["test_auc"]["n"] or not eb["test_auc"]["n"]:
                    cells.append("—")
                    continue
                d = ea["test_auc"]["mean"] - eb["test_auc"]["mean"]
                cells.append(f"{d:+.3f}")
                (better if d > noise else worse if d <= 0 else within).append(f"{bench} {float(f) * 100:g} %")
            view = (f"{a['view_probe_auc']:.3f} vs {b['view_probe_auc']:.3f}"
                    if "view_probe_auc" in a and "view_probe_auc" in b else "—")
            lines.append(_table_row([bench, *cells, view]))
        lines += ["", f"**{name} does not beat {base}** (difference <= 0) at: {', '.join(worse) or 'none'}; ahead only "
                  f"within the noise level (0.03 NIH, 0.02 Kermany) at: {', '.join(within) or 'none'}; ahead by more "
                  f"than the noise at: {', '.join(better) or 'none'}.", ""]
    return lines


def plot(report: dict, rows: list[dict], fractions: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(BENCHMARKS), figsize=(11, 4.2))
    for ax, (bench, spec) in zip(np.atleast_1d(axes), BENCHMARKS.items()):
        for r in rows:
            b = report["summary"][r["name"]].get(bench)
            if not b:
                continue
            fs = [f for f in fractions if f in b["fractions"] and b["fractions"][f]["test_auc"]["n"]]
            m = [b["fractions"][f]["test_auc"]["mean"] for f in fs]
            e = [b["fractions"][f]["test_auc"]["std"] for f in fs]
            ax.errorbar([float(f) * 100 for f in fs], m, yerr=e, marker="o", capsize=3, label=r["label"])
        if bench == "kermany":
            ax.axhline(MEDMNIST_V2["ResNet-18 (224 px)"]["auc"], color="k", ls=":", lw=1,
                       label="MedMNIST v2 ResNet-18 224 px (100 %)")
        ax.set(xscale="log", xlabel="labelled train fraction (%)", ylabel="test ROC AUC", title=spec["title"])
        ax.set_xticks([float(f) * 100 for f in fractions], [f"{float(f) * 100:g}" for f in fractions])
        ax.grid(alpha=0.3)
    handles, labels = np.atleast_1d(axes)[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    work_dir = Path(args.work_dir)
    if not args.report_only:
        rows = describe_rows(args)
        benchmarks = {b: load_benchmark(b, args.image_size, work_dir, args.data_root) for b in args.benchmarks}
        for row in rows:
            run_row(row, args, benchmarks)
    write_report(work_dir, Path(args.results), args)
    print(f"wrote {args.results}.json / .md / .png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
