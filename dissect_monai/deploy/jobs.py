"""Turn one received study into result instances: select series by rules, run bundles, write SR / SEG."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch
from pydicom.dataset import Dataset

from dissect_monai.deploy.bundle_runner import BundleRunner
from dissect_monai.deploy.config import PipelineConfig
from dissect_monai.deploy.dicom_codes import AlgorithmInfo
from dissect_monai.deploy.seg_writer import build_segmentation, label_map_to_frames
from dissect_monai.deploy.sr_writer import build_classification_sr

__all__ = ["JobError", "StudyProcessor", "series_matches", "probabilities_from_pred", "label_map_from_pred"]

logger = logging.getLogger(__name__)


class JobError(RuntimeError):
    """A study that cannot be processed (unreadable instance, unsupported series, bundle output mismatch)."""


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
        raise JobError(f"classifier output has {values.size} channels but {len(names)} findings are named")
    if not np.all((values >= 0.0) & (values <= 1.0)):
        raise JobError("classifier postprocessing must produce probabilities in [0, 1] (add an activation)")
    return {names[i]: float(values[i]) for i in sorted(names)}


def label_map_from_pred(pred: torch.Tensor, spatial_ndim: int) -> np.ndarray:
    """``(1, *spatial)`` integer label map from a segmentation output.

    Args:
        pred: ``(C, *spatial)`` (argmax over C > 1 channels; C = 1 is already a label map) or ``(*spatial)``
            (a label map whose channel was squeezed, e.g. for MONAI Label).
        spatial_ndim: 2 for a radiograph, 3 for a volume.
    """
    array = torch.as_tensor(pred).detach().float()
    if array.ndim == spatial_ndim:
        array = array[None]
    elif array.ndim != spatial_ndim + 1:
        raise JobError(f"segmentation output of shape {tuple(array.shape)} is not {spatial_ndim}-D")
    if array.shape[0] > 1:
        array = array.argmax(dim=0, keepdim=True)
    return np.rint(array.cpu().numpy()).astype(np.int64)


def _space(pred: Any) -> str:
    meta = getattr(pred, "meta", {}) or {}
    return str(meta.get("space", "RAS")).upper()


class StudyProcessor:
    """Runs the configured pipelines on the series of one study (a folder per series of ``.dcm`` files).

    Args:
        pipelines: pipeline configs (selection rules, output kind, names).
        runners: pipeline name -> loaded bundle.
    """

    def __init__(self, pipelines: Sequence[PipelineConfig], runners: Mapping[str, BundleRunner]) -> None:
        self.pipelines = list(pipelines)
        self.runners = dict(runners)

    def process(self, series: Mapping[str, Sequence[Path]]) -> list[Dataset]:
        """Results for a study given as series name -> instance files.

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
                raise JobError(f"series {series_name}: unreadable instance: {type(err).__name__}: {err}") from err
            matched = [p for p in self.pipelines if series_matches(headers[0], p.rules)]
            if not matched:
                logger.info("series ignored: modality %s matches no pipeline", headers[0].get("Modality", "?"))
                continue
            for pipeline in matched:
                results.extend(self._run(pipeline, files, headers))
        return results

    def _run(self, pipeline: PipelineConfig, files: Sequence[Path], headers: Sequence[Dataset]) -> list[Dataset]:
        runner = self.runners[pipeline.name]
        algorithm = AlgorithmInfo(name=runner.name, version=runner.version)
        if pipeline.single_instance:
            inputs = [(str(f), [h]) for f, h in zip(files, headers)]
        else:
            inputs = [(str(Path(files[0]).parent), list(headers))]
        out = []
        for source, sources in inputs:
            try:
                pred = runner.predict(source)
            except Exception as err:  # noqa: BLE001 - the bundle's own error becomes the job's reason
                raise JobError(f"pipeline {pipeline.name}: bundle failed: {type(err).__name__}: {err}") from err
            if pipeline.output == "sr":
                names = pipeline.findings or runner.channel_names()
                out.append(
                    build_classification_sr(
                        sources, probabilities_from_pred(pred, names), algorithm, thresholds=pipeline.thresholds
                    )
                )
            else:
                names = pipeline.segments or {k: v for k, v in runner.channel_names().items() if k != 0}
                frames_in_source = int(sources[0].get("NumberOfFrames", 1) or 1)
                labels = label_map_from_pred(pred, 2 if len(sources) == 1 and frames_in_source == 1 else 3)
                affine = getattr(pred, "affine", None)
                try:
                    frames = label_map_to_frames(
                        labels, sources, None if affine is None else np.asarray(affine), space=_space(pred)
                    )
                    out.append(build_segmentation(sources, frames, names, algorithm))
                except ValueError as err:
                    raise JobError(f"pipeline {pipeline.name}: cannot write SEG: {err}") from err
        return out
