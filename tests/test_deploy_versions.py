"""Study lifecycle behind a real Orthanc on 127.0.0.1: late instances reopen a study and the whole study is
processed again as a new version of each result (same series, higher InstanceNumber, the SR citing its
predecessor); a job that runs too long is stopped and reported. Tiny real bundles (random weights)."""

from __future__ import annotations

import io
import shutil
from collections import defaultdict
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
import requests
import yaml
from deploy_helpers import (
    CR_RULES,
    CT_RULES,
    SIIM_CR,
    Orthanc,
    ct_series_copy,
    free_port,
    make_tiny_bundle,
    node_config_file,
    orthanc_available,
    wait_for,
)
from pydicom.uid import generate_uid

from dissect_monai.deploy.bundle_runner import BundleRunner
from dissect_monai.deploy.config import load_node_config
from dissect_monai.deploy.node import InferenceNode
from dissect_monai.dicom.sr import read_unassessed_sr

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.orthanc,
    pytest.mark.skipif(not orthanc_available(), reason="no Orthanc binary: install the Debian package `orthanc`"),
]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    kinds = ("cxr_classification", "cxr_lung_segmentation", "ct_segmentation")
    return {kind: make_tiny_bundle(root, kind) for kind in kinds}


def _start(tmp_path: Path, pipelines: list[dict], runners: dict, **extra) -> tuple[InferenceNode, Orthanc]:
    node_port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", "DISSECT_AI", node_port)
    path = node_config_file(tmp_path / "node.yaml", tmp_path / "spool", pipelines,
                            {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port},
                            port=node_port, stable_seconds=1.5, **extra)
    node = InferenceNode(load_node_config(path), runners=runners)
    node.start()
    return node, orthanc


def _by_series(datasets: list[pydicom.Dataset]) -> dict[str, dict[int, pydicom.Dataset]]:
    series: dict[str, dict[int, pydicom.Dataset]] = defaultdict(dict)
    for ds in datasets:
        series[ds.SeriesInstanceUID][int(ds.InstanceNumber)] = ds
    return dict(series)


def _store(orthanc: Orthanc, ids: list[str]) -> None:
    answer = orthanc.store_to_node(ids)
    assert answer["FailedInstancesCount"] == 0 and answer["InstancesCount"] == len(ids)


def test_cr_late_instance_makes_version_2_of_every_result(tmp_path, bundles, data_root):
    pipelines = [
        {"name": "cls", "bundle": str(bundles["cxr_classification"]), "output": "sr", "rules": CR_RULES,
         "single_instance": True},
        {"name": "lung", "bundle": str(bundles["cxr_lung_segmentation"]), "output": "seg", "rules": CR_RULES,
         "single_instance": True},
    ]
    runners = {"cls": BundleRunner(bundles["cxr_classification"]),
               "lung": BundleRunner(bundles["cxr_lung_segmentation"])}
    node, orthanc = _start(tmp_path, pipelines, runners)
    try:
        first = pydicom.dcmread(data_root / SIIM_CR)
        study = first.StudyInstanceUID
        _store(orthanc, [orthanc.upload(data_root / SIIM_CR)])
        wait_for(lambda: orthanc.instance_ids(study, "SR") and orthanc.instance_ids(study, "SEG"), 120,
                 interval=0.5, what="version 1 in Orthanc")
        late = pydicom.dcmread(data_root / SIIM_CR)  # a second image of the same series, after the job ran
        late.SOPInstanceUID = late.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        late.InstanceNumber = 2
        buffer = io.BytesIO()
        late.save_as(buffer, enforce_file_format=True)
        _store(orthanc, [orthanc.upload(buffer.getvalue())])
        wait_for(lambda: len(orthanc.instance_ids(study, "SR")) == 3 and len(orthanc.instance_ids(study, "SEG")) == 3,
                 120, interval=0.5, what="version 2 in Orthanc")
        srs, segs = _by_series(orthanc.study_instances(study, "SR")), _by_series(orthanc.study_instances(study, "SEG"))
        assert node.health()["processed"] == 2 and not any((node.spool.root / "failed").iterdir())
    finally:
        node.stop()
        orthanc.stop()
    # one result series per pipeline and image; the image seen twice has versions 1 and 2, the late one 2
    for results in (srs, segs):
        assert sorted(sorted(v) for v in results.values()) == [[1, 2], [2]]
    for versions in srs.values():
        current = versions[max(versions)]
        (evidence,) = current.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        assert len(evidence.ReferencedSOPSequence) == 1
        if 1 in versions:  # the revision cites the instance it replaces
            cited = current.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
            assert cited.ReferencedSOPInstanceUID == versions[1].SOPInstanceUID
            assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
        else:
            assert "PredecessorDocumentsSequence" not in current
            assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == late.SOPInstanceUID


