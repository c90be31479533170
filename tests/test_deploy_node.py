"""The DICOM inference node against real pynetdicom peers on 127.0.0.1 (no Orthanc needed): association
control, spool durability and concurrency, malformed input, jobs through real (tiny) MONAI bundles, retries."""

from __future__ import annotations

import io
import json
import signal
import threading
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from deploy_helpers import (
    cr_pipelines,
    CR_RULES,
    CT_RULES,
    SIIM_CR,
    ResultStore,
    serve_node,
    ct_series_copy,
    free_port,
    make_tiny_bundle,
    node_config_file,
    wait_for,
)
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)
from pynetdicom import _config as pynetdicom_config
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, SecondaryCaptureImageStorage, Verification

from dissect_monai.deploy.bundle_runner import BundleRunner
from dissect_monai.deploy.config import load_node_config
from dissect_monai.deploy.jobs import series_matches
from dissect_monai.deploy.node import InferenceNode
from dissect_monai.dicom.seg import label_map_to_frames
from dissect_monai.deploy.spool import Spool
from dissect_monai.dicom.sr import read_classification_sr, read_unassessed_sr

# These tests use tiny randomly initialised bundles written by deploy_helpers.make_tiny_bundle; they test the
# node's handling of the generic bundle contract, not model quality.


pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    return {kind: make_tiny_bundle(root, kind) for kind in ("cxr_classification", "cxr_lung_segmentation")}


@pytest.fixture(scope="module")
def runners(bundles) -> dict[str, BundleRunner]:
    return {"cls": BundleRunner(bundles["cxr_classification"]), "lung": BundleRunner(bundles["cxr_lung_segmentation"])}


def _start_node(tmp_path: Path, bundles, runners, destination_port: int, **extra) -> InferenceNode:
    path = node_config_file(tmp_path / "node.yaml", tmp_path / "spool", cr_pipelines(bundles),
                            {"ae_title": "PACS", "host": "127.0.0.1", "port": destination_port}, **extra)
    node = InferenceNode(load_node_config(path), runners=runners)
    node.start()
    return node


def _associate(port: int, calling: str = "TESTSCU", contexts=None):
    ae = AE(ae_title=calling)
    # this 2-core machine is shared: negotiation and responses can take far longer than the 30 s defaults
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 300
    for abstract, syntax in contexts or [(Verification, ImplicitVRLittleEndian)]:
        ae.add_requested_context(abstract, syntax)
    return ae.associate("127.0.0.1", port, ae_title="DISSECT_AI")


def _cr_context():
    """One presentation context per transfer syntax, so the SCP cannot narrow JPEG away."""
    return [(SecondaryCaptureImageStorage, s) for s in (JPEGBaseline8Bit, ExplicitVRLittleEndian)]


@pytest.fixture()
def node_and_pacs(tmp_path, bundles, runners):
    pacs = ResultStore()
    node = _start_node(tmp_path, bundles, runners, pacs.port)
    yield node, pacs
    node.stop()
    pacs.stop()


def test_echo_allowed_and_unknown_calling_ae_rejected(node_and_pacs):
    node, _ = node_and_pacs
    assoc = _associate(node.dicom_port)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    intruder = _associate(node.dicom_port, calling="INTRUDER")
    assert intruder.is_rejected and not intruder.is_established
    assert node.health()["received"] == 0


def test_cr_study_to_sr_and_seg_delivered(node_and_pacs, data_root, runners):
    node, pacs = node_and_pacs
    source_path = data_root / SIIM_CR
    assoc = _associate(node.dicom_port, contexts=_cr_context())
    assert assoc.send_c_store(source_path).Status == 0x0000
    assoc.release()
    wait_for(lambda: len(pacs.received) == 2, 60, what="SR and SEG at the PACS")
    source = pydicom.dcmread(source_path)
    by_modality = {ds.Modality: ds for ds in pacs.received}
    assert set(by_modality) == {"SR", "SEG"}
    for ds in by_modality.values():
        assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.SeriesInstanceUID != source.SeriesInstanceUID
    direct = runners["cls"].predict(source_path)
    expected = {"no finding": float(direct[0]), "pneumonia": float(direct[1])}
    assert read_classification_sr(by_modality["SR"]) == pytest.approx(expected, abs=1e-6)
    import highdicom as hd

    seg = hd.seg.Segmentation.from_dataset(by_modality["SEG"])
    mask = seg.get_pixels_by_source_instance([source.SOPInstanceUID], combine_segments=True)[0]
    expected_mask = label_map_to_frames(runners["lung"].predict(source_path).numpy().round(), [source])[0]
    np.testing.assert_array_equal(mask, expected_mask)
    assert 0 < expected_mask.sum() < expected_mask.size  # a non-trivial mask
    assert not (runners["lung"].bundle_dir / "eval").exists()  # the bundle's SaveImaged step was dropped
    health = requests.get(f"http://127.0.0.1:{node.health_port}/health", timeout=5).json()
    assert health["received"] == 1 and health["processed"] == 1 and health["sent"] == 2 and health["failed"] == 0
    assert (node.spool.root / "node.json").is_file()


