"""Comprehensive 3D SR (TID 1500 Measurement Report): classification probabilities, or why there are none.

Encoding (one TID 1501 measurement group per finding, the IHE AI Results style for image-level findings):

* tracking identifier = the finding name, finding type = the finding's coded concept (SNOMED CT when known);
* measurement "Probability" (DCM 122157) in UCUM ``{probability}`` = the model's probability of the finding;
* qualitative evaluation: finding concept = Present / Absent (DCM 121053 / 121054) at the decision threshold;
* algorithm identification (bundle name + version) in every group, observer device = the inference node;
* evidence (Current Requested Procedure Evidence) references every source instance; same study, new series.

A report without probabilities (:func:`build_unassessed_sr`: the input failed the quality gate, or the study
could not be processed) has the same groups without a measurement: qualitative evaluation "CAD Processing and
Findings Summary" (DCM 111017) = "No algorithms succeeded; without findings" (DCM 111245) and a TEXT evaluation
"Comment" (DCM 121106) saying why in general terms; :func:`read_unassessed_sr` reads it back.

Versions: the node writes each new version of a report into the same series with a higher InstanceNumber and
the previous version in the Predecessor Documents Sequence (:class:`~dissect_monai.dicom.codes.ResultPlacement`), see
:mod:`dissect_monai.deploy.jobs`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from dissect_monai.dicom.codes import AlgorithmInfo, ResultPlacement, concept_for_name, reference_view

__all__ = [
    "PROBABILITY_UNIT",
    "build_classification_sr",
    "build_unassessed_sr",
    "read_classification_sr",
    "read_unassessed_sr",
]

PROBABILITY_UNIT = hd.sr.CodedConcept("{probability}", "UCUM", "Probability")
AI_SERIES_DESCRIPTION = "AI classification - not for clinical use"
_PRESENT = hd.sr.CodedConcept(codes.DCM.Present.value, "DCM", codes.DCM.Present.meaning)
_ABSENT = hd.sr.CodedConcept(codes.DCM.Absent.value, "DCM", codes.DCM.Absent.meaning)
_PROCEDURE = hd.sr.CodedConcept(codes.SCT.ImagingProcedure.value, "SCT", codes.SCT.ImagingProcedure.meaning)
_SUMMARY = hd.sr.CodedConcept(
    codes.DCM.CADProcessingAndFindingsSummary.value, "DCM", codes.DCM.CADProcessingAndFindingsSummary.meaning
)
_NOT_SUCCEEDED = hd.sr.CodedConcept(
    codes.DCM.NoAlgorithmsSucceededWithoutFindings.value, "DCM", codes.DCM.NoAlgorithmsSucceededWithoutFindings.meaning
)
_COMMENT = hd.sr.CodedConcept(codes.DCM.Comment.value, "DCM", codes.DCM.Comment.meaning)


def _check_sources(source_images: Sequence[Dataset]) -> None:
    if not source_images:
        raise ValueError("no source images given")
    studies = {str(ds.StudyInstanceUID) for ds in source_images}
    if len(studies) != 1:
        raise ValueError(f"source images come from {len(studies)} studies; an SR reports on one")


def _report(
    source_images: Sequence[Dataset],
    groups: Sequence[hd.sr.MeasurementsAndQualitativeEvaluations],
    algorithm: AlgorithmInfo,
    series_number: int,
    series_description: str,
    device_observer_uid: str | None,
    placement: ResultPlacement | None,
) -> hd.sr.Comprehensive3DSR:
    placement = placement or ResultPlacement()
    series_uid, sop_uid = placement.uids()
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_observer_uid or generate_uid(),
            name=algorithm.model_name,
            manufacturer_name=algorithm.manufacturer,
            model_name=algorithm.name,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=_PROCEDURE,
        imaging_measurements=list(groups),
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[reference_view(ds) for ds in source_images],
        content=report,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=placement.instance_number,
        manufacturer=algorithm.manufacturer,
        is_complete=True,
        previous_versions=list(placement.previous_versions) or None,
    )
    sr.SeriesDescription = series_description
    return sr


def build_classification_sr(
    source_images: Sequence[Dataset],
    probabilities: Mapping[str, float],
    algorithm: AlgorithmInfo,
    thresholds: float | Mapping[str, float] = 0.5,
    series_number: int = 9902,
    series_description: str = AI_SERIES_DESCRIPTION,
    device_observer_uid: str | None = None,
    placement: ResultPlacement | None = None,
) -> hd.sr.Comprehensive3DSR:
    """Build a Comprehensive 3D SR (TID 1500) reporting classification probabilities for a study.

    Args:
        source_images: the instances that were classified (one CR/DX image or a series); all in one study.
        probabilities: finding name -> probability in [0, 1], e.g. ``{"pneumonia": 0.73}``.
        algorithm: algorithm identification (bundle name + version).
        thresholds: decision threshold(s) for the Present / Absent qualitative evaluation (``p >= threshold``).
        series_number: SeriesNumber of the new SR series.
        series_description: SeriesDescription of the new series.
        device_observer_uid: UID of the observing device (the node); a new UID by default.
        placement: series, instance UID and number, and the earlier versions this report replaces (written as
            its Predecessor Documents Sequence); new UIDs, instance 1, no predecessor by default.

    Returns:
        the SR dataset (a ``pydicom.Dataset`` subclass).
    """
    _check_sources(source_images)
    if not probabilities:
        raise ValueError("no finding probabilities given")
    groups = []
    for finding, probability in probabilities.items():
        p = float(probability)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"probability of {finding!r} must be in [0, 1], got {p}")
        threshold = float(thresholds[finding] if isinstance(thresholds, Mapping) else thresholds)
        concept = concept_for_name(finding)
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=finding),
                finding_type=concept,
                algorithm_id=algorithm.sr_identification(),
                measurements=[
                    hd.sr.Measurement(
                        name=codes.DCM.Probability,
                        value=p,
                        unit=PROBABILITY_UNIT,
                        algorithm_id=algorithm.sr_identification(),
                    )
                ],
                qualitative_evaluations=[
                    hd.sr.QualitativeEvaluation(name=concept, value=_PRESENT if p >= threshold else _ABSENT)
                ],
            )
        )
    return _report(source_images, groups, algorithm, series_number, series_description, device_observer_uid,
                   placement)


def build_unassessed_sr(
    source_images: Sequence[Dataset],
    findings: Sequence[str],
    reason: str,
    algorithm: AlgorithmInfo,
    series_number: int = 9902,
    series_description: str = AI_SERIES_DESCRIPTION,
    device_observer_uid: str | None = None,
    placement: ResultPlacement | None = None,
) -> hd.sr.Comprehensive3DSR:
    """An SR saying that ``findings`` were not assessed on ``source_images``, and why (no probabilities).

    Args:
        source_images: the instances concerned (all in one study).
        findings: finding names (one group each), e.g. a classifier's classes, or ``["AI processing"]``.
        reason: why, in general terms (it goes to the PACS: no patient data, no file paths), at most 1024
            characters (DICOM UT would allow more; viewers show short comments).
        algorithm: algorithm identification; other arguments as in :func:`build_classification_sr`.

    Returns:
        the SR dataset.
    """
    _check_sources(source_images)
    if not findings:
        raise ValueError("no findings given")
    if not reason.strip() or len(reason) > 1024:
        raise ValueError(f"the reason must be 1 to 1024 characters, got {len(reason.strip())}")
    groups = []
    for finding in findings:
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=finding),
            finding_type=concept_for_name(finding),
            algorithm_id=algorithm.sr_identification(),
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=_SUMMARY, value=_NOT_SUCCEEDED)],
        )
        comment = hd.sr.TextContentItem(name=_COMMENT, value=reason, relationship_type="CONTAINS")
        group[0].ContentSequence.append(comment)
        groups.append(group)
    return _report(source_images, groups, algorithm, series_number, series_description, device_observer_uid,
                   placement)


def read_classification_sr(sr: Dataset) -> dict[str, float]:
    """Finding name -> probability from an SR written by :func:`build_classification_sr` (parsed with highdicom).

    Raises:
        ValueError: when ``sr`` is not a Comprehensive 3D SR or holds no probability measurements.
    """
    parsed = hd.sr.Comprehensive3DSR.from_dataset(sr)
    result: dict[str, float] = {}
    for group in parsed.content.get_image_measurement_groups():
        for measurement in group.get_measurements(name=codes.DCM.Probability):
            result[str(group.tracking_identifier)] = float(measurement.value)
    if not result:
        raise ValueError(f"SR {sr.get('SOPInstanceUID', '?')} holds no probability measurements")
    return result


def read_unassessed_sr(sr: Dataset) -> dict[str, str]:
    """Finding name -> reason from an SR written by :func:`build_unassessed_sr` (empty for a classification SR)."""
    parsed = hd.sr.Comprehensive3DSR.from_dataset(sr)
    result: dict[str, str] = {}
    for group in parsed.content.get_image_measurement_groups():
        for item in group[0].ContentSequence:
            if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == _COMMENT.value:
                result[str(group.tracking_identifier)] = str(item.TextValue)
    return result
