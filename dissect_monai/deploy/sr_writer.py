"""Comprehensive 3D SR (TID 1500 Measurement Report) with per-finding classification probabilities.

Encoding (one TID 1501 measurement group per finding, the IHE AI Results style for image-level findings):

* tracking identifier = the finding name, finding type = the finding's coded concept (SNOMED CT when known);
* measurement "Probability" (DCM 122157) in UCUM ``{probability}`` = the model's probability of the finding;
* qualitative evaluation: finding concept = Present / Absent (DCM 121053 / 121054) at the decision threshold;
* algorithm identification (bundle name + version) in every group, observer device = the inference node;
* evidence (Current Requested Procedure Evidence) references every source instance; same study, new series.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from dissect_monai.deploy.dicom_codes import AlgorithmInfo, concept_for_name, reference_view

__all__ = ["build_classification_sr", "read_classification_sr", "PROBABILITY_UNIT"]

PROBABILITY_UNIT = hd.sr.CodedConcept("{probability}", "UCUM", "Probability")
AI_SERIES_DESCRIPTION = "AI classification - not for clinical use"
_PRESENT = hd.sr.CodedConcept(codes.DCM.Present.value, "DCM", codes.DCM.Present.meaning)
_ABSENT = hd.sr.CodedConcept(codes.DCM.Absent.value, "DCM", codes.DCM.Absent.meaning)
_PROCEDURE = hd.sr.CodedConcept(codes.SCT.ImagingProcedure.value, "SCT", codes.SCT.ImagingProcedure.meaning)


def build_classification_sr(
    source_images: Sequence[Dataset],
    probabilities: Mapping[str, float],
    algorithm: AlgorithmInfo,
    thresholds: float | Mapping[str, float] = 0.5,
    series_number: int = 9902,
    series_description: str = AI_SERIES_DESCRIPTION,
    device_observer_uid: str | None = None,
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

    Returns:
        the SR dataset (a ``pydicom.Dataset`` subclass) with new SeriesInstanceUID / SOPInstanceUID.
    """
    if not source_images:
        raise ValueError("no source images given")
    if not probabilities:
        raise ValueError("no finding probabilities given")
    studies = {str(ds.StudyInstanceUID) for ds in source_images}
    if len(studies) != 1:
        raise ValueError(f"source images come from {len(studies)} studies; an SR reports on one")
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
        imaging_measurements=groups,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[reference_view(ds) for ds in source_images],
        content=report,
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=algorithm.manufacturer,
        is_complete=True,
    )
    sr.SeriesDescription = series_description
    return sr


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
