"""Fit and measure the input quality gate of the chest X-ray classification bundle on real images.

The gate (:class:`dissect_monai.networks.quality_gate.EmbeddingGate`) is fitted on the embeddings
(``network_def.features``, the shipped classifier's pooled encoder features) of the frontal train images of the
two populations the classifier is for: adults (``nih-cxr-pneumonia`` train) and children (``kermany-pneumonia``
train, as many as adults, evenly spaced), 4 of every 5 images, with the threshold at ``--quantile`` of the distances
of the other fifth (held out, so the threshold is not biased by the fit), then measured on:

* in distribution: NIH test split (frontal), Hannover (frontal CR/DX, another hospital), Kermany test
  (paediatric frontal): the fraction flagged is the false-alarm rate;
* out of distribution: ``cxr-lung-seg`` lateral views (``view == L``), ``cxr-lung-seg`` CT slices (``Axial``,
  ``Coronal``) and the 20 slices of the TotalSegmentator CT DICOM series loaded as the node would load a
  mislabelled instance: the fraction flagged is the detection rate; ROC AUC of the distance against NIH + Kermany test.

The data hold no photographs; that case stays unmeasured. Writes ``<out>.json`` and ``<out>.md``; ``--save`` also
writes the gate to ``<bundle>/models/quality_gate.pt`` (the node's ``quality_gate`` pipeline key). Without trained
weights (``models/model.pt``) it refuses, unless ``--allow-untrained`` (a smoke run of a random encoder, written
under ``runs/``, never ``results/``: such numbers say nothing about the gate).

    python scripts/measure_quality_gate.py --save        # after the release run
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from dissect_monai.data.datalists import default_data_root
from dissect_monai.deploy.bundle_runner import BundleRunner
from dissect_monai.networks.quality_gate import EmbeddingGate

from repo_paths import CLASSIFICATION_BUNDLE, RESULTS, RUNS, TEST_HARNESS

sys.path.insert(0, str(TEST_HARNESS))
from harness.bundles import untrained_copy  # noqa: E402


def _csv_images(root: Path, folder: str, limit: int | None = None, **match: str | tuple[str, ...]) -> list[Path]:
    with open(root / folder / "labels.csv", newline="") as handle:
        rows = [
            r for r in csv.DictReader(handle)
            if all(r[k] in (v if isinstance(v, tuple) else (v,)) for k, v in match.items())
        ]
    return [root / folder / r["image"] for r in rows][:limit]


def image_sets(root: Path, limit: int | None) -> tuple[list[Path], dict[str, list[Path]], dict[str, list[Path]]]:
    """Fit set, in-distribution test sets, out-of-distribution sets (name -> image paths)."""
    adults = _csv_images(root, "nih-cxr-pneumonia", limit, split="train")
    children = _csv_images(root, "kermany-pneumonia", None, split="train")
    fit = adults + children[::max(1, len(children) // len(adults))][:len(adults)]  # as many children as adults
    in_distribution = {
        "NIH test (frontal)": _csv_images(root, "nih-cxr-pneumonia", limit, split="test"),
        "Hannover (frontal CR/DX)": _csv_images(root, "hannover-cxr", limit),
        "Kermany test (paediatric frontal)": _csv_images(root, "kermany-pneumonia", limit, split="test"),
    }
    out_of_distribution = {
        "lateral views (cxr-lung-seg L)": _csv_images(root, "cxr-lung-seg", limit, view="L"),
        "CT slices (cxr-lung-seg Axial/Coronal)": _csv_images(root, "cxr-lung-seg", limit, view=("Axial", "Coronal")),
        "CT DICOM slices (TotalSegmentator)": sorted((root / "totalseg-ct" / "example_ct_dicom").iterdir())[:limit],
    }
    return fit, in_distribution, out_of_distribution


def embed(runner: BundleRunner, paths: list[Path], batch_size: int = 16) -> torch.Tensor:
    """Embeddings ``(N, D)`` of images through the bundle's own preprocessing and ``network_def.features``."""
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            images = [runner.preprocessing({"image": str(p)})["image"].as_tensor() for p in chunk]
            chunks.append(runner.network.features(torch.stack(images)))
    return torch.cat(chunks)


