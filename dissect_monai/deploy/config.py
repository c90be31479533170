"""Configuration of the DICOM inference node, read from a YAML file (see ``configs/deploy/node.yaml``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["DestinationConfig", "NodeConfig", "PipelineConfig", "ResultsConfig", "RetryConfig", "load_node_config"]


@dataclass
class DestinationConfig:
    """Where results go: a C-STORE SCP (the PACS) and optionally a DICOMweb STOW-RS endpoint."""

    ae_title: str = "ORTHANC"
    host: str = "127.0.0.1"
    port: int = 4242
    stow_url: str | None = None


@dataclass
class RetryConfig:
    """Backoff for failed sends: ``initial_seconds * 2**attempt`` capped at ``max_seconds``; results stay queued."""

    initial_seconds: float = 1.0
    max_seconds: float = 60.0


# ---------------------------------------------------------------- study results (jobs, versions, failure reports)
@dataclass
class ResultsConfig:
    """How study jobs end (key ``results`` of the node config); see :mod:`dissect_monai.deploy.jobs`.

    Attributes:
        job_timeout_seconds: a job running longer is stopped (its child process killed) and the study fails
            with reason ``timeout``; ``0`` runs jobs in the node's process without a limit.
        failure_report: send a Comprehensive SR to the PACS when a study cannot be processed.
        failure_text: the report's sentence, followed by the failure category in general terms (no file
            names, no attribute values), e.g. "...: an image of the study could not be read."
        failure_series_description: SeriesDescription of the failure report series.
    """

    job_timeout_seconds: float = 600.0
    failure_report: bool = True
    failure_text: str = "The AI algorithm could not process this study"
    failure_series_description: str = "AI processing failed - not for clinical use"


# ---------------------------------------------------------------- pipelines
@dataclass
class PipelineConfig:
    """One inference pipeline: which series it takes, which bundle runs, and what it writes.

    Attributes:
        name: pipeline name (logs, metrics, job results).
        bundle: path of the MONAI bundle directory (relative paths are resolved against the config file).
        output: ``"sr"`` (classification -> Comprehensive 3D SR) or ``"seg"`` (segmentation -> DICOM SEG).
        rules: series selection; keys are DICOM keywords, values a regex (str, full match, case-insensitive),
            or a list of required / ``"!"``-excluded multi-value items (e.g. ImageType ``["!LOCALIZER"]``).
        config_file: inference config inside the bundle (default: ``configs/inference.{yaml,yml,json}``).
        model_file: weights inside the bundle (a state dict, loaded with ``weights_only=True``).
        findings: classification output channel -> finding name (default: the bundle's ``channel_def``).
        thresholds: Present / Absent threshold, one for all findings or per finding.
        segments: segmentation label -> segment name (default: the bundle's ``channel_def`` minus label 0).
        single_instance: run on each instance separately (CR/DX) instead of on the whole series (CT/MR).
        quality_gate: an input quality gate inside the bundle (``models/quality_gate.pt``, see
            :class:`dissect_monai.networks.quality_gate.EmbeddingGate`); an SR pipeline then reports
            ``not_assessed_text`` instead of probabilities for an input the gate flags.
        not_assessed_text: what the SR says for such an input.
    """

    name: str
    bundle: Path
    output: str
    rules: dict[str, Any] = field(default_factory=dict)
    config_file: str | None = None
    model_file: str = "models/model.pt"
    findings: dict[int, str] | None = None
    thresholds: float | dict[str, float] = 0.5
    segments: dict[int, str] | None = None
    single_instance: bool = False
    quality_gate: str | None = None
    not_assessed_text: str = "Not assessed: the image does not look like a frontal chest radiograph"


@dataclass
class NodeConfig:
    """The node: DICOM listener, spool, scheduling, health endpoint, destination and pipelines.

    ``dicom_timeout_seconds`` bounds association negotiation, waiting for a DIMSE message and network silence, for
    the listener and the sender alike (pynetdicom's 30 / 60 s defaults abort transfers on a busy host).
    """

    spool_dir: Path
    pipelines: list[PipelineConfig]
    ae_title: str = "DISSECT_AI"
    host: str = "127.0.0.1"
    port: int = 11112
    allowed_calling_aets: list[str] = field(default_factory=list)
    stable_seconds: float = 10.0
    poll_seconds: float = 0.5
    health_host: str = "127.0.0.1"
    health_port: int = 0
    torch_threads: int = 1
    dicom_timeout_seconds: float = 120.0
    destination: DestinationConfig = field(default_factory=DestinationConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    results: ResultsConfig = field(default_factory=ResultsConfig)


def _require(mapping: dict, key: str, where: str) -> Any:
    if key not in mapping:
        raise ValueError(f"{where}: missing required key {key!r}")
    return mapping[key]


def _int_keyed(value: dict | None, where: str) -> dict[int, str] | None:
    if value is None:
        return None
    try:
        return {int(k): str(v) for k, v in value.items()}
    except (TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"{where}: expected a mapping of integer -> name, got {value!r}") from err


def load_node_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> NodeConfig:
    """Read and validate a node YAML config; relative paths are resolved against the file's folder.

    Args:
        path: the YAML file.
        overrides: top-level keys replacing the file's values (e.g. ``{"port": 0}`` in tests).

    Raises:
        ValueError: naming the file and the offending key when the config is invalid.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: cannot read node config: {err}") from err
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a node config must be a mapping")
    raw.update(overrides or {})
    base = path.resolve().parent
    known = set(NodeConfig.__dataclass_fields__)
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)} (known: {sorted(known)})")
    pipelines = []
    for i, item in enumerate(_require(raw, "pipelines", str(path)) or []):
        where = f"{path}: pipelines[{i}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where}: must be a mapping")
        bad = set(item) - set(PipelineConfig.__dataclass_fields__)
        if bad:
            raise ValueError(f"{where}: unknown keys {sorted(bad)}")
        output = str(_require(item, "output", where)).lower()
        if output not in ("sr", "seg"):
            raise ValueError(f"{where}: output must be 'sr' or 'seg', got {output!r}")
        bundle = Path(os.path.expandvars(str(_require(item, "bundle", where))))
        pipelines.append(
            PipelineConfig(
                **{
                    **item,
                    "name": str(_require(item, "name", where)),
                    "bundle": bundle if bundle.is_absolute() else (base / bundle).resolve(),
                    "output": output,
                    "rules": dict(item.get("rules") or {}),
                    "findings": _int_keyed(item.get("findings"), f"{where}.findings"),
                    "segments": _int_keyed(item.get("segments"), f"{where}.segments"),
                }
            )
        )
    if not pipelines:
        raise ValueError(f"{path}: at least one pipeline is required")
    spool = Path(os.path.expandvars(str(_require(raw, "spool_dir", str(path)))))
    destination = raw.pop("destination", None) or {}
    retry = raw.pop("retry", None) or {}
    results = raw.pop("results", None) or {}
    try:
        return NodeConfig(
            **{
                **raw,
                "spool_dir": spool if spool.is_absolute() else (base / spool).resolve(),
                "pipelines": pipelines,
                "allowed_calling_aets": [str(a) for a in raw.get("allowed_calling_aets") or []],
                "destination": DestinationConfig(**destination),
                "retry": RetryConfig(**retry),
                "results": ResultsConfig(**results),
            }
        )
    except TypeError as err:
        raise ValueError(f"{path}: {err}") from err
