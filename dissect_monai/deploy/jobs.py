"""Study jobs: select series by rules, run bundles, write SR / SEG; versions, failures and the per-job timeout.

Lifecycle of a study (:class:`JobRunner`):

* a job covers the **whole study**: instances that arrive after a study's job has run make the study stable
  again after ``stable_seconds`` (the spool's debounce), and the new job takes the earlier jobs' inputs back
  (:meth:`dissect_monai.deploy.spool.Spool.merge_prior_inputs`) -- the late CT slice is processed with the 19
  others, never alone;
* **versions**: each job of a study writes version ``n`` (1, 2, ...). Every result has a fixed series per study
  and input unit (pipeline + source instance for single-instance pipelines, pipeline + source series
  otherwise): SeriesInstanceUID and SOPInstanceUID are derived from (study, unit) and (study, unit, version)
  (:func:`dissect_monai.dicom.result_uid`), InstanceNumber = ``n``. A new version is a new instance in the
  *same series* with a *higher InstanceNumber*, and an SR also cites the instance it replaces in its
  **Predecessor Documents Sequence** (the DICOM mechanism for a revised SR). Why both: every PACS viewer shows
  a series' instances by number, so "the highest InstanceNumber of the AI series is current" holds in any
  archive, and needs no deletion (which needs IOCM rejection notes few archives accept from a modality); the
  predecessor reference makes the SR revision explicit to systems that read SR (SEG has no such attribute).
  Exactly one current result per study, pipeline and input unit: the highest instance of its series;
* **failures** go to ``failed/<job>/reason.txt`` with the root cause of the whole exception chain (not MONAI's
  "applying transform" wrapper) and the chain below it, with every patient / study attribute value of the
  study's headers replaced by ``<redacted>``; a Comprehensive SR saying, in general terms, that the study could
  not be processed is sent to the PACS (:class:`dissect_monai.deploy.config.ResultsConfig`). It is a study-level
  series of its own ("AI processing failed"), versioned like the results: its InstanceNumber is the version that
  failed, so a result series whose current instance has a higher number is newer than the failure;
* a **timeout** bounds each job: the job runs in a forked child process (the loaded models are shared
  copy-on-write) that is killed when the time is up; the study then fails with reason ``timeout``.
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import re
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch
from pydicom.dataset import Dataset

from dissect_monai.deploy.bundle_runner import BundleRunner
from dissect_monai.deploy.config import PipelineConfig, ResultsConfig
from dissect_monai.deploy.spool import Spool
from dissect_monai.deploy.versions import ResultVersions
from dissect_monai.dicom import (
    AlgorithmInfo,
    ResultPlacement,
    build_classification_sr,
    build_unassessed_sr,
    read_unassessed_sr,
    result_uid,
    segmentation_from_prediction,
)

__all__ = [
    "FAILURE_CATEGORIES",
    "JobError",
    "JobOutcome",
    "JobRunner",
    "StudyProcessor",
    "failure_reason",
    "probabilities_from_pred",
    "series_matches",
]

logger = logging.getLogger(__name__)

#: Failure category -> the general terms the failure report gives the PACS (no file names, no values).
FAILURE_CATEGORIES = {
    "unreadable": "an image of the study could not be read",
    "algorithm": "the algorithm failed on an image of the study",
    "result": "the result could not be written",
    "timeout": "processing took longer than allowed",
    "internal": "an internal error occurred",
}


class JobError(RuntimeError):
    """A study that cannot be processed (unreadable instance, unsupported series, bundle output mismatch).

    Args:
        message: what failed, naming the series / file (for ``reason.txt``, never sent to the PACS).
        category: a key of :data:`FAILURE_CATEGORIES`.
    """

    def __init__(self, message: str, category: str = "internal") -> None:
        super().__init__(message)
        self.category = category if category in FAILURE_CATEGORIES else "internal"

    def __reduce__(self):
        return (type(self), (str(self), self.category))


def _values(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return [str(v).strip().upper() for v in value]
    return [str(value).strip().upper()]


def series_matches(header: Dataset, rules: Mapping[str, Any]) -> bool:
    """Whether a series (its first instance's header) satisfies every selection rule.

    A string rule is a case-insensitive regular expression that must match the whole value (multi-valued
    attributes joined by ``\\``; a missing attribute is the empty string). A list rule names items the
    multi-valued attribute must contain, or, prefixed by ``!``, must not contain (e.g. ImageType).
    """
    for keyword, rule in rules.items():
        value = header.get(keyword)
        items = _values(value)
        if isinstance(rule, str):
            if not re.fullmatch(rule, "\\".join(items), flags=re.IGNORECASE):
                return False
        elif isinstance(rule, (list, tuple)):
            for item in rule:
                text = str(item).upper()
                if text.startswith("!") and text[1:] in items:
                    return False
                if not text.startswith("!") and text not in items:
                    return False
        else:
            raise ValueError(f"selection rule for {keyword} must be a regex string or a list, got {rule!r}")
    return True


def probabilities_from_pred(pred: torch.Tensor, names: Mapping[int, str]) -> dict[str, float]:
    """Finding name -> probability from a classifier's post-processed output ``(C,)`` (or ``(C, 1, ...)``)."""
    values = torch.as_tensor(pred).detach().float().reshape(-1).cpu().numpy()
    if values.size != len(names):
        raise JobError(f"classifier output has {values.size} channels but {len(names)} findings are named", "algorithm")
    if not np.all((values >= 0.0) & (values <= 1.0)):
        raise JobError("classifier postprocessing must produce probabilities in [0, 1] (add an activation)",
                       "algorithm")
    return {names[i]: float(values[i]) for i in sorted(names)}


def _space(pred: Any) -> str:
    meta = getattr(pred, "meta", {}) or {}
    return str(meta.get("space", "RAS")).upper()


# ------------------------------------------------------------------------------------------------ failure reasons
_REDACTED_VRS = frozenset({"AS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UT"})
_OBJECT_ADDRESS = re.compile(r"<([\w.]+) object at 0x[0-9a-fA-F]+>")


def _attribute_values(headers: Sequence[Dataset]) -> list[str]:
    """Every top-level text value of the headers (patient, study, series attributes), longest first."""
    found = set()
    for ds in headers:
        for element in ds:
            if element.VR not in _REDACTED_VRS or element.value in (None, ""):
                continue
            values = element.value if isinstance(element.value, (list, tuple)) else [element.value]
            for value in values:
                text = str(value).strip()
                found.update(part for part in [text, *re.split(r"[\^=]", text)] if len(part.strip()) >= 3)
    return sorted(found, key=len, reverse=True)


def _redact(text: str, values: Sequence[str]) -> str:
    for value in values:
        text = text.replace(value, "<redacted>")
    return text


def _describe(err: BaseException) -> str:
    text = _OBJECT_ADDRESS.sub(lambda m: m.group(1).rsplit(".", 1)[-1], str(err))
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def failure_reason(err: BaseException, headers: Sequence[Dataset] = ()) -> str:
    """The text of ``reason.txt``: the root cause of ``err``'s exception chain first, then the whole chain.

    MONAI wraps a failing transform as ``RuntimeError: applying transform <... object at 0x...>``; the cause is
    the innermost exception of the ``__cause__`` / ``__context__`` chain that names a file (e.g. an
    :class:`~dissect_monai.data.ImageLoadError`: file and problem), else the innermost one. Every
    top-level text attribute value of ``headers`` (patient
    name, ID, birth date, ...) is replaced by ``<redacted>``.
    """
    chain: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    category = getattr(err, "category", "internal")
    root = next((e for e in reversed(chain) if getattr(e, "filename", None)), chain[-1])
    frames = traceback.extract_tb(root.__traceback__)
    where = f" (raised in {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    lines = [f"category: {category}", f"cause: {_describe(root)}{where}", "chain (outermost first):"]
    lines += [f"  {_describe(e)}" for e in chain]
    return _redact("\n".join(lines) + "\n", _attribute_values(headers))


# ------------------------------------------------------------------------------------------------ processing
class StudyProcessor:
    """Runs the configured pipelines on the series of one study (a folder per series of ``.dcm`` files).

    Args:
        pipelines: pipeline configs (selection rules, output kind, names).
        runners: pipeline name -> loaded bundle.
    """

    def __init__(self, pipelines: Sequence[PipelineConfig], runners: Mapping[str, BundleRunner]) -> None:
        self.pipelines = list(pipelines)
        self.runners = dict(runners)

    def process(
        self, series: Mapping[str, Sequence[Path]], version: int = 1, previous: Mapping[str, Dataset] | None = None
    ) -> list[Dataset]:
        """Results (version ``version``) for a study given as series name -> instance files.

        Args:
            series: series folder name -> instance files.
            version: the version the results are (InstanceNumber and SOP Instance UID, see the module docstring).
            previous: result SeriesInstanceUID -> reference to its current instance (SRs cite it as predecessor).

        Raises:
            JobError: when an instance is unreadable or a bundle fails on a selected series.
        """
        results: list[Dataset] = []
        for series_name, files in series.items():
            if not files:
                continue
            try:
                headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
            except Exception as err:  # noqa: BLE001 - any parse failure fails the job with its reason
                raise JobError(f"series {series_name}: unreadable instance", "unreadable") from err
            matched = [p for p in self.pipelines if series_matches(headers[0], p.rules)]
            if not matched:
                logger.info("series ignored: modality %s matches no pipeline", headers[0].get("Modality", "?"))
                continue
            for pipeline in matched:
                results.extend(self._run(pipeline, files, headers, version, previous or {}))
        return results

    def _run(
        self,
        pipeline: PipelineConfig,
        files: Sequence[Path],
        headers: Sequence[Dataset],
        version: int,
        previous: Mapping[str, Dataset],
    ) -> list[Dataset]:
        runner = self.runners[pipeline.name]
        algorithm = AlgorithmInfo(name=runner.name, version=runner.version)
        if pipeline.single_instance:
            inputs = [(str(f), [h], str(h.SOPInstanceUID)) for f, h in zip(files, headers)]
        else:
            inputs = [(str(Path(files[0]).parent), list(headers), str(headers[0].SeriesInstanceUID))]
        out = []
        for source, sources, unit in inputs:
            study = str(sources[0].StudyInstanceUID)
            series_uid = result_uid(study, f"{pipeline.name}/{unit}")
            sop_uid = result_uid(study, series_uid, version)
            try:
                prediction = runner.run(source)
            except Exception as err:  # noqa: BLE001 - the bundle's own error becomes the job's reason
                raise JobError(f"pipeline {pipeline.name}: bundle failed on {Path(source).name}", "algorithm") from err
            pred = prediction.pred
            try:
                if pipeline.output == "sr":
                    names = pipeline.findings or runner.channel_names()
                    before = (previous[series_uid],) if series_uid in previous else ()
                    placement = ResultPlacement(series_uid, sop_uid, version, before)
                    if prediction.out_of_distribution:
                        logger.info("pipeline %s: input flagged by the quality gate: not assessed", pipeline.name)
                        out.append(build_unassessed_sr(sources, [names[i] for i in sorted(names)],
                                                       pipeline.not_assessed_text, algorithm, placement=placement))
                        continue
                    out.append(
                        build_classification_sr(sources, probabilities_from_pred(pred, names), algorithm,
                                                thresholds=pipeline.thresholds, placement=placement)
                    )
                else:
                    names = pipeline.segments or {k: v for k, v in runner.channel_names().items() if k != 0}
                    affine = getattr(pred, "affine", None)
                    out.append(
                        segmentation_from_prediction(pred, sources, names, algorithm,
                                                     affine=None if affine is None else np.asarray(affine),
                                                     space=_space(pred),
                                                     placement=ResultPlacement(series_uid, sop_uid, version))
                    )
            except ValueError as err:
                raise JobError(f"pipeline {pipeline.name}: cannot write {pipeline.output.upper()} for "
                               f"{Path(source).name}", "result") from err
        return out


# ------------------------------------------------------------------------------------------------ lifecycle
@dataclass(frozen=True)
class JobOutcome:
    """What became of a job: ``status`` is ``"processed"``, ``"failed"`` or ``"recovered"`` (its results had
    been published before a restart); ``results`` counts instances published now (a failure report included);
    ``category`` is the failure category (a key of :data:`FAILURE_CATEGORIES`) or ``None``; ``not_assessed``
    counts SRs saying "not assessed" (inputs the quality gate flagged)."""

    status: str
    results: int = 0
    category: str | None = None
    version: int = 0
    not_assessed: int = 0


def _child(target: Callable[[], list[Dataset]], headers: Sequence[Dataset], connection) -> None:
    try:
        payload = []
        for ds in target():
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            payload.append(buffer.getvalue())
        connection.send(("ok", payload))
    except BaseException as err:  # noqa: BLE001 - every failure goes back to the parent as text
        connection.send(("error", (getattr(err, "category", "internal"), failure_reason(err, headers))))
    finally:
        connection.close()


class _JobFailed(Exception):
    def __init__(self, category: str, reason: str) -> None:
        super().__init__(category)
        self.category, self.reason = category, reason


def _run_with_timeout(target: Callable[[], list[Dataset]], headers: Sequence[Dataset], timeout: float) -> list[Dataset]:
    """``target()`` in a forked child process killed after ``timeout`` seconds (``<= 0``: in this process).

    Raises:
        _JobFailed: with the failure category and the reason text (``"timeout"`` when the child was killed).
    """
    if timeout <= 0:
        try:
            return target()
        except Exception as err:  # noqa: BLE001
            raise _JobFailed(getattr(err, "category", "internal"), failure_reason(err, headers)) from err
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(target, headers, sender), name="job", daemon=True)
    child.start()
    sender.close()
    try:
        if not receiver.poll(timeout):
            child.kill()
            raise _JobFailed("timeout", f"category: timeout\ncause: the job ran longer than {timeout:g} s and was "
                                        "stopped\n")
        try:
            kind, payload = receiver.recv()
        except EOFError:  # the child died without an answer (e.g. killed by the kernel for memory)
            child.join(timeout=10)
            raise _JobFailed("internal", f"category: internal\ncause: the job process exited with code "
                                         f"{child.exitcode} without a result\n") from None
    finally:
        receiver.close()
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
            child.join()
    if kind == "error":
        raise _JobFailed(*payload)
    return [pydicom.dcmread(io.BytesIO(data)) for data in payload]


