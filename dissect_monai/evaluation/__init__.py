"""The evaluation protocol as library code: metrics (one mean +- sd), frozen features and probes, the
label-efficiency protocol with its typed rows and resumable store, and segmentation transfer runs; fine-tuning and
segmentation go through the bundles themselves (:mod:`dissect_monai.evaluation.bundle_runs`)."""

from .benchmarks import BENCHMARKS, BenchmarkData, BenchmarkSpec, load_benchmark
from .bundle_runs import (
    StepBudget,
    TrainedRun,
    bundle_workflow,
    method_assignments,
    method_encoder_config,
    run_workflow,
    train_for_steps,
)
from .features import extract_features
from .label_efficiency import (
    REFERENCE_ROWS,
    ProtocolSettings,
    checkpoint_rows,
    finetune_cell,
    frozen_extras,
    probe_cell,
    reference_row,
    row_features,
    run_row,
    summarise,
)
from .metrics import MeanStd, format_mean_std, mean_std, roc_auc, roc_auc_by_group
from .probes import DEFAULT_CS, LogisticProbe, fit_logistic_probe, knn_accuracy
from .results import CellResult, EvaluationRow, RowStore, file_fingerprint, fraction_key, read_json, write_json
from .segmentation import (
    CT_ORGANS,
    LungRow,
    collect_runs,
    discard_stale_run,
    read_metric_csv,
    train_and_test_ct,
    train_and_test_lung,
)

__all__ = [
    "BENCHMARKS",
    "CT_ORGANS",
    "DEFAULT_CS",
    "REFERENCE_ROWS",
    "BenchmarkData",
    "BenchmarkSpec",
    "CellResult",
    "EvaluationRow",
    "LogisticProbe",
    "LungRow",
    "MeanStd",
    "ProtocolSettings",
    "RowStore",
    "StepBudget",
    "TrainedRun",
    "bundle_workflow",
    "checkpoint_rows",
    "collect_runs",
    "discard_stale_run",
    "extract_features",
    "file_fingerprint",
    "finetune_cell",
    "fit_logistic_probe",
    "format_mean_std",
    "fraction_key",
    "frozen_extras",
    "knn_accuracy",
    "load_benchmark",
    "mean_std",
    "method_assignments",
    "method_encoder_config",
    "probe_cell",
    "read_json",
    "read_metric_csv",
    "reference_row",
    "roc_auc",
    "roc_auc_by_group",
    "row_features",
    "run_row",
    "run_workflow",
    "summarise",
    "train_and_test_ct",
    "train_and_test_lung",
    "train_for_steps",
    "write_json",
]
