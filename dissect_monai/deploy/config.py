"""Configuration of the DICOM inference node, read from a YAML file (see ``configs/deploy/node.yaml``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "AssociationConfig",
    "DestinationConfig",
    "IntakeConfig",
    "NodeConfig",
    "PipelineConfig",
    "ResultsConfig",
    "RetentionConfig",
    "RetryConfig",
    "SecurityConfig",
    "StowAuthConfig",
    "TLSConfig",
    "load_node_config",
]


# ---------------------------------------------------------------- network, intake, retention
# (listener hygiene, identity, what is acknowledged, how long the spool keeps what it finished)


@dataclass
class AssociationConfig:
    """Limits of the DICOM listener, so idle, half-open or greedy peers cannot hold every slot.

    Attributes:
        acse_timeout_seconds: longest wait for an A-ASSOCIATE-RQ after a connection opens (and for release).
        dimse_timeout_seconds: longest wait for the next DIMSE message inside an association.
        network_timeout_seconds: longest network silence, also mid-PDU (a socket timeout on every receive), after
            which the connection is closed and its slot is free again. pynetdicom counts the time the node spends
            answering a C-STORE (fsync on a loaded disk) as silence too, hence not lower than that may take.
        max_associations: associations served at once; more are rejected ("local limit exceeded").
        max_associations_per_peer: connections at once from one IP address; more are closed unanswered.
    """

    acse_timeout_seconds: float = 30.0
    dimse_timeout_seconds: float = 120.0
    network_timeout_seconds: float = 60.0
    max_associations: int = 16
    max_associations_per_peer: int = 8


@dataclass
class TLSConfig:
    """DICOM over TLS (PS3.15 B.1): the node's certificate and key, and the CA bundle that signs its peers.

    With ``ca_certificates`` and ``require_client_certificate`` a peer without a certificate from that CA cannot
    even start an association. Relative paths are resolved against the config file's folder.
    """

    certificate: Path
    private_key: Path
    ca_certificates: Path | None = None
    require_client_certificate: bool = True


@dataclass
class SecurityConfig:
    """Who may talk to the node, next to ``allowed_calling_aets`` (AE titles match exactly, case-sensitively).

    Attributes:
        require_called_aet: reject associations whose called AE title is not the node's ``ae_title``.
        allowed_peers: IP addresses or CIDR networks (``10.1.2.0/24``) allowed to connect; empty = any address.
        tls: serve DICOM over TLS only (no plain listener) when set.
    """

    require_called_aet: bool = True
    allowed_peers: list[str] = field(default_factory=list)
    tls: TLSConfig | None = None


#: SOP classes the bundles' reader takes: radiographs and CT / MR slices (keywords or UIDs in a config)
DEFAULT_INPUT_SOP_CLASSES = (
    "ComputedRadiographyImageStorage",
    "DigitalXRayImageStorageForPresentation",
    "DigitalXRayImageStorageForProcessing",
    "CTImageStorage",
    "MRImageStorage",
    "SecondaryCaptureImageStorage",
)


@dataclass
class IntakeConfig:
    """What the node checks before it acknowledges a C-STORE (refused instances are never spooled).

    Attributes:
        sop_classes: SOP classes accepted as input (keywords or UIDs); anything else is refused with 0xC000.
        photometric_interpretations: accepted PhotometricInterpretation values (the pipelines read grey images).
        max_instance_bytes: largest decoded pixel data (Rows x Columns x samples x bits x frames, computed from the
            header, so compression cannot bypass it); larger instances are refused with 0xA700.
        min_free_bytes: free space the spool's file system must keep; below it C-STOREs are refused with 0xA700.
        spool_max_bytes: optional quota on what the spool holds in ``incoming/``, ``processing/`` and ``outbox/``.
    """

    sop_classes: list[str] = field(default_factory=lambda: list(DEFAULT_INPUT_SOP_CLASSES))
    photometric_interpretations: list[str] = field(default_factory=lambda: ["MONOCHROME1", "MONOCHROME2"])
    max_instance_bytes: int = 64 * 2**20
    min_free_bytes: int = 512 * 2**20
    spool_max_bytes: int | None = None


@dataclass
class RetentionConfig:
    """Pruning of finished work: ``done/`` (inputs of processed jobs) and ``sent/`` (delivered results).

    Oldest jobs go first, until both the age and the total size limit hold; ``None`` disables a limit.
    ``failed/`` is never pruned (it waits for a human).
    """

    done_max_age_hours: float | None = 24.0
    done_max_bytes: int | None = 2 * 2**30
    sent_max_age_hours: float | None = 24.0 * 7
    sent_max_bytes: int | None = 2**30
    interval_seconds: float = 60.0


@dataclass
class StowAuthConfig:
    """Credentials for STOW-RS, read from environment variables (never from the config file itself).

    ``kind`` is ``"basic"`` (``username`` + the password in ``$<password_env>``) or ``"bearer"`` (the token in
    ``$<token_env>``).
    """

    kind: str
    username: str | None = None
    password_env: str | None = None
    token_env: str | None = None


@dataclass
class DestinationConfig:
    """Where results go: a C-STORE SCP (the PACS) and optionally a DICOMweb STOW-RS endpoint."""

    ae_title: str = "ORTHANC"
    host: str = "127.0.0.1"
    port: int = 4242
    stow_url: str | None = None
    stow_auth: StowAuthConfig | None = None


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

    ``dicom_timeout_seconds`` bounds association negotiation, waiting for a DIMSE message and network silence when
    the node sends results (pynetdicom's 30 / 60 s defaults abort transfers on a busy host); the listener's limits
    are ``associations``. ``/health`` reports the worker or sender ``stuck`` when its loop has not come round for
    ``health_stuck_seconds`` (one job running that long counts). ``allowed_calling_aets`` match exactly and
    case-sensitively (``orthanc`` is not ``ORTHANC``); empty = any calling AE title.
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
    health_stuck_seconds: float = 1800.0
    torch_threads: int = 1
    dicom_timeout_seconds: float = 120.0
    destination: DestinationConfig = field(default_factory=DestinationConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    associations: AssociationConfig = field(default_factory=AssociationConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    intake: IntakeConfig = field(default_factory=IntakeConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    results: ResultsConfig = field(default_factory=ResultsConfig)


def _group(cls: type, value: Any, where: str) -> Any:
    """One config group (a mapping of the dataclass' fields) as ``cls``; naming ``where`` on a bad key."""
    if value is None:
        return cls()
    if not isinstance(value, dict):
        raise ValueError(f"{where}: must be a mapping")
    unknown = set(value) - set(cls.__dataclass_fields__)
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)} (known: {sorted(cls.__dataclass_fields__)})")
    try:
        return cls(**value)
    except TypeError as err:
        raise ValueError(f"{where}: {err}") from err


