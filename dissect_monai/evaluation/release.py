"""The release run: pretraining, classification, lung segmentation and export, each stage through the bundles and
the evaluation package, resumable in one run folder (default ``~/.cache/dissect-monai/release``).

Run folder layout::

    pretrain/{dissect,byol}/      the pretraining bundle's runs (launch.RecordedRun: model.pt, run.json, logs/)
    classification/rows/          the label-efficiency RowStores (features/, images/, finetune/ beside them)
    segmentation/<run>/           the lung bundle's runs (result.json once finished)
    stages.json                   wall seconds per stage (summed over resumed attempts) and which have finished

Each stage skips what is finished (runs with a ``model.pt`` and exit 0, stored cells, runs with a ``result.json``).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

from dissect_monai.data import LABEL_FRACTIONS, default_data_root, pretraining_pool
from dissect_monai.engines.export import export_bundle_weights, replace_readme_section, update_metadata
from dissect_monai.evaluation.benchmarks import BENCHMARKS, load_benchmark
from dissect_monai.evaluation.bundle_runs import StepBudget
from dissect_monai.evaluation.label_efficiency import (
    ProtocolSettings,
    checkpoint_rows,
    reference_row,
    run_row,
    summarise,
)
from dissect_monai.evaluation.launch import bundle_command, run_finished, run_recorded
from dissect_monai.evaluation.metrics import MeanStd, format_mean_std, mean_std
from dissect_monai.evaluation.pretraining import pretraining_markdown, summarise_run, write_pretraining_report
from dissect_monai.evaluation.results import CellResult, RowStore, fraction_key, read_json, write_json
from dissect_monai.evaluation.reports import write_label_efficiency_report, write_segmentation_report
from dissect_monai.evaluation.segmentation import LungRow, collect_runs, discard_stale_run, train_and_test_lung
from dissect_monai.utils import machine_state

__all__ = [
    "DEFAULT_RUN_DIR",
    "ESTIMATED_SECONDS_PER_STEP",
    "GOALS",
    "STAGES",
    "ReleaseSettings",
    "dissect_vs_byol",
    "export_sources",
    "goal_status",
    "lung_dissect_vs_byol",
    "lung_key",
    "lung_recipe",
    "paired_difference",
    "plan",
    "read_release_record",
    "recorded_runs",
    "release_markdown",
    "require_recorded_runs",
    "run_stage",
    "runs_missing_from_run_folder",
    "runs_seconds",
    "segmentation_runs",
    "settings_record",
    "write_performance_sections",
    "write_release_report",
]

DEFAULT_RUN_DIR = Path("~/.cache/dissect-monai/release").expanduser()
STAGES = ("pretrain", "classification", "segmentation", "export")
PRETRAIN_METHODS = {"dissect": True, "byol": False}  # method -> quantizer
METHOD_LABELS = {"dissect": "DiSSECT", "byol": "BYOL (quantizer off)"}
#: seconds per optimiser step used by --plan before a stage has measured its own, on the idle 2-core machine
#: (results/training_throughput.md: DiSSECT bf16 64 px, 0.35 CPU-s per 16 pairs -> ~0.7 s per 64 pairs on 2 cores;
#: a supervised ResNet-18 step of 32 images at 64 px ~0.25 s; a U-Net step of 16 images at 256 px ~2 s), and per
#: probe cell (a logistic regression with C picked on val).
ESTIMATED_SECONDS_PER_STEP = {"pretrain": 0.7, "finetune": 0.25, "segmentation": 2.0, "probe_cell": 3.0}
#: the issue's goals: (description, row, benchmark, fraction, metric, threshold)
GOALS = (
    ("Kermany fine-tuned test AUC >= 0.96", "dissect-finetune", "kermany", "1", "test_auc", 0.96),
    ("Kermany fine-tuned test accuracy >= 0.88", "dissect-finetune", "kermany", "1", "test_acc", 0.88),
    ("Kermany linear probe at 10 % AUC >= 0.93", "dissect", "kermany", "0.1", "test_auc", 0.93),
    ("NIH linear probe at 10 % AUC >= 0.85", "dissect", "nih", "0.1", "test_auc", 0.85),
    ("NIH fine-tuned at 100 % AUC >= 0.88", "dissect-finetune", "nih", "1", "test_auc", 0.88),
)
LUNG_DICE_GOAL = 0.95
#: the runs whose weights ship (:func:`export_sources`): seed 0, so no seed is picked on test
SHIPPED_SEED = 0
SHIPPED_CLASSIFIER = ("dissect-finetune", "kermany", "1")  # row, benchmark, label fraction
#: the lung recipe (:func:`lung_recipe`) whose seed-0 run ships: the DiSSECT encoder fine-tuned on all labels
SHIPPED_LUNG_RECIPE = "dissect_fine-tuned_1"
SHIPPED_LUNG_RUN = f"{SHIPPED_LUNG_RECIPE}_{SHIPPED_SEED}"
RELEASE_VERSION = "1.0.0"
REPORT_SOURCE = "`python scripts/release.py` (`dissect_monai.evaluation.release`)"


@dataclass(frozen=True)
class ReleaseSettings:
    """Budget and places of the release run. ``repo``: the checkout holding ``bundles/`` and ``configs/methods``."""

    repo: Path
    run_dir: Path = DEFAULT_RUN_DIR
    data_root: Path | None = None
    epochs: int = 120  # the release budget: about 2.5 h of DiSSECT on the idle 2-core machine
    image_size: int = 64
    batch_size: int = 64
    threads: int = 2
    finetune_budget: StepBudget = StepBudget(steps=300, batch_size=32, val_every_steps=50)
    segmentation_size: int = 256
    segmentation_budget: StepBudget = StepBudget(steps=300, batch_size=16, val_every_steps=50)
    segmentation_fractions: tuple[float, ...] = (0.1, 1.0)
    segmentation_seeds: tuple[int, ...] = (0, 1, 2)
    #: pretraining runs the ``pretrain`` stage starts (one a session fits the 180-minute sessions); default both
    pretrain_methods: tuple[str, ...] = tuple(PRETRAIN_METHODS)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.pretrain_methods) - set(PRETRAIN_METHODS))
        if unknown:
            raise ValueError(f"unknown pretraining method(s) {unknown}; the release pretrains {list(PRETRAIN_METHODS)}")

    def bundle(self, name: str) -> Path:
        return self.repo / "bundles" / name

    @property
    def data(self) -> Path:
        return Path(self.data_root) if self.data_root else default_data_root()

    def protocol(self) -> ProtocolSettings:
        return ProtocolSettings(methods_dir=str(self.repo / "configs" / "methods"),
                                pretrain_bundle=str(self.bundle("dissect_cxr_pretrain")), image_size=self.image_size,
                                finetune_budget=self.finetune_budget, threads=self.threads)

    def pretrain_dir(self, method: str) -> Path:
        return self.run_dir / "pretrain" / method


def pretraining_runs(s: ReleaseSettings) -> list[tuple[Path, list[str], dict[str, Any]]]:
    """``(run_dir, command, record)`` of the DiSSECT and BYOL (quantizer off) runs at the same budget (those of
    ``s.pretrain_methods``)."""
    bundle = s.bundle("dissect_cxr_pretrain")
    runs = []
    for method, quantizer in PRETRAIN_METHODS.items():
        if method not in s.pretrain_methods:
            continue
        out = s.pretrain_dir(method)
        command = bundle_command(bundle, [bundle / "configs" / "train.yaml"], output_dir=out, log_dir=out / "logs",
                                 image_size=s.image_size, quantizer=quantizer, epochs=s.epochs,
                                 batch_size=s.batch_size, num_threads=s.threads, dataset_dir=s.data,
                                 progress_bar=False)
        runs.append((out, command, {"name": method, "method": method, "image_size": s.image_size,
                                    "epochs": s.epochs, "threads": s.threads}))
    return runs


def classification_rows(s: ReleaseSettings) -> list:
    """Random-init (frozen) and supervised-from-scratch rows, and the probe and fine-tune rows of both pretraining
    runs (:func:`require_pretraining`)."""
    require_pretraining(s)
    protocol = s.protocol()
    rows = [reference_row("random", protocol), reference_row("supervised", protocol)]
    for method in PRETRAIN_METHODS:
        rows += checkpoint_rows(method, s.pretrain_dir(method) / "model.pt", method, protocol,
                                label=f"{METHOD_LABELS[method]}, {s.epochs} epochs", finetune=True)
    return rows


def lung_rows(s: ReleaseSettings) -> list[LungRow]:
    """Both pretraining runs fine-tuned and frozen (DiSSECT first, :func:`require_pretraining`), then random init
    (fine-tuned)."""
    require_pretraining(s)
    rows = []
    for method in PRETRAIN_METHODS:
        checkpoint = str(s.pretrain_dir(method) / "model.pt")
        rows += [LungRow(method, mode, checkpoint, method) for mode in ("fine-tuned", "frozen")]
    return rows + [LungRow("random init", "fine-tuned", None, None)]


def segmentation_runs(s: ReleaseSettings) -> list[tuple[LungRow, float, int]]:
    """The lung runs in the order the stage trains them: seed-major, so a stage stopped part way has every row at
    the seeds it reached, and within a seed the larger label fraction first, so the exported run (DiSSECT fine-tuned
    on all labels, seed 0: :func:`export_sources`) is the first."""
    return [(row, fraction, seed) for seed in s.segmentation_seeds for row in lung_rows(s)
            for fraction in sorted(s.segmentation_fractions, reverse=True)]


def started_pretraining(s: ReleaseSettings) -> list[Path]:
    """The folders of the release's pretraining runs that have started (finished or not)."""
    return [s.pretrain_dir(m) for m in PRETRAIN_METHODS if s.pretrain_dir(m).is_dir()]