class JobRunner:
    """Runs claimed jobs of a spool to results, versions and failure reports (see the module docstring).

    Args:
        processor: the pipelines and their loaded bundles.
        spool: the node's spool.
        settings: timeout and failure-report settings.
        node_name: written as the algorithm of failure reports (the node's AE title).
    """

    def __init__(self, processor: StudyProcessor, spool: Spool, settings: ResultsConfig, node_name: str) -> None:
        self.processor = processor
        self.spool = spool
        self.settings = settings
        self.versions = ResultVersions(spool.root / "versions")
        self.node_algorithm = AlgorithmInfo(name=node_name, version="node")

    def run(self, job: str) -> JobOutcome:
        """Process one claimed job to ``outbox/`` + ``done/``, or ``failed/`` with a reason file."""
        study_key = job.split("-", 1)[0]
        if self.spool.has_results(job):  # finished before a crash; only the bookkeeping is left
            published = [pydicom.dcmread(f, stop_before_pixels=True) for f in self.spool.result_files(job)]
            self.versions.published(study_key, published)
            self.spool.complete(job, [])
            return JobOutcome("recovered")
        self.spool.merge_prior_inputs(job)
        series = self.spool.job_instances(job)
        headers = self._headers(series)
        version = self.versions.reserve(study_key)
        previous = self.versions.previous(study_key, str(headers[0].StudyInstanceUID)) if headers else {}
        try:
            results = _run_with_timeout(lambda: self.processor.process(series, version, previous), headers,
                                        self.settings.job_timeout_seconds)
        except _JobFailed as failure:
            report = self._failure_report(headers, failure.category, version)
            count = self.spool.fail(job, failure.reason, report)
            self.versions.published(study_key, report)
            return JobOutcome("failed", count, failure.category, version)
        count = self.spool.complete(job, results)
        self.versions.published(study_key, results)
        not_assessed = sum(1 for ds in results if ds.Modality == "SR" and read_unassessed_sr(ds))
        return JobOutcome("processed", count, None, version, not_assessed)

    @staticmethod
    def _headers(series: Mapping[str, Sequence[Path]]) -> list[Dataset]:
        """The readable headers of a job's instances (failure reports cite them; reasons redact their values)."""
        headers = []
        for files in series.values():
            for path in files:
                try:
                    headers.append(pydicom.dcmread(path, stop_before_pixels=True))
                except Exception:  # noqa: BLE001 - an unreadable instance is the job's failure, reported there
                    continue
        return headers

    def _failure_report(self, headers: Sequence[Dataset], category: str, version: int) -> list[Dataset]:
        """The SR telling the PACS that the study could not be processed (none when disabled or no header)."""
        if not self.settings.failure_report or not headers:
            return []
        study = str(headers[0].StudyInstanceUID)
        same_study = [h for h in headers if str(h.StudyInstanceUID) == study]
        series_uid = result_uid(study, "failure report")
        reason = f"{self.settings.failure_text}: {FAILURE_CATEGORIES.get(category, FAILURE_CATEGORIES['internal'])}."
        try:
            report = build_unassessed_sr(
                same_study, ["AI processing"], reason, self.node_algorithm,
                series_description=self.settings.failure_series_description,
                placement=ResultPlacement(series_uid, result_uid(study, series_uid, version), version),
            )
        except ValueError as err:
            logger.warning("no failure report: %s", type(err).__name__)
            return []
        return [report]