def test_ct_series_to_seg_delivered(tmp_path, bundles, runners, data_root):
    """A CT series (20 real JPEG 2000 slices) -> one multi-frame SEG whose frames equal the bundle's own output."""
    pacs = ResultStore()
    ct_bundle = make_tiny_bundle(tmp_path / "bundles", "ct_segmentation")
    ct_runner = BundleRunner(ct_bundle)
    pipelines = [{"name": "ct", "bundle": str(ct_bundle), "output": "seg", "rules": CT_RULES}]
    path = node_config_file(tmp_path / "node.yaml", tmp_path / "spool", pipelines,
                            {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port})
    node = InferenceNode(load_node_config(path), runners={"ct": ct_runner})
    node.start()
    try:
        files = ct_series_copy(data_root, tmp_path / "ct")
        series = [pydicom.dcmread(f) for f in files]
        assoc = _associate(node.dicom_port, contexts=[(CTImageStorage, JPEG2000Lossless)])
        assert all(assoc.send_c_store(ds).Status == 0x0000 for ds in series)
        assoc.release()
        wait_for(lambda: len(pacs.received) == 1, 120, what="the CT SEG at the PACS")
    finally:
        node.stop()
        pacs.stop()
    import highdicom as hd

    seg = hd.seg.Segmentation.from_dataset(pacs.received[0])
    frames = seg.get_pixels_by_source_instance([d.SOPInstanceUID for d in series], combine_segments=True,
                                               relabel=True)
    pred = ct_runner.predict(tmp_path / "ct")
    expected = label_map_to_frames(pred.numpy(), series, np.asarray(pred.affine))
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["liver", "spleen"]
    np.testing.assert_array_equal(frames, expected)
    assert len(np.unique(expected)) == 3  # background and both labels occur: a non-trivial comparison
    assert seg.StudyInstanceUID == series[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == series[0].FrameOfReferenceUID


def _cr_variant(data_root: Path, **changes) -> pydicom.Dataset:
    ds = pydicom.dcmread(data_root / SIIM_CR)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for key, value in changes.items():
        setattr(ds, key, value)
    return ds


def test_malformed_instances_rejected_or_failed_node_alive(node_and_pacs, data_root, tmp_path, caplog, monkeypatch):
    node, pacs = node_and_pacs
    monkeypatch.setattr(pynetdicom_config, "STORE_SEND_CHUNKED_DATASET", True)  # send file bytes as they are
    # 1. missing pixel data -> refused at C-STORE
    no_pixels = _cr_variant(data_root)
    del no_pixels.PixelData
    # 2. truncated file: the encoded bytes end in the middle of the pixel data
    truncated_path = tmp_path / "truncated.dcm"
    _cr_variant(data_root).save_as(truncated_path, enforce_file_format=True)
    truncated_path.write_bytes(truncated_path.read_bytes()[:40_000])
    # 3. wrong transfer syntax claim: native pixels in a file whose meta says RLE Lossless
    lying = _cr_variant(data_root)
    # distinctive planted values, so the log check below cannot match a hash or a count by chance (a real "62" did)
    lying.PatientName, lying.PatientID, lying.PatientAge = "Plantedname^Lying", "PLANTED-ID-7731", "093Y"
    lying.PixelData = lying.pixel_array.tobytes()
    lying.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    lying_path = tmp_path / "lying.dcm"
    lying.save_as(lying_path, enforce_file_format=True)
    raw = lying_path.read_bytes()
    assert raw.count(b"1.2.840.10008.1.2.1\x00") == 1  # same length as the RLE UID: only the claim changes
    lying_path.write_bytes(raw.replace(b"1.2.840.10008.1.2.1\x00", RLELossless.encode() + b"\x00"))
    assoc = _associate(node.dicom_port, contexts=_cr_context() + [(SecondaryCaptureImageStorage, RLELossless)])
    statuses = [assoc.send_c_store(no_pixels).Status]
    for path in (truncated_path, lying_path):
        status = assoc.send_c_store(path)
        statuses.append(getattr(status, "Status", None))
    assoc.release()
    monkeypatch.undo()  # the node's own sender runs in this process
    # missing pixels and truncated bytes are refused at C-STORE; the lying file is spooled and its job fails
    assert statuses == [0xA900, 0xC000, 0x0000]
    wait_for(lambda: node.health()["failed"] == 1, 60, what="the job of the mislabelled instance to fail")
    health = node.health()
    assert health["rejected"] == 2 and health["received"] == 1 and health["processed"] == 0
    assert health["failed_algorithm"] == 1 and health["failure_reports"] == 1
    (failed,) = (node.spool.root / "failed").iterdir()
    reason = (failed / "reason.txt").read_text()
    assert reason.startswith("category: algorithm") and "bundle failed" in reason
    assert "applying transform <" not in reason  # MONAI's wrapper is not the reason: its cause is
    assert "cause: ImageLoadError: " in reason and "cannot decode pixel data (RLE Lossless)" in reason
    (report,) = wait_for(lambda: pacs.received, 30, what="the failure report at the PACS")
    assert report.Modality == "SR" and report.StudyInstanceUID == lying.StudyInstanceUID
    assert read_unassessed_sr(report) == {"AI processing": "The AI algorithm could not process this study: the "
                                                           "algorithm failed on an image of the study."}
    assert len(list(failed.glob("*/*.dcm"))) == 1  # the input is kept for inspection
    echo = _associate(node.dicom_port)  # still serving
    assert echo.send_c_echo().Status == 0x0000
    echo.release()
    for keyword in ("PatientName", "PatientID", "PatientAge"):  # attribute names may be logged, never values
        assert str(lying.get(keyword)) not in caplog.text


def test_malformed_birth_date_still_gives_results(tmp_path, bundles, runners, data_root, caplog):
    """PatientBirthDate '1961-07-04' (not DICOM DA, common in the wild) used to fail the whole study. The job runs
    in the node's process (no time limit) so that its log lines are captured here."""
    pacs = ResultStore()
    node = _start_node(tmp_path, bundles, runners, pacs.port, results={"job_timeout_seconds": 0})
    source = _cr_variant(data_root)
    tag = Tag("PatientBirthDate")  # the raw bytes an archive sends (pydicom validates a value set in code)
    source._dict[tag] = RawDataElement(tag, "DA", 10, b"1961-07-04", 0, False, True)
    caplog.clear()
    assoc = _associate(node.dicom_port, contexts=_cr_context())
    assert assoc.send_c_store(source).Status == 0x0000
    assoc.release()
    try:
        wait_for(lambda: len(pacs.received) == 2, 60, what="SR and SEG at the PACS")
        health = node.health()
    finally:
        node.stop()
        pacs.stop()
    assert {ds.PatientBirthDate for ds in pacs.received} == {"19610704"}
    assert health["failed"] == 0 and not any((node.spool.root / "failed").iterdir())
    assert "1961-07-04" not in caplog.text and "PatientBirthDate" in caplog.text


def test_concurrent_associations_every_instance_spooled(tmp_path, bundles, data_root):
    """8 senders x 50 instances at once into the node served by the CLI in its own process (as deployed)."""
    path = node_config_file(tmp_path / "node.yaml", tmp_path / "spool", cr_pipelines(bundles), stable_seconds=3600)
    node = serve_node(path, tmp_path / "node.log")
    spool = tmp_path / "spool"
    template = (data_root / SIIM_CR).read_bytes()
    errors: list[str] = []
    sent: list[str] = []
    batches = []  # built before sending: the senders only send
    for _ in range(8):
        study = generate_uid()
        batch = [pydicom.dcmread(io.BytesIO(template)) for _ in range(50)]
        for ds in batch:
            ds.StudyInstanceUID, ds.SOPInstanceUID = study, generate_uid()
        batches.append(batch)

    def sender(k: int, port: int) -> None:
        assoc = _associate(port, contexts=_cr_context())
        if not assoc.is_established:
            errors.append(f"sender {k}: association failed")
            return
        for i, ds in enumerate(batches[k]):
            status = assoc.send_c_store(ds)
            if getattr(status, "Status", None) != 0x0000:
                errors.append(f"sender {k} instance {i}: {status}")
            else:
                sent.append(ds.SOPInstanceUID)
        assoc.release()

    try:
        ports = json.loads(wait_for(lambda: (spool / "node.json").is_file() and (spool / "node.json").read_text(),
                                    180, what="the node to listen"))
        threads = [threading.Thread(target=sender, args=(k, ports["dicom_port"])) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        spooled = {p.stem for p in (spool / "incoming").glob("*/*/*.dcm")}
        assert len(sent) == 400 and spooled == set(sent)
        health = requests.get(f"http://127.0.0.1:{ports['health_port']}/health", timeout=30).json()
        assert health["received"] == 400 and health["rejected"] == 0
        assert not list((spool / "tmp").iterdir())
        one = next((spool / "incoming").glob("*/*/*.dcm"))
        assert pydicom.dcmread(one).pixel_array.shape == (1024, 1024)
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(timeout=120)


def test_results_stay_queued_until_pacs_is_up(tmp_path, bundles, runners, data_root):
    port = free_port()
    node = _start_node(tmp_path, bundles, runners, port)
    try:
        assoc = _associate(node.dicom_port, contexts=_cr_context())
        assert assoc.send_c_store(data_root / SIIM_CR).Status == 0x0000
        assoc.release()
        wait_for(lambda: node.health()["send_errors"] >= 2, 60, what="failed send attempts")
        assert len(node.spool.outbox_jobs()) == 1 and node.health()["sent"] == 0
        pacs = ResultStore(port)
        try:
            wait_for(lambda: len(pacs.received) == 2, 30, what="delivery after the PACS came up")
        finally:
            pacs.stop()
        assert not node.spool.outbox_jobs() and len(list((node.spool.root / "sent").iterdir())) == 1
    finally:
        node.stop()


def test_restart_processes_pending_study_exactly_once(tmp_path, bundles, runners, data_root):
    pacs = ResultStore()
    try:
        spool = Spool(tmp_path / "spool")
        source = pydicom.dcmread(data_root / SIIM_CR)
        spool.store((data_root / SIIM_CR).read_bytes(), source.StudyInstanceUID, source.SeriesInstanceUID,
                    source.SOPInstanceUID)
        (job,) = spool.claim_stable_studies(0.0)  # claimed, then the node "crashed" before running it
        node = _start_node(tmp_path, bundles, runners, pacs.port)
        try:
            wait_for(lambda: len(pacs.received) == 2, 60, what="results of the pending job")
            assert (tmp_path / "spool" / "done" / job).is_dir() and not spool.pending_jobs()
        finally:
            node.stop()
        node = _start_node(tmp_path, bundles, runners, pacs.port)  # a second restart does nothing again
        try:
            threading.Event().wait(2.0)
            assert len(pacs.received) == 2 and node.health()["processed"] == 0
        finally:
            node.stop()
    finally:
        pacs.stop()


def test_spool_complete_is_idempotent(tmp_path, data_root):
    spool = Spool(tmp_path)
    source = pydicom.dcmread(data_root / SIIM_CR)
    spool.store((data_root / SIIM_CR).read_bytes(), source.StudyInstanceUID, source.SeriesInstanceUID,
                source.SOPInstanceUID)
    (job,) = spool.claim_stable_studies(0.0)
    result = pydicom.dcmread(data_root / SIIM_CR)
    assert spool.complete(job, [result]) == 1
    assert spool.complete(job, [result, result]) == 0  # a re-run after a crash publishes nothing new
    assert len(spool.outbox_files(job)) == 1
    assert spool.outbox_jobs() == [job] and (tmp_path / "done" / job).is_dir()
    with pytest.raises(ValueError, match="not a valid DICOM UID"):
        spool.store(b"x", "../../etc", "1.2", "1.2.3")


def test_series_rules():
    ds = pydicom.Dataset()
    ds.Modality, ds.ImageType, ds.BodyPartExamined = "CT", ["ORIGINAL", "PRIMARY", "AXIAL"], "CHEST"
    assert series_matches(ds, CT_RULES)
    assert not series_matches(ds, CR_RULES)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    assert not series_matches(ds, CT_RULES)
    assert series_matches(ds, {"BodyPartExamined": "(?i)chest", "ImageType": ["PRIMARY"]})
    del ds.BodyPartExamined
    assert series_matches(ds, {"BodyPartExamined": "CHEST|"}) and not series_matches(ds, {"BodyPartExamined": "CHEST"})


def test_node_config_errors(tmp_path):
    path = tmp_path / "node.yaml"
    node_config_file(path, tmp_path / "spool", [{"name": "x", "bundle": "b", "output": "png"}])
    with pytest.raises(ValueError, match=r"node.yaml: pipelines\[0\]: output must be"):
        load_node_config(path)
    node_config_file(path, tmp_path / "spool", [{"name": "x", "bundle": "b", "output": "sr"}], colour="blue")
    with pytest.raises(ValueError, match=r"unknown keys \['colour'\]"):
        load_node_config(path)
    node_config_file(path, tmp_path / "spool", [{"name": "x", "bundle": "b", "output": "sr"}])
    config = load_node_config(path)
    assert config.pipelines[0].bundle == (tmp_path / "b").resolve() and config.host == "127.0.0.1"
    assert json.loads(json.dumps(config.allowed_calling_aets)) == ["ORTHANC", "TESTSCU"]


def test_cli_reports_bad_config(tmp_path, capsys):
    from dissect_monai.deploy.__main__ import main

    pipelines = [{"name": "x", "bundle": "nowhere", "output": "sr"}]
    path = node_config_file(tmp_path / "node.yaml", tmp_path / "spool", pipelines)
    assert main(["serve", "--config", str(path)]) == 2
    assert "nowhere: no inference config" in capsys.readouterr().err
    assert main(["serve", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: cannot read node config" in capsys.readouterr().err