def require_pretraining(s: ReleaseSettings) -> None:
    """Raise ``RuntimeError`` naming the pretraining runs of the run folder that have not finished."""
    missing = [str(s.pretrain_dir(m)) for m in PRETRAIN_METHODS if not run_finished(s.pretrain_dir(m))]
    if missing:
        raise RuntimeError(f"the pretrain stage has not finished (no model.pt with exit 0 in {missing}): run it first")


def lung_recipe(row: LungRow, fraction: float) -> str:
    """The name of a lung row at a label fraction (its runs over seeds: :func:`lung_key`), e.g.
    ``dissect_fine-tuned_1``."""
    return f"{row.encoder}_{row.mode}_{fraction_key(fraction)}".replace(" ", "_")


def lung_key(row: LungRow, fraction: float, seed: int) -> str:
    """The run folder name of one lung run: ``{lung_recipe}_{seed}``."""
    return f"{lung_recipe(row, fraction)}_{seed}"


def recipe_of(key: str) -> str:
    """The recipe of a lung run folder name (the inverse of :func:`lung_key` without its seed)."""
    return key.rsplit("_", 1)[0]


def stages_record(s: ReleaseSettings) -> dict[str, dict[str, Any]]:
    """``stages.json`` of the run folder: per stage its wall seconds and whether it finished (empty before any)."""
    record_file = s.run_dir / "stages.json"
    return read_json(record_file) if record_file.is_file() else {}


