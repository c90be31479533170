"""The node behind a real Orthanc 1.10 (Debian package) on 127.0.0.1: Orthanc C-STOREs real studies to the
node, the SR / SEG results come back into the same study in Orthanc; a SIGKILLed node recovers exactly once."""

from __future__ import annotations

import signal
import warnings
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import requests
from pydicom.uid import ExplicitVRLittleEndian
from deploy_helpers import (
    CR_RULES,
    CT_RULES,
    SIIM_CR,
    Orthanc,
    ResultStore,
    ct_series_copy,
    free_port,
    make_tiny_bundle,
    node_config_file,
    orthanc_available,
    project_bundle,
    serve_node,
    wait_for,
)

from dissect_monai.deploy.bundle_runner import BundleRunner
from dissect_monai.deploy.config import StowAuthConfig, load_node_config
from dissect_monai.deploy.node import InferenceNode
from dissect_monai.deploy.sender import SendError, send_stow_rs
from dissect_monai.dicom.seg import label_map_to_frames
from dissect_monai.dicom.sr import read_classification_sr

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.orthanc,
    pytest.mark.skipif(not orthanc_available(), reason="no Orthanc binary: install the Debian package `orthanc`"),
]

# The round trip runs the project's three bundles (their inference configs; trained weights when
# bundles/*/models/model.pt exist, else a random init of their own network_def: see project_bundle). The SIGKILL
# test is about the node's state, not the models: it uses tiny bundles (make_tiny_bundle) to stay fast.
KINDS = ("cxr_classification", "cxr_lung_segmentation", "ct_segmentation")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    return {kind: make_tiny_bundle(root, kind) for kind in KINDS}


