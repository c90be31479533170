"""Maps of pretrained encoders on real test chest X-rays, method by method and side by side.

For every pretraining run ``<name>/`` under ``--runs-dir`` (default ``runs/pretrain``) with a ``model.pt`` (or runs
given with ``--run name=method:path``), the embedder is rebuilt from the pretraining bundle's ``train.yaml`` merged with
``configs/methods/<method>.yaml`` at the run's image size (``dissect_monai.networks.presets``), its weights loaded
strictly (``weights_only=True``), and
for a few NIH test images (pneumonia and no finding, AP and PA) the script draws:

- cosine similarity of every patch to an anchor patch (left lung field), and PCA of patch features (RGB);
- for ViTs, the per-head attention of the last layer;
- for DiSSECT (ResNet or ViT), the code-index map per quantised scale and each frequent code's most
  typical patches.

Randomly initialised ResNet-18 and ViT rows are added as references. Writes PNGs, ``maps.json`` and
``README.md`` under ``results/maps/``; the Markdown states each checkpoint's pretraining budget.

    .venv/bin/python scripts/make_maps.py                # every finished run in runs/pretrain
    .venv/bin/python scripts/make_maps.py --run dino_64=dino:runs/pretrain/dino_64/model.pt
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
from monai.transforms import Compose, EnsureTyped, Resized

from dissect_monai.data import default_data_root
from dissect_monai.networks.presets import METHODS_DIR, build_method_embedder
from dissect_monai.transforms import load_image_transforms
from dissect_monai.viz import (
    anchor_similarity,
    code_index_maps,
    code_palette,
    grid_anchor,
    last_layer_attention,
    patch_feature_map,
    pca_rgb,
    typical_patches,
    vit_of,
)
from dissect_monai.viz import panels

REPO = Path(__file__).resolve().parents[1]
RANDOM_REFERENCES = {"random_resnet18": "byol", "random_vit": "mae"}


def discover_runs(runs_dir: Path) -> list[dict]:
    """Finished runs under ``runs_dir``: name, method, image size, checkpoint and budget from ``run.json``."""
    found = []
    for model in sorted(runs_dir.glob("*/model.pt")):
        run_dir = model.parent
        record = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
        match = re.fullmatch(r"(.+)_(\d+)", run_dir.name)
        method = record.get("method") or (match.group(1) if match else run_dir.name)
        size = int(record.get("image_size") or (match.group(2) if match else 64))
        if not (METHODS_DIR / f"{method}.yaml").is_file():
            print(f"skip {run_dir.name}: no preset for method {method!r}", flush=True)
            continue
        found.append({"name": run_dir.name, "method": method, "image_size": size, "checkpoint": str(model),
                      "epochs": record.get("epochs"), "budget_text": record.get("budget"),
                      "wall_seconds": record.get("wall_seconds") or record.get("wall_time_s")})
    return found


def test_images(data_root: Path, count: int, image_size: int) -> tuple[torch.Tensor, list[dict]]:
    """``count`` NIH test images (alternating pneumonia / no finding and AP / PA), ``(count, 1, S, S)`` in [0, 1]."""
    with open(data_root / "nih-cxr-pneumonia" / "labels.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    picks: list[dict] = []
    for pneumonia, view in [("1", "PA"), ("0", "PA"), ("1", "AP"), ("0", "AP")] * count:
        if len(picks) == count:
            break
        pick = next((r for r in rows if r["pneumonia"] == pneumonia and r["view"] == view and r not in picks), None)
        if pick is not None:
            picks.append(pick)
    load = Compose([
        *load_image_transforms("image"),
        Resized(keys="image", spatial_size=(image_size, image_size), mode="area"),
        EnsureTyped(keys="image", track_meta=False),
    ])
    images = torch.stack([load({"image": str(data_root / "nih-cxr-pneumonia" / r["image"])})["image"] for r in picks])
    info = [{"image": r["image"], "pneumonia": int(r["pneumonia"]), "view": r["view"]} for r in picks]
    return images.float(), info


def budget_note(run: dict) -> str:
    if run.get("checkpoint") is None:
        return "random initialisation (no pretraining)"
    epochs = run.get("epochs")
    text = f"{epochs} epoch(s)" if epochs is not None else "budget unknown"
    if epochs is not None and float(epochs) < 10:
        text += " - VERY SHORT pretraining, maps are indicative only"
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "pretrain")
    ap.add_argument("--run", action="append", default=[], help="name=method:path/to/model.pt (repeatable)")
    ap.add_argument("--image-size", type=int, default=64, help="size of the runs given with --run")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--typical-images", type=int, default=32, help="test images searched for typical code patches")
    ap.add_argument("--data-root", type=Path, default=None, help="default: $DISSECT_DATA_DIR or ../shared/data")
    ap.add_argument("--out", type=Path, default=REPO / "results" / "maps")
    ap.add_argument("--no-random", action="store_true", help="leave out the random-init reference rows")
    args = ap.parse_args(argv)
    args.data_root = args.data_root or default_data_root()
    torch.manual_seed(0)

    runs = discover_runs(args.runs_dir) if not args.run else []
    for spec in args.run:
        name, rest = spec.split("=", 1)
        method, path = rest.split(":", 1)
        runs.append({"name": name, "method": method, "image_size": args.image_size, "checkpoint": path})
    if not args.no_random:
        sizes = sorted({r["image_size"] for r in runs}) or [args.image_size]
        for label, method in RANDOM_REFERENCES.items():
            runs.append({"name": f"{label}_{sizes[0]}", "method": method, "image_size": sizes[0], "checkpoint": None})
    if not runs:
        print(f"no runs with model.pt under {args.runs_dir}", file=sys.stderr)
        return 1

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    by_size: dict[int, dict] = {}
    for run in runs:
        size = run["image_size"]
        if size not in by_size:
            by_size[size] = {"images": test_images(args.data_root, args.images, size), "rows": {},
                             "typical": test_images(args.data_root, args.typical_images, size)[0]}
        images, info = by_size[size]["images"]
        embedder = build_method_embedder(run["method"], size, run["checkpoint"])
        note = budget_note(run)
        label = f"{run['name']}\n({note.split(' - ')[0].replace(' (no pretraining)', '')})"
        with torch.no_grad():
            features = patch_feature_map(embedder, images)
        anchor = grid_anchor(features.shape[2:])
        similarity = anchor_similarity(features, anchor).numpy()
        pca = pca_rgb(features)
        attention = last_layer_attention(embedder, images).numpy() if vit_of(embedder) is not None else None
        title = f"{run['name']} [{run['method']}], {size} px, {note}"
        files = [panels.save(panels.method_panel(title, images[:, 0].numpy(), similarity, pca, anchor, attention),
                             out / f"{run['name']}.png")]
        by_size[size]["rows"][label] = {"similarity": similarity, "pca": pca, "anchor": anchor,
                                        "attention": None if attention is None else attention.mean(axis=1)}
        if getattr(embedder, "quantizer", None) is not None:
            codes = {k: v.numpy() for k, v in code_index_maps(embedder, images).items()}
            palettes = {name: code_palette(k, seed=i) for i, (name, k) in
                        enumerate(zip(embedder.scale_names, embedder.quantizer.num_codes))}
            files.append(panels.save(panels.code_map_panel(f"{title}: code index per scale", images[:, 0].numpy(),
                                                           codes, palettes), out / f"{run['name']}_codes.png"))
            for i, name in enumerate(embedder.scale_names):
                typical = typical_patches(embedder, by_size[size]["typical"], scale=i)
                files.append(panels.save(
                    panels.typical_patches_panel(f"{run['name']} scale {name}: most typical patches of the codes "
                                                 f"used most on {args.typical_images} test images",
                                                 typical, palettes[name]),
                    out / f"{run['name']}_typical_{name}.png"))
        results[run["name"]] = {
            "method": run["method"] if run["checkpoint"] else f"none ({run['method']} preset's encoder)",
            "image_size": size, "checkpoint": run["checkpoint"],
            "budget": note + (f" ({run['budget_text']})" if run.get("budget_text") else ""),
            "epochs": run.get("epochs"), "wall_seconds": run.get("wall_seconds"),
            "feature_grid": list(features.shape[2:]), "anchor_cell": list(anchor),
            "files": [str(f.relative_to(REPO)) if f.is_relative_to(REPO) else str(f) for f in files],
        }
        print(f"{run['name']}: {len(files)} panel(s)", flush=True)

    for size, group in by_size.items():
        images = group["images"][0][:, 0].numpy()
        rows = group["rows"]
        anchor = next(iter(rows.values()))["anchor"]
        panels.save(panels.comparison_panel(f"cosine similarity to the anchor patch (+), {size} px", images,
                                            {k: v["similarity"] for k, v in rows.items()}, "similarity", anchor),
                    out / f"compare_similarity_{size}.png")
        panels.save(panels.comparison_panel(f"PCA of patch features (first 3 components as RGB), {size} px", images,
                                            {k: v["pca"] for k, v in rows.items()}, "pca"),
                    out / f"compare_pca_{size}.png")
        vit_rows = {k: v["attention"] for k, v in rows.items() if v["attention"] is not None}
        if vit_rows:
            panels.save(panels.comparison_panel(f"last-layer attention (mean over heads), ViTs, {size} px", images,
                                                vit_rows, "attention"), out / f"compare_attention_{size}.png")

    images_used = {size: group["images"][1] for size, group in by_size.items()}
    record = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "runs": results,
              "images": images_used}
    (out / "maps.json").write_text(json.dumps(record, indent=2))
    runs_dir = args.runs_dir.resolve()
    shown = runs_dir.relative_to(REPO) if runs_dir.is_relative_to(REPO) else runs_dir
    source = "the `--run` arguments" if args.run else f"`{shown}/`"
    (out / "README.md").write_text(markdown(results, images_used, args.typical_images, source))
    print(f"wrote {out}", flush=True)
    return 0


def markdown(results: dict[str, dict], images: dict[int, list[dict]], typical_images: int, source: str) -> str:
    lines = [
        "# Maps of the pretrained encoders",
        "",
        f"Made by `scripts/make_maps.py` from the checkpoints of {source} on real NIH test images",
        "(never seen in pretraining). Per method: `<run>.png` (image with the anchor patch, cosine similarity",
        "of every patch to it, PCA of patch features as RGB, and for ViTs the last layer's per-head attention);",
        "for DiSSECT also `<run>_codes.png` (code index per scale, one colour per code) and",
        f"`<run>_typical_<scale>.png` (the codes used most on {typical_images} NIH test images, each with its",
        "most typical patches: highest cosine similarity to the code). Side by side:",
        "`compare_similarity_<size>.png`, `compare_pca_<size>.png`, `compare_attention_<size>.png`.",
        "",
        "Features: ViT final patch tokens; ResNet the deepest stage map with a grid of at least 8x8 (C3 at",
        "64 px). Attention: class-token row, or the attention each patch receives averaged over queries",
        "when the ViT has no class token (I-JEPA, DiSSECT-ViT). The encoder shown is the one each method ships",
        "(`models/model.pt`): the online encoder (BYOL, DiSSECT, CoBooM), the student (DINO), the context",
        "encoder (I-JEPA), the shared encoder (VICReg, MLVICX with its context bottlenecks, MAE).",
        "",
        "**Budget.** Every checkpoint below is what existed when the script ran; the pretraining budget",
        "is given per run. Runs of a few epochs on this 2-core CPU are far from converged, so their maps",
        "show early training only and must not be read as the methods' final behaviour.",
        "",
        "| run | method | image size | pretraining budget | wall time (s) | feature grid | panels |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        files = ", ".join(f"`{Path(f).name}`" for f in r["files"])
        grid = "x".join(map(str, r["feature_grid"]))
        lines.append(f"| {name} | {r['method']} | {r['image_size']} | {r['budget']} | {r.get('wall_seconds') or '-'} "
                     f"| {grid} | {files} |")
    lines += ["", "Images:", ""]
    for size, info in images.items():
        for item in info:
            lines.append(f"- {size} px: `{item['image']}` (pneumonia {item['pneumonia']}, view {item['view']})")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
