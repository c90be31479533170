"""The label-efficiency protocol on NIH and Kermany pneumonia: frozen probes and fine-tuning through the bundle.

For each row (:class:`~dissect_monai.evaluation.results.EvaluationRow`) and benchmark:

* ``probe`` rows: frozen features of every image (the embedding the pretraining bundle ships, raw pixels, or
  ``[pooled feature, quantised descriptor]``; cached), a standardised logistic regression with C picked on the val
  split, trained on each label fraction (by patient) x seed -> test ROC AUC (per view on NIH) and accuracy; with
  100 % of train, a cosine kNN (k=20) accuracy and on NIH the view shortcut probe (AUC of predicting AP vs PA);
* ``finetune`` rows: the classification bundle (``train.yaml`` + the benchmark's config, ``mode finetune``) trains
  the whole network for the same step budget at each fraction x seed, keeps the best val-AUC checkpoint and
  ``evaluate.yaml`` tests it (its ``ClassificationReport``).

Each finished cell goes to the row's :class:`~dissect_monai.evaluation.results.RowStore` at once, so the protocol
resumes cell by cell; :func:`summarise` reduces the stored cells to mean +- sd over seeds.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dissect_monai.data import LABEL_FRACTIONS
from dissect_monai.engines.checkpoint import atomic_write
from dissect_monai.evaluation.benchmarks import BenchmarkData, BenchmarkSpec
from dissect_monai.evaluation.bundle_runs import (
    StepBudget,
    bundle_workflow,
    method_encoder_config,
    run_workflow,
    train_for_steps,
)
from dissect_monai.evaluation.features import extract_features
from dissect_monai.evaluation.metrics import mean_std, roc_auc, roc_auc_by_group
from dissect_monai.evaluation.probes import fit_logistic_probe, knn_accuracy
from dissect_monai.evaluation.results import (
    CellResult,
    EvaluationRow,
    RowStore,
    file_fingerprint,
    fraction_key,
    read_json,
)
from dissect_monai.networks.classification import EncoderClassifier
from dissect_monai.networks.dissect import QuantisedDescriptor
from dissect_monai.networks.presets import build_method_embedder
from dissect_monai.utils import prepare_module

__all__ = [
    "REFERENCE_ROWS",
    "ProtocolSettings",
    "checkpoint_rows",
    "finetune_cell",
    "frozen_extras",
    "probe_cell",
    "reference_row",
    "row_features",
    "run_row",
    "summarise",
]

#: reference rows: display label and mode
REFERENCE_ROWS: dict[str, tuple[str, str]] = {
    "raw": ("raw pixels", "probe"),
    "random": ("random-init ResNet-18 (frozen)", "probe"),
    "supervised": ("supervised from scratch (fine-tuned ResNet-18)", "finetune"),
}


@dataclass(frozen=True)
class ProtocolSettings:
    """The fixed protocol (DESIGN.md): what every row is evaluated with.

    Attributes:
        methods_dir: the method presets (the repository's ``configs/methods``).
        pretrain_bundle: the pretraining bundle whose ``train.yaml`` the presets extend
            (``bundles/dissect_cxr_pretrain``).
        image_size: input side the encoders were pretrained at.
        depth: ResNet depth of the ResNet methods' encoders.
        probe_fractions / probe_seeds: label fractions and label samples of the frozen probes.
        finetune_fractions / finetune_seeds: the same for fine-tuning (each seed also seeds the initialisation).
        finetune_budget: optimiser steps, batch and validation interval of every fine-tune cell.
        learning_rate: head (and from-scratch encoder) learning rate; encoder_lr: a pretrained encoder's.
        precision / threads: the bundle's ``precision`` and ``num_threads``; the probes' feature extraction.
    """

    methods_dir: str
    pretrain_bundle: str
    image_size: int = 64
    depth: int = 18
    probe_fractions: tuple[float, ...] = LABEL_FRACTIONS
    probe_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    finetune_fractions: tuple[float, ...] = (0.1, 1.0)
    finetune_seeds: tuple[int, ...] = (0, 1, 2)
    finetune_budget: StepBudget = StepBudget(steps=300, batch_size=32, val_every_steps=50)
    learning_rate: float = 1e-3
    encoder_lr: float = 1e-4
    precision: str = "auto"
    threads: int = 2

    def fingerprint(self, mode: str) -> str:
        """The settings a row's cells depend on (fractions and seeds are not: cells are stored per fraction/seed)."""
        text = f"d{self.depth}-s{self.image_size}"
        if mode == "finetune":
            b = self.finetune_budget
            text += f"-ft{b.steps}x{b.batch_size}v{b.val_every_steps}-lr{self.learning_rate:g}-elr{self.encoder_lr:g}"
        return text


def reference_row(name: str, settings: ProtocolSettings) -> EvaluationRow:
    """A reference row (:data:`REFERENCE_ROWS`); the frozen random-init and supervised rows use a plain ResNet."""
    if name not in REFERENCE_ROWS:
        raise ValueError(f"unknown reference row {name!r}; choose from {list(REFERENCE_ROWS)}")
    label, mode = REFERENCE_ROWS[name]
    if name == "raw":
        label = f"raw pixels ({settings.image_size}x{settings.image_size})"
    return EvaluationRow(name=name, label=label, kind=name, mode=mode, method="byol",
                         fingerprint=f"{name}-{settings.fingerprint(mode)}")


def checkpoint_rows(
    name: str,
    checkpoint: str | os.PathLike,
    method: str,
    settings: ProtocolSettings,
    label: str | None = None,
    descriptor: bool = False,
    finetune: bool = False,
) -> list[EvaluationRow]:
    """The rows of a pretraining checkpoint: the frozen probe, optionally the probe with DiSSECT's quantised
    descriptor (``<name>-vq``) and fine-tuning through the bundle (``<name>-finetune``).

    Raises:
        FileNotFoundError: naming the checkpoint when it does not exist.
    """
    checkpoint = os.path.abspath(checkpoint)
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    label = label or name
    base = f"ckpt-{file_fingerprint(checkpoint)}-m{method}"
    common = {"kind": "checkpoint", "method": method, "checkpoint": checkpoint}
    rows = [EvaluationRow(name=name, label=label, mode="probe", fingerprint=f"{base}-{settings.fingerprint('probe')}",
                          **common)]
    if descriptor:
        rows.append(EvaluationRow(name=f"{name}-vq", label=f"{label} + quantised descriptor", mode="probe",
                                  descriptor=True, fingerprint=f"{base}-vq-{settings.fingerprint('probe')}", **common))
    if finetune:
        rows.append(EvaluationRow(name=f"{name}-finetune", label=f"{label} (fine-tuned)", mode="finetune",
                                  fingerprint=f"{base}-{settings.fingerprint('finetune')}", **common))
    return rows


def _frozen_model(row: EvaluationRow, settings: ProtocolSettings) -> Callable[[torch.Tensor], torch.Tensor]:
    """The feature function of a frozen row: the pretraining bundle's embedder (pooled deepest map, or a ViT's class /
    mean token), or an :class:`EncoderClassifier`'s ``[pooled feature, quantised descriptor]``."""
    torch.manual_seed(0)
    overrides = {"depth": settings.depth}
    embedder = build_method_embedder(row.method, settings.image_size, settings.methods_dir, settings.pretrain_bundle,
                                     row.checkpoint, overrides)
    if not row.descriptor:
        return prepare_module(embedder, "cpu", settings.precision).eval()
    if getattr(embedder, "quantizer", None) is None:
        raise ValueError(f"row {row.name}: method {row.method!r} has no quantizer for a quantised descriptor")
    model = EncoderClassifier(embedder.encoder, num_classes=1,
                              descriptor=QuantisedDescriptor(embedder.quantizer, scales=embedder.scales))
    return prepare_module(model, "cpu", settings.precision).eval().features


def row_features(
    row: EvaluationRow, spec: BenchmarkSpec, data: BenchmarkData, cache_dir: str | os.PathLike,
    settings: ProtocolSettings,
) -> tuple[np.ndarray, float]:
    """Features ``(N, D)`` of every image of a benchmark for a frozen row, cached under the row's fingerprint in
    ``<cache_dir>/<row>_<benchmark>_<size>.npz``; and the seconds they took to compute."""
    cache = Path(cache_dir) / f"{row.name}_{spec.name}_{settings.image_size}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            if str(z["fingerprint"]) == row.fingerprint:
                return z["features"], float(z["seconds"])
    start = time.time()
    images = torch.as_tensor(data.images).float()
    if row.kind == "raw":
        features = images.flatten(1).numpy()
    else:
        features = extract_features(_frozen_model(row, settings), images, batch_size=128, precision=settings.precision)
    seconds = time.time() - start
    atomic_write(cache, lambda f: np.savez(f, features=features.astype(np.float32), fingerprint=row.fingerprint,
                                           seconds=seconds))
    return features, seconds


def probe_cell(features: np.ndarray, data: BenchmarkData, train_idx: np.ndarray, group: str | None) -> CellResult:
    """Logistic regression on ``features[train_idx]`` ``(n, D)``, C picked on the val split, tested on test."""
    start = time.time()
    y, val, test = data.label, data.indices("val"), data.indices("test")
    probe = fit_logistic_probe(features[train_idx], y[train_idx], features[val], y[val])
    scores = probe.predict_proba(features[test])
    return CellResult(
        test_auc=roc_auc(y[test], scores), test_acc=float(((scores >= 0.5) == y[test]).mean()), val_auc=probe.val_auc,
        n_train=int(len(train_idx)), n_train_patients=data.patients(train_idx), seconds=time.time() - start,
        test_auc_by_view=roc_auc_by_group(y[test], scores, getattr(data, group)[test]) if group else {}, c=probe.c,
    )


def frozen_extras(features: np.ndarray, data: BenchmarkData, spec: BenchmarkSpec) -> dict[str, float]:
    """kNN (k=20, cosine) test accuracy with all of train; on a benchmark grouped by view also the view shortcut
    probe: test ROC AUC of a logistic regression predicting AP (vs PA) from the same features (C on val)."""
    train, val, test = (data.indices(s) for s in ("train", "val", "test"))
    y = data.label
    out = {"knn20_acc": knn_accuracy(features[train], y[train], features[test], y[test], k=20)}
    if spec.group == "view":
        view = (data.view == "AP").astype(int)
        probe = fit_logistic_probe(features[train], view[train], features[val], view[val])
        out["view_probe_auc"] = roc_auc(view[test], probe.predict_proba(features[test]))
    return out


def finetune_cell(
    row: EvaluationRow, spec: BenchmarkSpec, fraction: float, seed: int, settings: ProtocolSettings,
    bundle: str | os.PathLike, run_dir: str | os.PathLike, data_root: str | os.PathLike,
    overrides: Mapping[str, Any] | None = None,
) -> CellResult:
    """Fine-tune through the classification bundle and test with its ``evaluate.yaml``.

    The train workflow is ``train.yaml`` + ``spec.bundle_configs`` with ``mode finetune``, ``label_fraction``,
    ``fraction_seed`` and ``seed`` = ``seed``, the row's encoder (the method's, loaded from the row's checkpoint;
    a random-init ResNet for the supervised row, whose encoder then learns at the head's rate) and the step budget;
    ``models/model.pt`` (best val AUC) is tested on the test split. Outputs stay in ``run_dir`` (emptied first: a
    cell is only ever stored whole).

    Args:
        overrides: further bundle overrides by config id (e.g. ``device``).
    """
    run_dir = Path(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)  # what an interrupted attempt left (the cell was not stored)
    configs = ["train.yaml", *spec.bundle_configs]
    common: dict[str, Any] = {
        "dataset_dir": str(data_root), "output_dir": str(run_dir / "models"), "log_dir": str(run_dir / "logs"),
        "mode": "finetune", "image_size": settings.image_size, "depth": settings.depth, "seed": seed,
        "precision": settings.precision, "num_threads": settings.threads, "pretrained_checkpoint": None,
        "batch_size": settings.finetune_budget.batch_size, **(overrides or {}),
    }
    encoder: dict[str, Any] = {}
    if row.checkpoint:  # the test workflow loads the trained network over the same architecture, no checkpoint
        presets = (settings.methods_dir, settings.pretrain_bundle)
        common["network_def#encoder"] = method_encoder_config(row.method, settings.image_size, None, *presets,
                                                              settings.depth)
        encoder["network_def#encoder"] = method_encoder_config(row.method, settings.image_size, row.checkpoint,
                                                               *presets, settings.depth)
    train = bundle_workflow(bundle, configs, label_fraction=fraction, fraction_seed=seed,
                            learning_rate=settings.learning_rate,
                            encoder_lr=settings.encoder_lr if row.checkpoint else settings.learning_rate,
                            **{**common, **encoder})
    trained = train_for_steps(train, settings.finetune_budget)
    run_workflow(bundle_workflow(bundle, [*configs, "evaluate.yaml"], eval_dir=str(run_dir / "eval"), **common))
    report = read_json(run_dir / "eval" / "metrics.json")
    name = report["classes"][0]
    return CellResult(
        test_auc=report["auc"][name], test_acc=report["accuracy_at_0.5"][name], val_auc=trained.best_val,
        n_train=len(trained.datalist), n_train_patients=len({it["patient_id"] for it in trained.datalist}),
        seconds=trained.seconds, epochs=trained.epochs, steps=trained.steps,
        test_auc_by_view={g: v[name] for g, v in report.get("auc_by_view", {}).items()},
    )


def run_row(
    row: EvaluationRow,
    specs: Sequence[BenchmarkSpec],
    store: RowStore,
    settings: ProtocolSettings,
    work_dir: str | os.PathLike,
    data_root: str | os.PathLike,
    bundle: str | os.PathLike,
    benchmark_data: Callable[[BenchmarkSpec], BenchmarkData],
    log: Callable[[str], None] = print,
) -> None:
    """Compute every cell of ``row`` that ``store`` does not hold yet, storing each as it finishes.

    Probe rows run benchmark by benchmark; fine-tune rows seed-major (an interrupted run still holds whole seeds).
    At 100 % of train every probe seed trains on the same set and the probe is deterministic: the first seed's
    cell is copied (``same_as_seed``), not recomputed.

    Args:
        benchmark_data: decoded images of a benchmark (probe rows only; e.g. a cached :func:`load_benchmark`).
        bundle: the classification bundle (fine-tune rows).
    """
    work_dir = Path(work_dir)
    features: dict[str, np.ndarray] = {}
    if row.mode == "probe":
        for spec in specs:
            data = benchmark_data(spec)
            features[spec.name], seconds = row_features(row, spec, data, work_dir / "features", settings)
            if "knn20_acc" not in store.extras(spec.name):
                store.put_extras(spec.name, feature_seconds=seconds, **frozen_extras(features[spec.name], data, spec))
        tasks = [(s, f, seed) for s in specs for f in settings.probe_fractions for seed in settings.probe_seeds]
    else:
        tasks = [(s, f, seed) for seed in settings.finetune_seeds for s in specs for f in settings.finetune_fractions]
    for spec, fraction, seed in tasks:
        if store.cell(spec.name, fraction, seed) is not None:
            continue
        done = store.cells(spec.name, fraction)
        if row.mode == "probe" and fraction == 1 and done:
            first = min(done)
            cell = CellResult(**{**vars(done[first]), "seconds": 0.0, "same_as_seed": first})
        elif row.mode == "probe":
            data = benchmark_data(spec)
            cell = probe_cell(features[spec.name], data, data.fraction_indices(fraction, seed), spec.group)
        else:
            run_dir = work_dir / "finetune" / row.name / f"{spec.name}_{fraction_key(fraction)}_{seed}"
            cell = finetune_cell(row, spec, fraction, seed, settings, bundle, run_dir, data_root)
        store.put(spec.name, fraction, seed, cell)
        log(f"[{row.name}] {spec.name} {fraction_key(fraction)} seed {seed}: test AUC {cell.test_auc:.3f} "
            f"({cell.seconds:.0f} s)")


def summarise(stored: Sequence[tuple[EvaluationRow, Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Mean +- sd over seeds (:func:`~dissect_monai.evaluation.metrics.mean_std`) per row, benchmark and fraction:
    ``{row: {benchmark: {"fractions": {fraction: {"test_auc": {"mean", "std", "n"}, "test_acc", "val_auc",
    "test_auc_<view>", "seconds", "n_train"}}, "seconds_total", "knn20_acc", "view_probe_auc"}}}``."""
    summary: dict[str, dict[str, Any]] = {}
    for row, benchmarks in stored:
        out = {}
        for bench, record in benchmarks.items():
            cells = {}
            for fraction, seeds in record.get("cells", {}).items():
                values = [CellResult.from_dict(c) for c in seeds.values()]
                entry: dict[str, Any] = {m: mean_std(getattr(c, m) for c in values).as_dict()
                                         for m in ("test_auc", "test_acc", "val_auc")}
                for view in sorted({v for c in values for v in c.test_auc_by_view}):
                    entry[f"test_auc_{view}"] = mean_std(c.test_auc_by_view.get(view) for c in values).as_dict()
                entry["seconds"] = float(sum(c.seconds for c in values))
                entry["n_train"] = int(np.median([c.n_train for c in values]))
                cells[fraction] = entry
            extras = record.get("extras", {})
            out[bench] = {"fractions": cells,
                          "seconds_total": sum(e["seconds"] for e in cells.values()) + extras.get("feature_seconds", 0),
                          **{k: extras[k] for k in ("knn20_acc", "view_probe_auc") if k in extras}}
        summary[row.name] = out
    return summary
