"""Maps of pretrained encoders on real NIH test chest X-rays, run by run and side by side, with their record.

For each run (a method preset, its image size and a checkpoint, or none for a random-init reference) the embedder
is rebuilt from the pretraining bundle's config merged with the preset (``dissect_monai.networks.presets``), and for
a few NIH test images (pneumonia and no finding, AP and PA) this draws the cosine similarity of every patch to an
anchor patch, the PCA of patch features, a ViT's last-layer attention, and DiSSECT's code-index maps and typical
patches per code; then the side-by-side comparisons, ``maps.json`` and a ``README.md`` stating each budget.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from monai.transforms import Compose, EnsureTyped, Resized

from dissect_monai.data import dataset_datalist
from dissect_monai.networks.presets import build_method_embedder
from dissect_monai.transforms import load_image_transforms
from dissect_monai.viz import maps, panels

__all__ = ["budget_note", "maps_markdown", "nih_test_images", "write_encoder_maps"]

logger = logging.getLogger(__name__)


def nih_test_images(data_root: str | os.PathLike, count: int, image_size: int) -> tuple[torch.Tensor, list[dict]]:
    """``count`` NIH test images (alternating pneumonia / no finding and AP / PA), ``(count, 1, S, S)`` in [0, 1]."""
    rows = dataset_datalist("nih-cxr-pneumonia", "test", data_root)
    picks: list[dict] = []
    for pneumonia, view in [(1, "PA"), (0, "PA"), (1, "AP"), (0, "AP")] * count:
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
    images = torch.stack([load({"image": r["image"]})["image"] for r in picks])
    info = [{"image": Path(r["image"]).name, "pneumonia": int(r["pneumonia"]), "view": r["view"]} for r in picks]
    return images.float(), info


def budget_note(run: dict) -> str:
    if run.get("checkpoint") is None:
        return "random initialisation (no pretraining)"
    epochs = run.get("epochs")
    text = f"{epochs} epoch(s)" if epochs is not None else "budget unknown"
    if epochs is not None and float(epochs) < 10:
        text += " - VERY SHORT pretraining, maps are indicative only"
    return text


def write_encoder_maps(
    runs: Sequence[dict[str, Any]], data_root: str | os.PathLike, out: str | os.PathLike, images: int = 4,
    typical_images: int = 32, source: str = "the runs given", *, methods_dir: str | os.PathLike,
    pretrain_bundle: str | os.PathLike,
) -> dict[str, Any]:
    """Draw the maps of every run into ``out`` (PNGs, ``maps.json``, ``README.md``); returns the ``maps.json`` record.

    Args:
        runs: dicts with ``name``, ``method`` (preset), ``image_size``, ``checkpoint`` (``None``: random init) and
            optionally ``epochs``, ``budget_text``, ``wall_seconds`` (stated in the README).
        data_root: folder holding the datasets (the NIH test images are drawn from it).
        images: test images shown per run; typical_images: test images searched for each code's typical patches.
        source: where the runs came from, for the README.
        methods_dir / pretrain_bundle: the method presets and the pretraining bundle they extend
            (:func:`~dissect_monai.networks.presets.build_method_embedder`).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    by_size: dict[int, dict] = {}
    for run in runs:
        size = run["image_size"]
        if size not in by_size:
            by_size[size] = {"images": nih_test_images(data_root, images, size), "rows": {},
                             "typical": nih_test_images(data_root, typical_images, size)[0]}
        batch, _ = by_size[size]["images"]
        embedder = build_method_embedder(run["method"], size, methods_dir, pretrain_bundle, run["checkpoint"])
        note = budget_note(run)
        label = f"{run['name']}\n({note.split(' - ')[0].replace(' (no pretraining)', '')})"
        with torch.no_grad():
            features = maps.patch_feature_map(embedder, batch)
        anchor = maps.grid_anchor(features.shape[2:])
        similarity = maps.anchor_similarity(features, anchor).numpy()
        pca = maps.pca_rgb(features)
        attention = maps.last_layer_attention(embedder, batch).numpy() if maps.vit_of(embedder) is not None else None
        title = f"{run['name']} [{run['method']}], {size} px, {note}"
        files = [panels.save(panels.method_panel(title, batch[:, 0].numpy(), similarity, pca, anchor, attention),
                             out / f"{run['name']}.png")]
        by_size[size]["rows"][label] = {"similarity": similarity, "pca": pca, "anchor": anchor,
                                        "attention": None if attention is None else attention.mean(axis=1)}
        if getattr(embedder, "quantizer", None) is not None:
            codes = {k: v.numpy() for k, v in maps.code_index_maps(embedder, batch).items()}
            palettes = {name: maps.code_palette(k, seed=i) for i, (name, k) in
                        enumerate(zip(embedder.scale_names, embedder.quantizer.num_codes))}
            files.append(panels.save(panels.code_map_panel(f"{title}: code index per scale", batch[:, 0].numpy(),
                                                           codes, palettes), out / f"{run['name']}_codes.png"))
            for i, name in enumerate(embedder.scale_names):
                typical = maps.typical_patches(embedder, by_size[size]["typical"], scale=i)
                files.append(panels.save(
                    panels.typical_patches_panel(f"{run['name']} scale {name}: most typical patches of the codes "
                                                 f"used most on {typical_images} test images",
                                                 typical, palettes[name]),
                    out / f"{run['name']}_typical_{name}.png"))
        results[run["name"]] = {
            "method": run["method"] if run["checkpoint"] else f"none ({run['method']} preset's encoder)",
            "image_size": size, "checkpoint": run["checkpoint"],
            "budget": note + (f" ({run['budget_text']})" if run.get("budget_text") else ""),
            "epochs": run.get("epochs"), "wall_seconds": run.get("wall_seconds"),
            "feature_grid": list(features.shape[2:]), "anchor_cell": list(anchor),
            "files": [f.name for f in files],
        }
        logger.info(f"{run['name']}: {len(files)} panel(s)")

    for size, group in by_size.items():
        first = group["images"][0][:, 0].numpy()
        rows = group["rows"]
        anchor = next(iter(rows.values()))["anchor"]
        panels.save(panels.comparison_panel(f"cosine similarity to the anchor patch (+), {size} px", first,
                                            {k: v["similarity"] for k, v in rows.items()}, "similarity", anchor),
                    out / f"compare_similarity_{size}.png")
        panels.save(panels.comparison_panel(f"PCA of patch features (first 3 components as RGB), {size} px", first,
                                            {k: v["pca"] for k, v in rows.items()}, "pca"),
                    out / f"compare_pca_{size}.png")
        vit_rows = {k: v["attention"] for k, v in rows.items() if v["attention"] is not None}
        if vit_rows:
            panels.save(panels.comparison_panel(f"last-layer attention (mean over heads), ViTs, {size} px", first,
                                                vit_rows, "attention"), out / f"compare_attention_{size}.png")

    images_used = {size: group["images"][1] for size, group in by_size.items()}
    record = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "runs": results,
              "images": images_used}
    (out / "maps.json").write_text(json.dumps(record, indent=2))
    (out / "README.md").write_text(maps_markdown(results, images_used, typical_images, source))
    return record


def maps_markdown(results: dict[str, dict], images: dict[int, list[dict]], typical_images: int, source: str) -> str:
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
