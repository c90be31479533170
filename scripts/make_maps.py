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
``README.md`` under ``results/maps/`` (``dissect_monai.viz.maps_report``); the Markdown states each checkpoint's
pretraining budget. The images come from ``--data-root`` (default ``$DISSECT_DATA_DIR``, ``default_data_root``).

    .venv/bin/python scripts/make_maps.py                # every finished run in runs/pretrain
    .venv/bin/python scripts/make_maps.py --run dino_64=dino:runs/pretrain/dino_64/model.pt
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

import torch

from dissect_monai.data import default_data_root
from dissect_monai.networks.presets import method_names
from dissect_monai.viz.maps_report import write_encoder_maps

from repo_paths import METHODS_DIR, PRETRAIN_BUNDLE, REPO, RESULTS, RUNS
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
        if method not in method_names(METHODS_DIR):
            print(f"skip {run_dir.name}: no preset for method {method!r}", flush=True)
            continue
        found.append({"name": run_dir.name, "method": method, "image_size": size, "checkpoint": str(model),
                      "epochs": record.get("epochs"), "budget_text": record.get("budget"),
                      "wall_seconds": record.get("wall_seconds")})
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs-dir", type=Path, default=RUNS / "pretrain")
    ap.add_argument("--run", action="append", default=[], help="name=method:path/to/model.pt (repeatable)")
    ap.add_argument("--image-size", type=int, default=64, help="size of the runs given with --run")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--typical-images", type=int, default=32, help="test images searched for typical code patches")
    ap.add_argument("--data-root", type=Path, default=None, help="default: $DISSECT_DATA_DIR (default_data_root)")
    ap.add_argument("--out", type=Path, default=RESULTS / "maps")
    ap.add_argument("--no-random", action="store_true", help="leave out the random-init reference rows")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
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
    runs_dir = args.runs_dir.resolve()
    shown = runs_dir.relative_to(REPO) if runs_dir.is_relative_to(REPO) else runs_dir
    source = "the `--run` arguments" if args.run else f"`{shown}/`"
    write_encoder_maps(runs, args.data_root or default_data_root(), args.out, args.images, args.typical_images, source,
                       methods_dir=METHODS_DIR, pretrain_bundle=PRETRAIN_BUNDLE)
    print(f"wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