def measure(runner: BundleRunner, root: Path, quantile: float, limit: int | None) -> tuple[EmbeddingGate, dict]:
    fit, in_distribution, out_of_distribution = image_sets(root, limit)
    train = embed(runner, fit)
    held_out = torch.arange(len(fit)) % 5 == 4
    gate = EmbeddingGate.fit(train[~held_out], quantile=quantile, calibration=train[held_out])
    distances = {name: gate(embed(runner, paths)).numpy()
                 for name, paths in {**in_distribution, **out_of_distribution}.items()}
    reference = np.r_[distances["NIH test (frontal)"], distances["Kermany test (paediatric frontal)"]]
    rows = []
    for name, values in distances.items():
        ood = name in out_of_distribution
        row = {"set": name, "kind": "out of distribution" if ood else "in distribution", "n": int(values.size),
               "flagged": float(np.mean(values > float(gate.threshold))),
               "median_distance": float(np.median(values))}
        if ood:
            labels = np.r_[np.zeros(reference.size), np.ones(values.size)]
            row["roc_auc_vs_frontal_test"] = float(roc_auc_score(labels, np.r_[reference, values]))
        rows.append(row)
    return gate, {"fit_set": "the frontal train splits of nih-cxr-pneumonia (adults) and kermany-pneumonia "
                             "(children, as many as adults)", "fit_n": int((~held_out).sum()),
                  "calibration_n": int(held_out.sum()), "quantile": quantile,
                  "threshold": float(gate.threshold), "sets": rows}


def markdown(report: dict) -> str:
    lines = [
        "# Input quality gate (Mahalanobis distance on the classification bundle's encoder features)",
        "",
        f"Fitted on {report['fit_n']} images of {report['fit_set']}; threshold at the {report['quantile']:.2f} "
        f"quantile of the distances of {report['calibration_n']} held-out ones ({report['threshold']:.3f}). "
        f"Weights: {report['weights']}. Produced by `scripts/measure_quality_gate.py`.",
        "",
        "| set | kind | n | flagged | median distance | ROC AUC vs NIH + Kermany test |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["sets"]:
        auc = f"{r['roc_auc_vs_frontal_test']:.3f}" if "roc_auc_vs_frontal_test" in r else ""
        lines.append(
            f"| {r['set']} | {r['kind']} | {r['n']} | {r['flagged']:.1%} | {r['median_distance']:.2f} | {auc} |"
        )
    lines += ["", "Flagged: share of the set beyond the threshold (false alarms in distribution, detections in OOD).",
              "No photographs are in the data; that case is not measured.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=CLASSIFICATION_BUNDLE)
    parser.add_argument("--quantile", type=float, default=0.99)
    parser.add_argument("--limit", type=int, default=None, help="at most this many images per set (smoke runs)")
    parser.add_argument("--out", type=Path, default=RESULTS / "quality_gate")
    parser.add_argument("--save", action="store_true", help="write <bundle>/models/quality_gate.pt")
    parser.add_argument("--allow-untrained", action="store_true", help="random encoder; output goes under runs/")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    trained = (args.bundle / "models" / "model.pt").is_file()
    if not trained and not args.allow_untrained:
        parser.error(f"{args.bundle}/models/model.pt not found: train the bundle first (or --allow-untrained)")
    with tempfile.TemporaryDirectory() as scratch:
        bundle = args.bundle if trained else untrained_copy(args.bundle, scratch)
        runner = BundleRunner(bundle)
        gate, report = measure(runner, default_data_root(), args.quantile, args.limit)
    report.update(weights="trained (models/model.pt)" if trained else "UNTRAINED random init: numbers mean nothing",
                  bundle=args.bundle.name, torch=torch.__version__, platform=platform.platform())
    out = args.out if trained else RUNS / "quality_gate_untrained" / args.out.name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    if args.save and trained:
        torch.save(gate.state_dict(), args.bundle / "models" / "quality_gate.pt")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