def test_ct_late_slice_reprocesses_the_whole_series(tmp_path, bundles, data_root):
    runners = {"ct": BundleRunner(bundles["ct_segmentation"])}
    pipelines = [{"name": "ct", "bundle": str(bundles["ct_segmentation"]), "output": "seg", "rules": CT_RULES}]
    files = ct_series_copy(data_root, tmp_path / "ct")
    node, orthanc = _start(tmp_path, pipelines, runners)
    try:
        ids = [orthanc.upload(p) for p in files]
        slices = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
        study = slices[0].StudyInstanceUID
        _store(orthanc, ids[:-1])
        wait_for(lambda: orthanc.instance_ids(study, "SEG"), 180, interval=0.5, what="the SEG of 19 slices")
        _store(orthanc, ids[-1:])
        segs = wait_for(lambda: len(orthanc.instance_ids(study, "SEG")) == 2 and orthanc.study_instances(study, "SEG"),
                        180, interval=0.5, what="the SEG of 20 slices")
        health = node.health()
        assert health["processed"] == 2 and health["failed"] == 0
    finally:
        node.stop()
        orthanc.stop()
    ((series, versions),) = _by_series(segs).items()  # one SEG series, two versions
    assert sorted(versions) == [1, 2]
    referenced = {
        number: {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
        for number, seg in versions.items()
    }
    all_slices = {ds.SOPInstanceUID for ds in slices}
    assert referenced[1] == all_slices - {slices[-1].SOPInstanceUID} and referenced[2] == all_slices
    current = hd.seg.Segmentation.from_dataset(versions[2])
    frames = current.get_pixels_by_source_instance(sorted(all_slices), combine_segments=True, relabel=True)
    assert frames.shape[0] == 20


def test_job_over_time_limit_is_stopped_and_reported(tmp_path, bundles, data_root):
    """A bundle whose preprocessing hangs: the job's process is killed at the limit, the study fails with reason
    ``timeout``, the PACS gets a failure report, and the node goes on serving."""
    slow = tmp_path / "slow_bundle"
    shutil.copytree(bundles["cxr_classification"], slow)
    config_path = slow / "configs" / "inference.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["bundle_root"] = str(slow)
    config["preprocessing"]["transforms"].append(
        {"_target_": "Lambdad", "keys": "image", "func": "$lambda x: __import__('time').sleep(3600) or x"})
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    pipelines = [{"name": "cls", "bundle": str(slow), "output": "sr", "rules": CR_RULES, "single_instance": True}]
    node, orthanc = _start(tmp_path, pipelines, {"cls": BundleRunner(slow)}, results={"job_timeout_seconds": 5})
    try:
        cr = pydicom.dcmread(data_root / SIIM_CR)
        _store(orthanc, [orthanc.upload(data_root / SIIM_CR)])
        (report,) = wait_for(lambda: orthanc.study_instances(cr.StudyInstanceUID, "SR"), 120, interval=0.5,
                             what="the failure report in Orthanc")
        health = node.health()
        assert requests.post(f"{orthanc.url}/modalities/node/echo", json={}, timeout=30).ok  # still serving
    finally:
        node.stop()
        orthanc.stop()
    assert health["failed"] == 1 and health["failed_timeout"] == 1 and health["failure_reports"] == 1
    (failed,) = (tmp_path / "spool" / "failed").iterdir()
    assert (failed / "reason.txt").read_text().startswith("category: timeout")
    assert read_unassessed_sr(report) == {
        "AI processing": "The AI algorithm could not process this study: processing took longer than allowed."}
