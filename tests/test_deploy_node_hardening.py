"""The node against a hostile or careless network, on 127.0.0.1 with real pynetdicom peers and raw sockets: idle and
half-open connections, per-peer limits, instances that can never be processed, called-AE / address / TLS identity,
a full spool, retention, a worker whose reason file cannot be written, file permissions, patient data in what the
node writes besides DICOM, association logs and Prometheus metrics (issue 15: 1, 5, 6, 7, 9, 10, 11)."""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import os
import socket
import ssl
import stat
import time
from pathlib import Path

import pydicom
import pytest
import requests
from deploy_helpers import (
    cr_pipelines,
    CT_RULES,
    SIIM_CR,
    ResultStore,
    ct_series_copy,
    make_tiny_bundle,
    node_config_file,
    serve_node,
    wait_for,
)
from prometheus_client.parser import text_string_to_metric_families
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import (
    ComprehensiveSRStorage,
    CTImageStorage,
    SecondaryCaptureImageStorage,
    Verification,
)

from dissect_monai.deploy.bundle_runner import BundleRunner
from dissect_monai.deploy.config import load_node_config
from dissect_monai.deploy.jobs import FAILURE_CATEGORIES
from dissect_monai.deploy.node import InferenceNode
from dissect_monai.deploy.spool import Spool

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# short association limits so that a freed slot shows within seconds
FAST = {"acse_timeout_seconds": 3, "dimse_timeout_seconds": 30, "network_timeout_seconds": 3, "max_associations": 16}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    return {kind: make_tiny_bundle(root, kind) for kind in ("cxr_classification", "cxr_lung_segmentation")}


@pytest.fixture(scope="module")
def runners(bundles) -> dict[str, BundleRunner]:
    return {"cls": BundleRunner(bundles["cxr_classification"]), "lung": BundleRunner(bundles["cxr_lung_segmentation"])}


def _node(tmp_path: Path, bundles, runners, pacs_port: int = 9, **extra) -> InferenceNode:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = node_config_file(tmp_path / "node.yaml", tmp_path / "spool", cr_pipelines(bundles),
                            {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}, **extra)
    node = InferenceNode(load_node_config(path), runners=runners)
    node.start()
    return node


def _ae(calling: str = "TESTSCU", contexts=None) -> AE:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    for abstract, syntax in contexts or [(Verification, ExplicitVRLittleEndian)]:
        ae.add_requested_context(abstract, syntax)
    return ae


def _cr(data_root: Path, native: bool = False, **changes) -> pydicom.Dataset:
    """The real SIIM chest CR under fresh UIDs (decoded to Explicit VR Little Endian with ``native``), changed."""
    ds = pydicom.dcmread(data_root / SIIM_CR)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if native:
        ds.decompress()
    for key, value in changes.items():
        setattr(ds, key, value)
    return ds


CR_CONTEXTS = [(SecondaryCaptureImageStorage, s) for s in (JPEGBaseline8Bit, ExplicitVRLittleEndian)]


def _store(port: int, datasets, contexts=None, calling: str = "TESTSCU") -> list[int | None]:
    assoc = _ae(calling, contexts or CR_CONTEXTS).associate("127.0.0.1", port, ae_title="DISSECT_AI")
    assert assoc.is_established
    statuses = [getattr(assoc.send_c_store(ds), "Status", None) for ds in datasets]
    assoc.release()
    return statuses


def _echo_ok(port: int, **kwargs) -> bool:
    assoc = _ae().associate("127.0.0.1", port, ae_title="DISSECT_AI", **kwargs)
    if not assoc.is_established:
        return False
    ok = assoc.send_c_echo().Status == 0x0000
    assoc.release()
    return ok