def export_sources(s: ReleaseSettings) -> dict[str, Path]:
    """The weights each shipped bundle gets: the DiSSECT embedder, the Kermany fine-tune and the lung fine-tune on
    all labels (seed 0: :data:`SHIPPED_CLASSIFIER`, :data:`SHIPPED_LUNG_RUN`)."""
    row, bench, fraction = SHIPPED_CLASSIFIER
    return {
        "dissect_cxr_pretrain": s.pretrain_dir("dissect") / "model.pt",
        "dissect_cxr_classification": s.run_dir / "classification" / "finetune" / row
        / f"{bench}_{fraction}_{SHIPPED_SEED}" / "models" / "model.pt",
        "dissect_cxr_lung_segmentation": s.run_dir / "segmentation" / SHIPPED_LUNG_RUN / "models" / "model.pt",
    }


def run_pretraining(s: ReleaseSettings, log: Callable[[str], None]) -> bool:
    """Run (or resume) the pretraining runs of ``s.pretrain_methods``; ``True`` once every release run finished."""
    codes = run_recorded(pretraining_runs(s), threads=s.threads, cwd=s.repo)
    failed = {Path(d).name: c for d, c in codes.items() if c not in (None, 0)}
    if failed:
        raise RuntimeError(f"pretraining runs failed (see their train.log): {failed}")
    return all(run_finished(s.pretrain_dir(m)) for m in PRETRAIN_METHODS)


def run_classification(s: ReleaseSettings, log: Callable[[str], None]) -> None:
    work = s.run_dir / "classification"
    protocol, specs = s.protocol(), list(BENCHMARKS.values())
    data = cache(lambda spec: load_benchmark(spec, s.image_size, work / "images", s.data))
    for row in classification_rows(s):
        run_row(row, specs, RowStore(work / "rows", row), protocol, work, s.data,
                s.bundle("dissect_cxr_classification"), data, log=log)


def run_segmentation(s: ReleaseSettings, log: Callable[[str], None]) -> None:
    overrides = {"num_threads": s.threads, "dataset_dir": str(s.data / "cxr-lung-seg")}
    for row, fraction, seed in segmentation_runs(s):
        run_dir = s.run_dir / "segmentation" / lung_key(row, fraction, seed)
        if discard_stale_run(run_dir, row):
            log(f"[segmentation] {run_dir.name}: trained from another checkpoint, rerun")
        result = train_and_test_lung(
            s.bundle("dissect_cxr_lung_segmentation"), run_dir, row, fraction, seed, s.segmentation_budget,
            s.segmentation_size, overrides, methods_dir=s.repo / "configs" / "methods",
            pretrain_bundle=s.bundle("dissect_cxr_pretrain"))
        log(f"[segmentation] {run_dir.name}: test Dice {format_mean_std(result['test_dice'])}")


def run_export(s: ReleaseSettings, log: Callable[[str], None]) -> None:
    """The three release weights into their bundles, with ``large_files.yml`` and the measured ``eval_metrics``."""
    sources = export_sources(s)
    missing = [str(p) for p in sources.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"export needs the finished runs first; missing: {missing}")
    collected = collect_release(s)
    metrics = bundle_metrics(collected)
    for name, source in sources.items():
        entry = export_bundle_weights(source, s.bundle(name))
        update_metadata(s.bundle(name), metrics[name], RELEASE_VERSION,
                        f"release weights from `scripts/release.py` ({s.epochs} pretraining epochs at "
                        f"{s.image_size} px; eval_metrics measured on the test split)")
        log(f"[export] {name}: {entry['path']} sha256 {entry['hash_val'][:12]}")
    write_performance_sections(s, collected)


def write_performance_sections(s: ReleaseSettings, collected: Mapping[str, Any]) -> None:
    """The ``Performance`` section of each shipped bundle's ``docs/README.md`` from a release record
    (:func:`collect_release`, or :func:`read_release_record` of the committed one): the test figures of the shipped
    weights (:func:`bundle_metrics`), the same recipe over the seeds measured (:func:`seed_context`) and the command.

    Raises:
        ValueError: the record's figures of the shipped weights are not the bundle's ``eval_metrics`` (the
            weights were exported from other runs: export them again).
    """
    metrics, context = bundle_metrics(collected), seed_context(s, collected)
    for name in export_sources(s):
        metadata = read_json(s.bundle(name) / "configs" / "metadata.json")
        if metadata.get("eval_metrics") != metrics[name]:
            raise ValueError(f"{s.bundle(name)}: eval_metrics {metadata.get('eval_metrics')} are not the record's "
                             f"figures of the shipped weights {metrics[name]}; export them again (--stage export)")
        replace_readme_section(s.bundle(name) / "docs" / "README.md", "Performance",
                               performance_markdown(s, metrics[name], context[name]))