@pytest.fixture(scope="module")
def project_bundles(repo_root, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("project_bundles")
    found = {kind: project_bundle(repo_root, kind, root) for kind in KINDS}
    untrained = [kind for kind, (_, trained) in found.items() if not trained]
    if untrained:
        warnings.warn(f"no trained weights for {untrained}: their real configs run with random weights", UserWarning)
    return {kind: path for kind, (path, _) in found.items()}


@pytest.fixture(scope="module")
def runners(project_bundles) -> dict[str, BundleRunner]:
    return {kind: BundleRunner(path) for kind, path in project_bundles.items()}


@pytest.fixture(scope="module")
def ct_files(data_root, tmp_path_factory) -> list[Path]:
    return ct_series_copy(data_root, tmp_path_factory.mktemp("ct"))


@pytest.fixture(scope="module")
def cr_file(data_root, tmp_path_factory) -> Path:
    """The real SIIM CR cropped to 1024 rows x 800 columns (re-encoded uncompressed), so that a swapped axis
    between the node's input and its SEG cannot pass unnoticed."""
    ds = pydicom.dcmread(data_root / SIIM_CR)
    pixels = np.ascontiguousarray(ds.pixel_array[:, 112:912])
    ds.PixelData, ds.Columns = pixels.tobytes(), pixels.shape[1]
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path_factory.mktemp("cr") / "cr_1024x800.dcm"
    ds.save_as(path)
    return path


def _pipelines(bundles) -> list[dict]:
    return [
        {"name": "cxr_classification", "bundle": str(bundles["cxr_classification"]), "output": "sr",
         "rules": CR_RULES, "single_instance": True},
        {"name": "cxr_lung_segmentation", "bundle": str(bundles["cxr_lung_segmentation"]), "output": "seg",
         "rules": CR_RULES, "single_instance": True},
        {"name": "ct_segmentation", "bundle": str(bundles["ct_segmentation"]), "output": "seg", "rules": CT_RULES},
    ]


def _node_config(tmp_path: Path, bundles, node_port: int, orthanc: Orthanc) -> Path:
    return node_config_file(
        tmp_path / "node.yaml", tmp_path / "spool", _pipelines(bundles),
        {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port},
        port=node_port, stable_seconds=1.5,
    )


def _send_studies(orthanc: Orthanc, cr_file: Path, ct_files: list[Path]) -> tuple[pydicom.Dataset, list]:
    cr_id = orthanc.upload(cr_file)
    ct_ids = [orthanc.upload(p) for p in ct_files]
    answer = orthanc.store_to_node([cr_id] + ct_ids)
    assert answer["FailedInstancesCount"] == 0 and answer["InstancesCount"] == 21
    return pydicom.dcmread(cr_file), [pydicom.dcmread(p) for p in ct_files]


def _results(orthanc: Orthanc, cr: pydicom.Dataset, ct: list[pydicom.Dataset]) -> dict[str, list]:
    return {
        "cr_sr": orthanc.study_instances(cr.StudyInstanceUID, "SR"),
        "cr_seg": orthanc.study_instances(cr.StudyInstanceUID, "SEG"),
        "ct_seg": orthanc.study_instances(ct[0].StudyInstanceUID, "SEG"),
    }


def _all_arrived(orthanc, cr, ct):
    found = _results(orthanc, cr, ct)
    return found if all(found.values()) else None


@pytest.fixture(scope="module")
def tiny_runners(bundles) -> dict[str, BundleRunner]:
    return {kind: BundleRunner(path) for kind, path in bundles.items()}


@pytest.mark.parametrize("bundle_set", ["tiny", pytest.param("project", marks=pytest.mark.slow)])
def test_orthanc_to_node_and_back(bundle_set, tmp_path, request, cr_file, ct_files):
    """Default run: tiny bundles (non-trivial masks, fast). ``-m slow``: the project's three bundles (their real
    inference configs; trained weights when present), ~3 min on this machine for the 3-D CT sliding window."""
    paths = request.getfixturevalue("bundles" if bundle_set == "tiny" else "project_bundles")
    runners = request.getfixturevalue("tiny_runners" if bundle_set == "tiny" else "runners")
    node_port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", "DISSECT_AI", node_port)
    node = InferenceNode(load_node_config(_node_config(tmp_path, paths, node_port, orthanc)), runners=runners)
    node.start()
    try:
        echo = requests.post(f"{orthanc.url}/modalities/node/echo", json={}, timeout=30)
        assert echo.ok  # Orthanc's C-ECHO to the node
        cr, ct = _send_studies(orthanc, cr_file, ct_files)
        found = wait_for(lambda: _all_arrived(orthanc, cr, ct), 240, interval=1.0, what="SR and SEGs in Orthanc")
        assert {k: len(v) for k, v in found.items()} == {"cr_sr": 1, "cr_seg": 1, "ct_seg": 1}

        # classification: the probabilities in Orthanc's SR are the bundle's, run directly on the same file
        direct = runners["cxr_classification"].predict(cr_file).reshape(-1)
        names = runners["cxr_classification"].channel_names()
        expected = {names[i]: float(direct[i]) for i in names}
        (sr,) = found["cr_sr"]
        assert read_classification_sr(sr) == pytest.approx(expected, abs=1e-6)
        assert sr.StudyInstanceUID == cr.StudyInstanceUID

        # chest X-ray lung segmentation
        seg = hd.seg.Segmentation.from_dataset(found["cr_seg"][0])
        mask = seg.get_pixels_by_source_instance([cr.SOPInstanceUID], combine_segments=True)[0]
        assert mask.shape == (1024, 800)  # the SEG frame has the source's Rows x Columns
        pred = np.asarray(runners["cxr_lung_segmentation"].predict(cr_file))
        direct_mask = pred.reshape(pred.shape[-2:]).T  # MONAI's (W, H) -> (Rows, Columns)
        np.testing.assert_array_equal(mask, direct_mask)
        assert [d.SegmentLabel for d in seg.SegmentSequence] == ["lung"]

        # CT series segmentation, frame by frame on the source instances
        seg = hd.seg.Segmentation.from_dataset(found["ct_seg"][0])
        uids = [d.SOPInstanceUID for d in ct]
        frames = seg.get_pixels_by_source_instance(uids, combine_segments=True, relabel=True)
        pred = runners["ct_segmentation"].predict(ct_files[0].parent)
        direct_frames = label_map_to_frames(pred.numpy(), ct, np.asarray(pred.affine))
        names = {k: v for k, v in runners["ct_segmentation"].channel_names().items() if k}
        assert [d.SegmentLabel for d in seg.SegmentSequence] == [names[k] for k in sorted(names)]
        np.testing.assert_array_equal(frames, direct_frames)
        if bundle_set == "tiny":  # random real networks whose masks are non-trivial: a comparison that can fail
            assert 0 < direct_mask.mean() < 1 and len(np.unique(direct_frames)) == 3
        health = node.health()
        assert health["received"] == 21 and health["processed"] == 2 and health["sent"] == 3
    finally:
        node.stop()
        orthanc.stop()


def test_sigkill_mid_job_results_reach_orthanc_exactly_once(tmp_path, bundles, cr_file, ct_files):
    node_port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", "DISSECT_AI", node_port)
    config = _node_config(tmp_path, bundles, node_port, orthanc)
    spool = tmp_path / "spool"
    node = serve_node(config, tmp_path / "node.log")
    try:
        wait_for(lambda: (spool / "node.json").exists(), 120, what="the node to listen")
        cr, ct = _send_studies(orthanc, cr_file, ct_files)
        wait_for(lambda: any((spool / "processing").iterdir()), 60, interval=0.05, what="a job to start")
        node.send_signal(signal.SIGKILL)
        node.wait(timeout=30)
        pending = [p.name for p in (spool / "processing").iterdir()] + [p.name for p in (spool / "incoming").iterdir()]
        assert pending, "the kill came after every job had finished"
        (spool / "node.json").unlink()
        node = serve_node(config, tmp_path / "node.log")
        wait_for(lambda: _all_arrived(orthanc, cr, ct), 240, interval=1.0, what="results after the restart")
        wait_for(lambda: not any((spool / "processing").iterdir()) and not any((spool / "outbox").iterdir()), 60,
                 what="the spool to drain")
        found = _results(orthanc, cr, ct)
        assert {k: len(v) for k, v in found.items()} == {"cr_sr": 1, "cr_seg": 1, "ct_seg": 1}
        assert not any((spool / "failed").iterdir())
        log = (tmp_path / "node.log").read_text()
        assert cr.PatientID not in log and cr.StudyInstanceUID not in log and "highdicom" not in log
    finally:
        if node.poll() is None:
            node.send_signal(signal.SIGTERM)
            node.wait(timeout=60)
        orthanc.stop()


@pytest.mark.skipif(not orthanc_available(dicomweb=True), reason="no DICOMweb plugin: install `orthanc-dicomweb`")
def test_results_also_sent_by_stow_rs(tmp_path, bundles, data_root, monkeypatch):
    """C-STORE to one PACS (a pynetdicom SCP) and STOW-RS with HTTP basic auth to Orthanc's DICOMweb: both receive
    the results; a wrong password is a send error (HTTP 401), not a silent loss."""
    pacs = ResultStore()
    orthanc = Orthanc(tmp_path / "orthanc", "DISSECT_AI", free_port(), dicomweb=True, users={"node": "stow-s3cret"})
    stow_url = orthanc.url + "/dicom-web"
    auth = {"kind": "basic", "username": "node", "password_env": "DISSECT_TEST_STOW_PASSWORD"}
    monkeypatch.setenv("DISSECT_TEST_STOW_PASSWORD", "wrong")
    with pytest.raises(SendError, match="HTTP 401"):
        send_stow_rs([data_root / SIIM_CR], stow_url, StowAuthConfig(**auth))
    monkeypatch.setenv("DISSECT_TEST_STOW_PASSWORD", "stow-s3cret")
    pipelines = _pipelines(bundles)[:1]
    path = node_config_file(
        tmp_path / "node.yaml", tmp_path / "spool", pipelines,
        {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port, "stow_url": stow_url, "stow_auth": auth},
    )
    node = InferenceNode(load_node_config(path))
    node.start()
    try:
        from pynetdicom import AE
        from pynetdicom.sop_class import SecondaryCaptureImageStorage

        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(SecondaryCaptureImageStorage, "1.2.840.10008.1.2.4.50")
        assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="DISSECT_AI")
        assert assoc.send_c_store(data_root / SIIM_CR).Status == 0x0000
        assoc.release()
        cr = pydicom.dcmread(data_root / SIIM_CR)
        (sr,) = wait_for(lambda: orthanc.study_instances(cr.StudyInstanceUID, "SR"), 120, interval=0.5,
                         what="the SR in Orthanc by STOW-RS")
        assert len(pacs.received) == 1 and pacs.received[0].SOPInstanceUID == sr.SOPInstanceUID
        assert node.health()["sent"] == 1
    finally:
        node.stop()
        orthanc.stop()
        pacs.stop()