def _resolve(path: Any, base: Path) -> Path:
    path = Path(os.path.expandvars(str(path)))
    return path if path.is_absolute() else (base / path).resolve()


def _security(value: Any, base: Path, where: str) -> SecurityConfig:
    value = dict(value or {})
    tls = value.pop("tls", None)
    security = _group(SecurityConfig, value, where)
    if tls is not None:
        tls = _group(TLSConfig, tls, f"{where}.tls")
        tls.certificate, tls.private_key = _resolve(tls.certificate, base), _resolve(tls.private_key, base)
        if tls.ca_certificates is not None:
            tls.ca_certificates = _resolve(tls.ca_certificates, base)
        security.tls = tls
    security.allowed_peers = [str(p) for p in security.allowed_peers]
    return security


def _destination(value: Any, where: str) -> DestinationConfig:
    value = dict(value or {})
    auth = value.pop("stow_auth", None)
    destination = _group(DestinationConfig, value, where)
    if auth is not None:
        destination.stow_auth = _group(StowAuthConfig, auth, f"{where}.stow_auth")
        if destination.stow_auth.kind not in ("basic", "bearer"):
            kind = destination.stow_auth.kind
            raise ValueError(f"{where}.stow_auth: kind must be 'basic' or 'bearer', got {kind!r}")
    return destination


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
    groups = {
        "destination": _destination(raw.pop("destination", None), f"{path}: destination"),
        "retry": _group(RetryConfig, raw.pop("retry", None), f"{path}: retry"),
        "associations": _group(AssociationConfig, raw.pop("associations", None), f"{path}: associations"),
        "security": _security(raw.pop("security", None), base, f"{path}: security"),
        "intake": _group(IntakeConfig, raw.pop("intake", None), f"{path}: intake"),
        "retention": _group(RetentionConfig, raw.pop("retention", None), f"{path}: retention"),
        "results": _group(ResultsConfig, raw.pop("results", None), f"{path}: results"),
    }
    try:
        return NodeConfig(
            **{
                **raw,
                **groups,
                "spool_dir": spool if spool.is_absolute() else (base / spool).resolve(),
                "pipelines": pipelines,
                "allowed_calling_aets": [str(a) for a in raw.get("allowed_calling_aets") or []],
            }
        )
    except TypeError as err:
        raise ValueError(f"{path}: {err}") from err