def settings_record(s: ReleaseSettings) -> dict[str, Any]:
    """The budget part of ``s`` as ``release.json`` records it (no paths)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(s).items()
            if k not in ("repo", "run_dir", "data_root")}


def read_release_record(s: ReleaseSettings, path: str | os.PathLike) -> dict[str, Any]:
    """A committed ``release.json`` as :func:`collect_release` returns it (the seeds of its classification cells
    are ints again; JSON kept them as strings).

    Raises:
        ValueError: the record was made at another budget than ``s`` (its ``settings``).
    """
    record = read_json(path)
    if record.get("settings") != json.loads(json.dumps(settings_record(s))):
        raise ValueError(f"{path} was made with settings {record.get('settings')}, not {settings_record(s)}: pass "
                         "the release's own budget")
    record["cells_by_seed"] = {row: {bench: _cells_by_int_seed(fractions) for bench, fractions in benchmarks.items()}
                               for row, benchmarks in record.get("cells_by_seed", {}).items()}
    return record


#: a runner returns ``False`` when it ran only part of its stage (``pretrain`` with one of its methods)
STAGE_RUNNERS: dict[str, Callable[[ReleaseSettings, Callable[[str], None]], bool | None]] = {
    "pretrain": run_pretraining, "classification": run_classification, "segmentation": run_segmentation,
    "export": run_export,
}


def run_stage(name: str, s: ReleaseSettings, log: Callable[[str], None] = print) -> None:
    """Run (or resume) one stage and add its wall time to ``stages.json``."""
    if name not in STAGE_RUNNERS:
        raise ValueError(f"unknown stage {name!r}; stages: {list(STAGES)}")
    start, finished = time.time(), False
    try:
        finished = STAGE_RUNNERS[name](s, log) is not False
    finally:
        record = stages_record(s)
        entry = record.setdefault(name, {"wall_seconds": 0.0, "finished": False})
        entry["wall_seconds"] = round(entry["wall_seconds"] + time.time() - start, 1)
        entry["finished"] = finished
        write_json(s.run_dir / "stages.json", record)


def goal_status(value: float | None, threshold: float) -> str:
    """``"met"`` / ``"not met"`` of a measured mean against its goal; ``"not measured"`` without a finite value."""
    if value is None or not math.isfinite(value):
        return "not measured"
    return "met" if value >= threshold else "not met"


def paired_difference(a: Mapping[int, float], b: Mapping[int, float]) -> MeanStd:
    """Mean +- sd over the seeds both have of ``a[seed] - b[seed]`` (the same label sample for both rows)."""
    return mean_std(a[seed] - b[seed] for seed in sorted(set(a) & set(b)))


def _cells_by_int_seed(fractions: Mapping[str, Mapping[Any, Any]]) -> dict[str, dict[int, Any]]:
    """``{fraction: {seed: cell}}`` with int seeds (RowStores and ``release.json`` keep them as strings)."""
    return {f: {int(seed): cell for seed, cell in seeds.items()} for f, seeds in fractions.items()}


def collect_release(s: ReleaseSettings) -> dict[str, Any]:
    """What the run folder holds: classification summary (:func:`summarise`), every classification cell by row,
    benchmark, fraction and seed, lung runs, pretraining summaries and stage times."""
    stored = RowStore.load_all(s.run_dir / "classification" / "rows")
    by_seed = {row.name: {bench: _cells_by_int_seed(record.get("cells", {})) for bench, record in benchmarks.items()}
               for row, benchmarks in stored}
    return {
        "classification": summarise(stored),
        "cells_by_seed": by_seed,
        "lung": collect_runs(s.run_dir / "segmentation")["lung"],
        "pretraining": [{k: v for k, v in summarise_run(d).items() if not k.startswith("_")}
                        for d in started_pretraining(s)],
        "stages": stages_record(s),
    }


def lung_summary(lung: Mapping[str, Any]) -> dict[str, dict[str, MeanStd]]:
    """Test Dice and HD95 (each run's mean over test images) as mean +- sd over seeds, by ``encoder_mode_fraction``."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for key, result in lung.items():
        groups.setdefault(recipe_of(key), []).append(result)
    return {key: {m: mean_std(r[m]["mean"] for r in runs) for m in ("test_dice", "test_hd95")}
            for key, runs in sorted(groups.items())}


def dissect_vs_byol(collected: Mapping[str, Any]) -> dict[str, dict[str, MeanStd]]:
    """DiSSECT - BYOL linear-probe test AUC per benchmark and probe fraction (:func:`paired_difference`)."""
    def aucs(row: str, bench: str, f: str) -> dict[int, float]:
        cells = collected["cells_by_seed"].get(row, {}).get(bench, {}).get(f, {})
        return {seed: cell["test_auc"] for seed, cell in cells.items()}

    return {bench: {fraction_key(f): paired_difference(aucs("dissect", bench, fraction_key(f)),
                                                       aucs("byol", bench, fraction_key(f)))
                    for f in LABEL_FRACTIONS} for bench in BENCHMARKS}


def lung_dissect_vs_byol(lung: Mapping[str, Any]) -> dict[tuple[str, float], MeanStd]:
    """DiSSECT - BYOL lung test Dice (each run's mean over test images) per ``(mode, label fraction)``, paired over
    the seeds both have (:func:`paired_difference`); only where both encoders have a run."""
    dice: dict[tuple[str, str, float], dict[int, float]] = {}
    for result in lung.values():
        row = result["row"]
        dice.setdefault((row["encoder"], row["mode"], float(row["fraction"])), {})[int(result["seed"])] = \
            result["test_dice"]["mean"]
    return {(mode, fraction): paired_difference(seeds, dice[("byol", mode, fraction)])
            for (encoder, mode, fraction), seeds in sorted(dice.items())
            if encoder == "dissect" and ("byol", mode, fraction) in dice}


def _summary_cell(classification: Mapping[str, Any], row: str, bench: str, fraction: str) -> Mapping[str, Any]:
    """A classification cell's metrics over its label samples (:func:`summarise`; empty when not measured)."""
    return classification.get(row, {}).get(bench, {}).get("fractions", {}).get(fraction, {})


def _value(classification: Mapping[str, Any], row: str, bench: str, fraction: str, metric: str) -> float | None:
    entry = _summary_cell(classification, row, bench, fraction).get(metric)
    return entry["mean"] if entry and entry.get("n") else None


def goals(collected: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every goal of the issue with its measured value and status (never tuned on: test figures only reported)."""
    out = [{"goal": text, "value": _value(collected["classification"], row, bench, fraction, metric),
            "threshold": threshold} for text, row, bench, fraction, metric, threshold in GOALS]
    lung = lung_summary(collected["lung"]).get(SHIPPED_LUNG_RECIPE, {}).get("test_dice")
    out.append({"goal": f"lung test Dice >= {LUNG_DICE_GOAL}", "value": lung.mean if lung and lung.n else None,
                "threshold": LUNG_DICE_GOAL})
    for item in out:
        item["status"] = goal_status(item["value"], item["threshold"])
    differences = dissect_vs_byol(collected)
    for bench in BENCHMARKS:
        for fraction in ("0.01", "0.05"):
            diff = differences[bench][fraction]
            out.append({"goal": f"DiSSECT above BYOL by more than the spread ({bench}, {float(fraction):.0%} probe)",
                        "value": diff.mean if diff.n else None, "spread": diff.std if diff.n else None,
                        "status": "not measured" if diff.n < 2 else ("met" if diff.mean > diff.std else "not met")})
    return out


def performance_markdown(s: ReleaseSettings, metrics: Mapping[str, float | None], context: str) -> str:
    """A shipped bundle's Performance section: the test figures of its weights, ``context`` (the same recipe over
    the other seeds), the budget and the exact command."""
    lines = [f"Release {RELEASE_VERSION}, measured on the test split by the release run (tables of every row, "
             "mean ± sd over seeds: `results/release.md`). Pretraining: DiSSECT, ResNet-18, "
             f"{s.image_size} px, {s.epochs} epochs on the pretraining pool; the BYOL control had the same budget.",
             "", "| metric (the shipped `models/model.pt`) | value |", "|---|---|"]
    lines += [f"| {key} | {'—' if value is None else f'{value:.3f}'} |" for key, value in metrics.items()]
    lines += ["", context, "", "Reproduce (resumable; `--plan` prints the stages and their estimated time):", "",
              "```bash", f"python scripts/release.py --epochs {s.epochs} --threads {s.threads} --ft-steps "
              f"{s.finetune_budget.steps} --seg-steps {s.segmentation_budget.steps} --seg-seeds "
              + " ".join(map(str, s.segmentation_seeds)), "```"]
    return "\n".join(lines)


def _shipped_cell(collected: Mapping[str, Any]) -> Mapping[str, Any]:
    """The test metrics of the shipped classifier's own run (:data:`SHIPPED_CLASSIFIER` at :data:`SHIPPED_SEED`)."""
    row, bench, fraction = SHIPPED_CLASSIFIER
    return collected["cells_by_seed"].get(row, {}).get(bench, {}).get(fraction, {}).get(SHIPPED_SEED, {})


def bundle_metrics(collected: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``eval_metrics`` of each shipped bundle: the test figures of the weights it ships (:func:`export_sources`:
    the seed-0 runs; the embedder's by its 10 % linear probe, the mean over the label samples)."""
    c, cell = collected["classification"], _shipped_cell(collected)
    lung = collected["lung"].get(SHIPPED_LUNG_RUN, {})
    return {
        "dissect_cxr_pretrain": {f"{b}_linear_probe_10pct_test_auc": _value(c, "dissect", b, "0.1", "test_auc")
                                 for b in BENCHMARKS},
        "dissect_cxr_classification": {"kermany_test_auc": cell.get("test_auc"),
                                       "kermany_test_accuracy": cell.get("test_acc")},
        "dissect_cxr_lung_segmentation": {"test_mean_dice": lung.get("test_dice", {}).get("mean"),
                                          "test_hd95": lung.get("test_hd95", {}).get("mean")},
    }


def seed_context(s: ReleaseSettings, collected: Mapping[str, Any]) -> dict[str, str]:
    """Per shipped bundle, one sentence on the spread of its recipe over the seeds measured so far."""
    kermany = _summary_cell(collected["classification"], *SHIPPED_CLASSIFIER)
    lung = lung_summary(collected["lung"]).get(SHIPPED_LUNG_RECIPE, {})
    n_lung = len(s.segmentation_seeds)
    return {
        "dissect_cxr_pretrain": "Linear probes on the frozen embedder: L2 logistic regression on 10 % of each "
                                "benchmark's train split, mean over 5 patient-level label samples.",
        "dissect_cxr_classification": "The same recipe (fine-tuned on all Kermany train labels) over seeds 0-2: "
                                      f"test AUC {format_mean_std(kermany.get('test_auc'))}, accuracy "
                                      f"{format_mean_std(kermany.get('test_acc'))}; the shipped weights are seed 0.",
        "dissect_cxr_lung_segmentation": "The same recipe (DiSSECT encoder fine-tuned on all frontal train images) "
                                         f"over the seeds finished so far ({lung['test_dice'].n if lung else 0} of "
                                         f"{n_lung}): test Dice {format_mean_std(lung.get('test_dice'))}, HD95 "
                                         f"{format_mean_std(lung.get('test_hd95'))} px; the shipped weights are "
                                         "seed 0.",
    }


def _stage_cells(s: ReleaseSettings) -> dict[str, tuple[int, int, float]]:
    """Per stage: cells finished, cells in all and the estimated seconds of what is left."""
    steps_per_epoch = math.ceil(len(pretraining_pool(s.data)) / s.batch_size)
    seconds_per = dict(ESTIMATED_SECONDS_PER_STEP)
    summaries = {m: summarise_run(s.pretrain_dir(m)) for m in PRETRAIN_METHODS}  # each run's log read once
    for summary in summaries.values():  # measured seconds per iteration of what has run
        if summary["iterations_done"]:
            seconds_per["pretrain"] = summary["training_time_s"] / summary["iterations_done"]
    pretrain_left = sum(0 if run_finished(s.pretrain_dir(m)) else
                        s.epochs * steps_per_epoch - summaries[m]["iterations_done"] for m in PRETRAIN_METHODS)
    out = {"pretrain": (sum(run_finished(s.pretrain_dir(m)) for m in PRETRAIN_METHODS), len(PRETRAIN_METHODS),
                        pretrain_left * seconds_per["pretrain"])}
    # rows of runs that have not finished yet are counted as they will be
    protocol, n_pretrained = s.protocol(), len(PRETRAIN_METHODS)
    probes = len(BENCHMARKS) * len(protocol.probe_fractions) * len(protocol.probe_seeds)
    finetunes = len(BENCHMARKS) * len(protocol.finetune_fractions) * len(protocol.finetune_seeds)
    stored = RowStore.load_all(s.run_dir / "classification" / "rows")
    done = {row.name: sum(len(seeds) for b in benchmarks.values() for seeds in b.get("cells", {}).values())
            for row, benchmarks in stored}
    measured = [CellResult.from_dict(c) for row, benchmarks in stored if row.mode == "finetune"
                for b in benchmarks.values() for seeds in b.get("cells", {}).values() for c in seeds.values()]
    if any(c.steps for c in measured):
        seconds_per["finetune"] = sum(c.seconds for c in measured) / sum(c.steps for c in measured if c.steps)
    probe_rows, finetune_rows = 1 + n_pretrained, 1 + n_pretrained
    done_probe = sum(v for k, v in done.items() if not k.endswith("finetune") and k != "supervised")
    done_ft = done.get("supervised", 0) + sum(v for k, v in done.items() if k.endswith("finetune"))
    ft_steps = s.finetune_budget.steps
    out["classification"] = (done_probe + done_ft, probe_rows * probes + finetune_rows * finetunes,
                             (probe_rows * probes - done_probe) * seconds_per["probe_cell"]
                             + (finetune_rows * finetunes - done_ft) * ft_steps * seconds_per["finetune"])
    lung_runs = [p for p in (s.run_dir / "segmentation").glob("*/result.json")]
    trained = [read_json(p) for p in lung_runs]
    if trained:
        seconds_per["segmentation"] = sum(r["train_seconds"] for r in trained) / sum(r["steps"] for r in trained)
    lung_total = (1 + 2 * n_pretrained) * len(s.segmentation_fractions) * len(s.segmentation_seeds)
    out["segmentation"] = (len(lung_runs), lung_total,
                           (lung_total - len(lung_runs)) * s.segmentation_budget.steps * seconds_per["segmentation"])
    exported = stages_record(s).get("export", {}).get("finished", False)
    bundles = len(export_sources(s))
    out["export"] = (bundles if exported else 0, bundles, 0.0 if exported else 60.0)  # of this run folder
    return out


def plan(s: ReleaseSettings) -> str:
    """The stages, what of each is finished and the estimated time of the rest (measured seconds per step of the
    run folder's finished work where there is any, else :data:`ESTIMATED_SECONDS_PER_STEP`)."""
    cells = _stage_cells(s)
    lines = [f"release run in {s.run_dir} ({s.epochs} pretraining epochs, {s.image_size} px; lung at "
             f"{s.segmentation_size} px)"]
    for i, name in enumerate(STAGES, 1):
        done, total, seconds = cells[name]
        lines.append(f"{i}. {name:<15} {done}/{total} finished, about {seconds / 3600:.1f} h left")
    lines.append(f"total about {sum(c[2] for c in cells.values()) / 3600:.1f} h")
    return "\n".join(lines)


def runs_seconds(collected: Mapping[str, Any]) -> dict[str, float]:
    """Per stage, the time its finished runs recorded themselves: pretraining wall seconds, every classification
    cell's seconds, every lung run's training seconds. Unlike ``stages.json`` (the launcher's wall clock, lost when a
    launcher is killed) it covers every attempt; it leaves out the launcher's own work between runs."""
    return {
        "pretrain": sum(run["wall_seconds"] or 0.0 for run in collected["pretraining"]),
        "classification": sum(cell.get("seconds") or 0.0 for benchmarks in collected["cells_by_seed"].values()
                              for fractions in benchmarks.values() for seeds in fractions.values()
                              for cell in seeds.values()),
        "segmentation": sum(result["train_seconds"] for result in collected["lung"].values()),
    }


def release_markdown(s: ReleaseSettings, collected: Mapping[str, Any], machine_info: Mapping[str, Any],
                     goal_rows: list[dict[str, Any]]) -> str:
    """The head of ``results/release.md``: budget, machine, wall time per stage, goals and DiSSECT vs BYOL."""
    ft, seg = s.finetune_budget, s.segmentation_budget
    lines = ["# Release run", "", f"Generated by {REPORT_SOURCE}.", "",
             f"- Budget: DiSSECT and BYOL (quantizer off) pretraining, ResNet-18, {s.image_size} px, {s.epochs} "
             f"epochs each, batch {s.batch_size}; fine-tune cells {ft.steps} steps of batch {ft.batch_size}; lung "
             f"runs {seg.steps} steps of batch {seg.batch_size} at {s.segmentation_size} px, seeds "
             f"{list(s.segmentation_seeds)}.",
             f"- Machine: {machine_info['cpu_count']} cores, AMX {'yes' if machine_info['amx'] else 'no'}, load "
             f"{' / '.join(map(str, machine_info['load_average']))} (1 / 5 / 15 min) when this report was written; "
             f"{s.threads} threads per run.", "",
             "Wall time: the launcher's clock over every attempt (`stages.json`); runs' own time: what the finished "
             "runs recorded (pretraining wall time, classification cells, lung training).", "",
             "| stage | wall time | runs' own time | finished |", "|---|---|---|---|"]
    own = runs_seconds(collected)
    for name in STAGES:
        entry = collected["stages"].get(name)
        wall = f"{entry['wall_seconds'] / 3600:.2f} h" if entry else "—"
        runs = f"{own[name] / 3600:.2f} h" if own.get(name) else "—"
        lines.append(f"| {name} | {wall} | {runs} | {bool(entry and entry['finished'])} |")
    lines += ["", "## Goals (test figures, reported, never tuned on)", "", "| goal | measured | status |",
              "|---|---|---|"]
    for g in goal_rows:
        value = "—" if g["value"] is None else (f"{g['value']:+.3f} ± {g['spread']:.3f}" if "spread" in g
                                                else f"{g['value']:.3f}")
        lines.append(f"| {g['goal']} | {value} | {g['status']} |")
    lines += ["", "## DiSSECT - BYOL", "", "Linear-probe test AUC difference, mean ± sd over the label samples both "
              "rows share (positive: DiSSECT better; a difference within its sd is no difference).", "",
              "| benchmark | " + " | ".join(f"{f:.0%}" for f in LABEL_FRACTIONS) + " |",
              "|---" * (len(LABEL_FRACTIONS) + 1) + "|"]
    for bench, by_fraction in dissect_vs_byol(collected).items():
        lines.append(f"| {BENCHMARKS[bench].title} | "
                     + " | ".join(format_mean_std(by_fraction[fraction_key(f)]) for f in LABEL_FRACTIONS) + " |")
    lung = lung_dissect_vs_byol(collected["lung"])
    if lung:
        lines += ["", "Lung segmentation test Dice difference, mean ± sd over the seeds both rows have (a seed "
                  "draws the same label sample for both):", "",
                  "| encoder weights | label fraction | seeds | DiSSECT - BYOL | reading |", "|---|---|---|---|---|"]
        for (mode, fraction), diff in lung.items():
            reading = ("one seed: no spread yet" if diff.n < 2 else
                       "DiSSECT better by more than the spread" if diff.mean > diff.std else
                       "BYOL better by more than the spread" if -diff.mean > diff.std else "within the spread")
            lines.append(f"| {mode} | {fraction:.0%} | {diff.n} | {diff.mean:+.3f} ± {diff.std:.3f} | {reading} |")
    lines.append("")
    return "\n".join(lines) + "\n"


def recorded_runs(record: Mapping[str, Any]) -> set[str]:
    """The finished work a release record (``collect_release``, ``release.json``) holds, one name each:
    ``pretraining/<run>``, ``classification/<row>/<benchmark>/<fraction>/<seed>`` and ``lung/<run>``."""
    return ({f"pretraining/{run['run']}" for run in record.get("pretraining", [])}
            | {f"classification/{row}/{bench}/{fraction}/{seed}"
               for row, benchmarks in record.get("cells_by_seed", {}).items()
               for bench, fractions in benchmarks.items() for fraction, seeds in fractions.items() for seed in seeds}
            | {f"lung/{run}" for run in record.get("lung", {})})


def runs_missing_from_run_folder(results_dir: str | os.PathLike, collected: Mapping[str, Any]) -> list[str]:
    """The finished runs (:func:`recorded_runs`) that ``results_dir/release.json`` records and the run folder's
    record ``collected`` (:func:`collect_release`) does not hold, sorted; empty without a ``release.json``."""
    previous = Path(results_dir) / "release.json"
    return sorted(recorded_runs(read_json(previous)) - recorded_runs(collected)) if previous.is_file() else []


def require_recorded_runs(s: ReleaseSettings, results_dir: str | os.PathLike,
                          collected: Mapping[str, Any] | None = None) -> None:
    """Raise ``RuntimeError`` when the run folder lacks finished runs that ``results_dir/release.json`` records
    (:func:`runs_missing_from_run_folder`; ``collected`` defaults to :func:`collect_release` of ``s``)."""
    missing = runs_missing_from_run_folder(results_dir, collect_release(s) if collected is None else collected)
    if missing:
        raise RuntimeError(
            f"{s.run_dir} lacks {len(missing)} finished run(s) that {Path(results_dir) / 'release.json'} records "
            f"({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}): rewriting the report would drop them, "
            f"so {results_dir} is left as it is. Resume in the run folder that holds them (--run-dir) or write the "
            "report elsewhere (--results).")


def write_release_report(s: ReleaseSettings, results_dir: str | os.PathLike) -> dict[str, Any]:
    """``release.{json,md}`` in ``results_dir`` with the evaluation package's own reports beside them, each once its
    stage has results: ``release_pretraining.{json,md}`` + ``_curves.png``, ``release_classification.{json,md,png}``
    and ``release_segmentation.{json,md}``; returns the record.

    Raises:
        RuntimeError: ``results_dir/release.json`` records finished runs that the run folder does not hold (a new
            machine, another ``--run-dir``; :func:`require_recorded_runs`); rewriting would drop them, so nothing is
            written.
    """
    results_dir = Path(results_dir)
    collected = collect_release(s)
    require_recorded_runs(s, results_dir, collected)
    machine_info, goal_rows = machine_state(), goals(collected)
    parts_written = []  # (title, report name) of the transfer stages that have results
    if collected["classification"]:
        write_label_efficiency_report(s.run_dir / "classification" / "rows", results_dir / "release_classification",
                                      s.protocol(), source=REPORT_SOURCE)
        parts_written.append(("Classification", "release_classification"))
    if collected["lung"]:
        write_segmentation_report({**collect_runs(s.run_dir / "segmentation"), "missing_encoders": []},
                                  results_dir / "release_segmentation", source=REPORT_SOURCE)
        parts_written.append(("Lung segmentation", "release_segmentation"))
    pretrained = started_pretraining(s)
    summaries = (write_pretraining_report(pretrained, results_dir, name="release_pretraining", source=REPORT_SOURCE)
                 if pretrained else [])
    lung = {k: {m: v.as_dict() for m, v in row.items()} for k, row in lung_summary(collected["lung"]).items()}
    settings = settings_record(s)
    lung_vs_byol = [{"mode": mode, "fraction": fraction, **diff.as_dict()}
                    for (mode, fraction), diff in lung_dissect_vs_byol(collected["lung"]).items()]
    record = {"settings": settings, "machine": machine_info, "goals": goal_rows, "lung_summary": lung,
              "lung_dissect_vs_byol": lung_vs_byol,
              "bundle_metrics": bundle_metrics(collected), **collected}
    write_json(results_dir / "release.json", record)
    parts = [release_markdown(s, collected, machine_info, goal_rows)]
    if summaries:  # the summary rows; release_pretraining.md has every epoch
        body = [line for line in pretraining_markdown(summaries, REPORT_SOURCE, per_epoch=False).splitlines()[1:]
                if not line.startswith("Generated by ")]
        parts.append("# Pretraining\n" + "\n".join(body)
                     + "\nEvery epoch: `release_pretraining.md`; curves: `release_pretraining_curves.png`.\n")
    for title, name in parts_written:
        lines = (results_dir / f"{name}.md").read_text().splitlines()[1:]  # below the part's own title
        body = "\n".join(line for line in lines if not line.startswith("Generated by "))
        parts.append(f"# {title}\n{body}")
    (results_dir / "release.md").write_text("\n".join(parts))
    return record