# ------------------------------------------------------------------------------------------------ 15.1 slots
def test_idle_and_half_pdu_connections_free_their_slots(tmp_path, bundles, runners, data_root):
    """16 idle sockets plus 16 that send half an A-ASSOCIATE-RQ PDU and wait: within the network timeout the node
    closes every one of them and a real C-STORE succeeds (before: the half PDUs held their slots forever)."""
    node = _node(tmp_path, bundles, runners, associations={**FAST, "max_associations_per_peer": 64})
    sockets = []
    try:
        for _ in range(16):
            sockets.append(socket.create_connection(("127.0.0.1", node.dicom_port)))
        half = []
        for _ in range(16):
            s = socket.create_connection(("127.0.0.1", node.dicom_port))
            s.sendall(b"\x01\x00\x00\x00\x01\x00\x00\x01")  # A-ASSOCIATE-RQ announcing 256 bytes, 2 sent
            half.append(s)
        sockets += half
        for s in half:  # the node closes them: a read returns end-of-stream instead of blocking
            s.settimeout(30)
            assert s.recv(1024) == b""
        wait_for(lambda: _echo_ok(node.dicom_port), 30, interval=0.5, what="a free association slot")
        assert _store(node.dicom_port, [_cr(data_root)]) == [0x0000]
        assert node.health()["received"] == 1
    finally:
        for s in sockets:
            s.close()
        node.stop()


def test_per_peer_connection_limit(tmp_path, bundles, runners):
    node = _node(tmp_path, bundles, runners, associations={**FAST, "max_associations_per_peer": 2})
    try:
        held = [_ae().associate("127.0.0.1", node.dicom_port, ae_title="DISSECT_AI") for _ in range(2)]
        assert all(a.is_established for a in held)
        assert not _echo_ok(node.dicom_port)  # a third one from the same address is closed unanswered
        held[0].release()
        wait_for(lambda: _echo_ok(node.dicom_port), 30, interval=0.5, what="the peer's slot to be free again")
        held[1].release()
    finally:
        node.stop()


# ------------------------------------------------------------------------------------------------ 15.5 intake
def _bad_instances(data_root: Path) -> dict[str, tuple[pydicom.Dataset, int]]:
    half = _cr(data_root, native=True)
    half.PixelData = half.PixelData[: len(half.PixelData) // 2]
    empty = _cr(data_root, native=True)
    empty.PixelData = b""
    wide = _cr(data_root, native=True)
    wide.BitsAllocated, wide.BitsStored, wide.HighBit = 32, 32, 31  # a 32-bit header over 8-bit data
    sr = pydicom.dcmread(get_testdata_file("test-SR.dcm"))
    for ds in (half, empty, wide, sr):
        ds.PatientName, ds.PatientID = "Quintessa^Zebedee", "PID7731XQ"
    return {
        "half pixel data": (half, 0xA900),
        "zero-length pixel data": (empty, 0xA900),
        "Rows 0": (_cr(data_root, native=True, Rows=0), 0xA900),
        "Columns 0": (_cr(data_root, Columns=0), 0xA900),
        "32-bit header over 8-bit data": (wide, 0xA900),
        # JPEG-compressed: the decoded size comes from the header, the compressed bytes do not matter
        "65535 x 65535 header": (_cr(data_root, Rows=65535, Columns=65535), 0xA700),
        "PALETTE COLOR relabelled": (_cr(data_root, native=True, PhotometricInterpretation="PALETTE COLOR"), 0xC000),
        "YBR_FULL relabelled": (_cr(data_root, PhotometricInterpretation="YBR_FULL"), 0xC000),
        "Comprehensive SR as input": (sr, 0xC000),
    }


def test_instances_no_job_could_process_are_refused_at_c_store(tmp_path, bundles, runners, data_root, caplog):
    bad = _bad_instances(data_root)
    node = _node(tmp_path, bundles, runners, stable_seconds=3600)
    caplog.set_level(logging.WARNING, logger="dissect_monai")
    try:
        contexts = CR_CONTEXTS + [(ComprehensiveSRStorage, ExplicitVRLittleEndian)]
        statuses = dict(zip(bad, _store(node.dicom_port, [ds for ds, _ in bad.values()], contexts)))
        assert statuses == {name: status for name, (_, status) in bad.items()}
        good = _store(node.dicom_port, [_cr(data_root), _cr(data_root, native=True)])
        assert good == [0x0000, 0x0000]  # the same image, intact, compressed and native, is taken
        health = node.health()
        assert health["rejected"] == len(bad) and health["received"] == 2 and node.spool.incoming_count() == 2
    finally:
        node.stop()
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == len(bad)
    assert any("PixelData is" in r for r in refusals) and any("max_instance_bytes" in r for r in refusals)
    assert any("PALETTE COLOR" in r for r in refusals) and any("Comprehensive SR" in r for r in refusals)
    assert "Quintessa" not in caplog.text and "PID7731XQ" not in caplog.text


# ------------------------------------------------------------------------------------------------ 15.6 identity
def test_called_ae_title_and_peer_allow_list(tmp_path, bundles, runners, caplog):
    caplog.set_level(logging.INFO, logger="dissect_monai")
    node = _node(tmp_path / "a", bundles, runners)
    try:
        assert _echo_ok(node.dicom_port)
        wrong_called = _ae().associate("127.0.0.1", node.dicom_port, ae_title="NOT_THE_NODE")
        assert wrong_called.is_rejected
        lower_case = _ae("testscu").associate("127.0.0.1", node.dicom_port, ae_title="DISSECT_AI")
        assert lower_case.is_rejected  # AE titles match case-sensitively (documented in NodeConfig)
    finally:
        node.stop()
    log = caplog.text
    assert "association accepted from 127.0.0.1" in log and "calling 'TESTSCU' called 'DISSECT_AI'" in log
    assert "called AE title is not the node's" in log and "match case-sensitively" in log
    node = _node(tmp_path / "b", bundles, runners, security={"allowed_peers": ["10.0.0.0/8"]})
    try:
        assert not _echo_ok(node.dicom_port)
    finally:
        node.stop()
    assert "address not in security.allowed_peers" in caplog.text
    node = _node(tmp_path / "c", bundles, runners, security={"allowed_peers": ["10.0.0.0/8", "127.0.0.1"]})
    try:
        assert _echo_ok(node.dicom_port)
    finally:
        node.stop()


def _certificates(folder: Path) -> dict[str, Path]:
    """A throwaway CA, a node certificate for 127.0.0.1 and a client certificate (cryptography, EC P-256)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    files = {}

    def issue(name: str, issuer_key, issuer_name, ca: bool, san: bool):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name or subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        cert = builder.sign(issuer_key or key, hashes.SHA256())
        files[f"{name}.crt"] = folder / f"{name}.crt"
        files[f"{name}.key"] = folder / f"{name}.key"
        files[f"{name}.crt"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{name}.key"].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
        return key, subject

    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_name = issue("ca", None, None, ca=True, san=False)
    issue("node", ca_key, ca_name, ca=False, san=True)
    issue("client", ca_key, ca_name, ca=False, san=False)
    return files


def test_tls_only_with_a_client_certificate_from_the_ca(tmp_path, bundles, runners, data_root):
    certs = _certificates(tmp_path / "pki")
    tls = {"certificate": str(certs["node.crt"]), "private_key": str(certs["node.key"]),
           "ca_certificates": str(certs["ca.crt"]), "require_client_certificate": True}
    node = _node(tmp_path, bundles, runners, security={"tls": tls}, associations=FAST)

    def client(with_certificate: bool) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certs["ca.crt"]))
        if with_certificate:
            context.load_cert_chain(str(certs["client.crt"]), str(certs["client.key"]))
        return context

    try:
        scu = _ae(contexts=CR_CONTEXTS)
        assoc = scu.associate("127.0.0.1", node.dicom_port, ae_title="DISSECT_AI", tls_args=(client(True), "127.0.0.1"))
        assert assoc.is_established
        assert assoc.send_c_store(_cr(data_root)).Status == 0x0000
        assoc.release()
        assert not _echo_ok(node.dicom_port)  # plain DICOM on the TLS port
        assert not _echo_ok(node.dicom_port, tls_args=(client(False), "127.0.0.1"))  # no client certificate
        assert _echo_ok(node.dicom_port, tls_args=(client(True), "127.0.0.1"))  # the failures took no slot
        assert node.health()["received"] == 1
    finally:
        node.stop()


# ------------------------------------------------------------------------------------------------ 15.7 disk
def test_full_spool_refused_then_every_acknowledged_study_processed(tmp_path, bundles, runners, data_root):
    """A spool quota of about two instances: the third study is refused with 0xA700 while two wait; once the
    worker has processed them (and retention emptied done/) the same study is taken, and all three get results."""
    size = len((data_root / SIIM_CR).read_bytes())
    pacs = ResultStore()
    node = _node(tmp_path, bundles, runners, pacs.port, stable_seconds=1.0,
                 intake={"spool_max_bytes": int(2.5 * size)},
                 retention={"done_max_bytes": 0, "sent_max_bytes": 0, "interval_seconds": 0})
    try:
        studies = [_cr(data_root) for _ in range(3)]
        assert _store(node.dicom_port, studies[:2]) == [0x0000, 0x0000]
        time.sleep(1.1)  # the quota's measurement is at most one second old
        assert _store(node.dicom_port, studies[2:]) == [0xA700]
        wait_for(lambda: node.health()["processed"] == 2, 120, what="the two acknowledged studies")
        wait_for(lambda: _store(node.dicom_port, studies[2:]) == [0x0000], 60, interval=1.0,
                 what="the refused study to be taken once the spool has room")
        wait_for(lambda: node.health()["processed"] == 3 and len(pacs.received) == 6, 120, what="every study's results")
        wait_for(lambda: not any(any((node.spool.root / a).iterdir()) for a in ("done", "sent")), 30,
                 what="retention to empty done/ and sent/")
        assert node.health()["rejected"] >= 1 and node.health()["status"] == "ok"
    finally:
        node.stop()
        pacs.stop()


def test_free_space_floor_refuses_with_a700(tmp_path, bundles, runners, data_root, caplog):
    node = _node(tmp_path, bundles, runners, intake={"min_free_bytes": 2**62})
    try:
        assert _store(node.dicom_port, [_cr(data_root)]) == [0xA700]
        assert node.spool.incoming_count() == 0
    finally:
        node.stop()
    assert "intake.min_free_bytes" in caplog.text


def test_spool_prune_by_age_and_size(tmp_path):
    """Retention deletes the oldest done/ jobs by age and size; failed/ and the study version records stay."""
    spool = Spool(tmp_path)
    (tmp_path / "versions").mkdir()
    (tmp_path / "versions" / "study.json").write_text('{"version": 1, "series": {}}')
    now = time.time()
    for k, age_hours in enumerate((50, 30, 2, 1)):
        job = tmp_path / "done" / f"job{k}"
        (job / "series").mkdir(parents=True)
        (job / "series" / "x.dcm").write_bytes(b"\0" * 1000)
        os.utime(job, (now - age_hours * 3600, now - age_hours * 3600))
    assert spool.prune("done", 48 * 3600, None) == 1  # older than 48 h
    assert spool.prune("done", None, 2500) == 1  # the oldest left goes until 2 of 1000 bytes remain
    assert sorted(p.name for p in (tmp_path / "done").iterdir()) == ["job2", "job3"]
    assert spool.prune("done", None, None) == 0
    assert spool.prune("done", 0, 0) == 2 and (tmp_path / "versions" / "study.json").is_file()
    for kept in ("failed", "versions"):
        with pytest.raises(ValueError, match="only done/ and sent/"):
            spool.prune(kept, 0, 0)


def test_worker_survives_unwritable_reason_file(tmp_path, bundles, runners, data_root):
    """A job fails and its reason.txt cannot be written (an OSError, as on a full disk): the job still goes to
    failed/ (its failure report still reaches the PACS), the worker lives on and the next study is processed
    (before: the worker thread died silently)."""
    pacs = ResultStore()
    spool = Spool(tmp_path / "spool")
    broken = _cr(data_root)
    raw = (data_root / SIIM_CR).read_bytes()  # half a file: its job fails reading it
    spool.store(raw[: len(raw) // 2], broken.StudyInstanceUID, broken.SeriesInstanceUID, broken.SOPInstanceUID)
    (job,) = spool.claim_stable_studies(0.0)
    (tmp_path / "spool" / "processing" / job / "reason.txt").symlink_to(tmp_path / "no" / "such" / "folder")
    node = _node(tmp_path, bundles, runners, pacs.port)
    try:
        wait_for(lambda: (tmp_path / "spool" / "failed" / job).is_dir(), 60, what="the broken job in failed/")
        assert _store(node.dicom_port, [_cr(data_root)]) == [0x0000]
        wait_for(lambda: len(pacs.received) == 3, 120, what="the failure report and the next study's SR + SEG")
        health = requests.get(f"http://127.0.0.1:{node.health_port}/health", timeout=10).json()
        assert health["worker"] == "ok"
        assert (health["failed"], health["failure_reports"], health["processed"]) == (1, 1, 1)
        assert not (tmp_path / "spool" / "failed" / job / "reason.txt").exists()
    finally:
        node.stop()
        pacs.stop()


def test_health_reports_a_stuck_worker(tmp_path, data_root):
    """A job (a 20-slice CT series, seconds) longer than ``health_stuck_seconds`` (0.5 s; the idle loop beats every
    0.05 s) makes /health answer 503 "stuck" while it runs, and "ok" again once it has finished."""
    bundle = make_tiny_bundle(tmp_path / "bundles", "ct_segmentation")
    pipelines = [{"name": "ct", "bundle": str(bundle), "output": "seg", "rules": CT_RULES}]
    path = node_config_file(tmp_path / "node.yaml", tmp_path / "spool", pipelines, health_stuck_seconds=0.5,
                            poll_seconds=0.05)
    node = InferenceNode(load_node_config(path), runners={"ct": BundleRunner(bundle)})
    node.start()
    seen = []

    def poll() -> bool:
        response = requests.get(f"http://127.0.0.1:{node.health_port}/health", timeout=10)
        seen.append((response.status_code, response.json()["worker"]))
        return response.json()["processed"] + response.json()["failed"] == 1

    try:
        series = [pydicom.dcmread(f) for f in ct_series_copy(data_root, tmp_path / "ct")]
        assert _store(node.dicom_port, series, [(CTImageStorage, JPEG2000Lossless)]) == [0x0000] * len(series)
        wait_for(poll, 300, interval=0.1, what="the CT job to finish")
        wait_for(lambda: poll() and seen[-1] == (200, "ok"), 10, what="/health ok again")
    finally:
        node.stop()
    assert (503, "stuck") in seen and seen[-1] == (200, "ok")


# ------------------------------------------------------------------------------------------------ 15.9-15.11
PLANTED = {"PatientName": "Quintessa^Zebedee", "PatientID": "PID7731XQ", "PatientBirthDate": "1961-07-04",
           "ReferringPhysicianName": "Ottoline^Drummond", "AccessionNumber": "ACC99812Z"}


def test_spool_permissions_and_no_patient_data_outside_dicom(tmp_path, bundles, data_root):
    """The node as deployed (CLI, own process): every spool folder 0700, every file 0600; planted names, IDs,
    birth date, referrer and accession number appear in no file it writes besides the DICOM payloads; every
    association is logged; /metrics is Prometheus text, /health JSON."""
    pacs = ResultStore()
    path = node_config_file(tmp_path / "node.yaml", tmp_path / "spool", cr_pipelines(bundles),
                            {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port})
    spool = tmp_path / "spool"
    (spool / "tmp").mkdir(parents=True)
    (spool / "tmp" / "stale.part").write_bytes(b"left by a crash")
    log = tmp_path / "node.log"
    process = serve_node(path, log)
    try:
        ports = json.loads(wait_for(lambda: (spool / "node.json").is_file() and (spool / "node.json").read_text(),
                                    180, what="the node to listen"))
        assert not (spool / "tmp" / "stale.part").exists()
        good = _cr(data_root, **PLANTED)
        failing = _cr(data_root, **PLANTED)  # the same patient; pixels that cannot be decoded fail its job
        failing.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8 not a JPEG stream \xff\xd9"])
        assert _store(ports["dicom_port"], [good, failing]) == [0x0000, 0x0000]
        intruder = _ae("INTRUDER").associate("127.0.0.1", ports["dicom_port"], ae_title="DISSECT_AI")
        assert intruder.is_rejected
        health_url = f"http://127.0.0.1:{ports['health_port']}"

        def finished() -> bool:
            health = requests.get(health_url + "/health", timeout=10).json()
            return health["processed"] + health["failed"] == 2

        wait_for(finished, 180, what="both studies' jobs to finish")
        metrics = requests.get(health_url + "/metrics", timeout=10)
        assert metrics.headers["Content-Type"].startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(metrics.text)}
        assert families["dissect_node_received"].samples[0].value == 2
        outcomes = {s.labels["outcome"]: s.value for s in families["dissect_node_associations"].samples
                    if s.name.endswith("_total")}
        assert outcomes["rejected"] == 1 and outcomes["accepted"] >= 1
        total = {sample.name.removesuffix("_total"): sample.value for family in families.values()
                 for sample in family.samples if sample.name.endswith("_total") and not sample.labels}
        categories = [name for name in total if name.startswith("dissect_node_failed_")]
        assert {f"dissect_node_failed_{c}" for c in FAILURE_CATEGORIES} == set(categories)
        assert sum(total[name] for name in categories) == total["dissect_node_failed"] == 1
        assert total["dissect_node_failure_reports"] == 1 and total["dissect_node_not_assessed"] == 0
        assert requests.get(health_url + "/health", timeout=10).headers["Content-Type"] == "application/json"
    finally:
        process.send_signal(15)
        process.wait(timeout=120)
        pacs.stop()
    for item in spool.rglob("*"):
        mode = stat.S_IMODE(item.stat().st_mode)
        assert mode == (0o700 if item.is_dir() else 0o600), f"{item.relative_to(spool)} is {oct(mode)}"
    written = [log] + [p for p in spool.rglob("*") if p.is_file() and p.suffix != ".dcm"]
    assert any(p.name == "reason.txt" for p in written)  # the failing study's reason is among the files checked
    for file in written:
        text = file.read_text(errors="replace")
        for keyword, value in PLANTED.items():
            for part in value.split("^"):
                assert part.lower() not in text.lower(), f"{keyword} value in {file.name}"
    text = log.read_text()
    assert "association accepted from 127.0.0.1" in text and "association rejected from 127.0.0.1" in text
    assert "calling 'INTRUDER'" in text and "association released" in text


def test_config_groups_name_the_bad_key(tmp_path):
    pipelines = [{"name": "x", "bundle": "b", "output": "sr"}]
    path = tmp_path / "node.yaml"
    node_config_file(path, tmp_path / "spool", pipelines, security={"allowed_peer": ["10.0.0.0/8"]})
    with pytest.raises(ValueError, match=r"node.yaml: security: unknown keys \['allowed_peer'\]"):
        load_node_config(path)
    node_config_file(path, tmp_path / "spool", pipelines, security={"tls": {"certificate": "c.pem"}})
    with pytest.raises(ValueError, match=r"security.tls: .*private_key"):
        load_node_config(path)
    node_config_file(path, tmp_path / "spool", pipelines, destination={"stow_auth": {"kind": "digest"}})
    with pytest.raises(ValueError, match="kind must be 'basic' or 'bearer'"):
        load_node_config(path)
    node_config_file(path, tmp_path / "spool", pipelines, intake={"sop_classes": ["NoSuchImageStorage"]})
    with pytest.raises(ValueError, match="NoSuchImageStorage"):
        InferenceNode(load_node_config(path), runners={})
    tls = {"certificate": "c.pem", "private_key": "k"}
    node_config_file(path, tmp_path / "spool", pipelines, security={"tls": tls})
    config = load_node_config(path)
    assert config.security.tls.certificate == tmp_path / "c.pem" and config.security.require_called_aet
    with pytest.raises(ValueError, match="c.pem"):
        InferenceNode(config, runners={})
