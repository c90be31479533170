"""PACS round-trip benchmark: a private Orthanc 1.10 and the inference node on 127.0.0.1, real DICOM studies
(SIIM chest CR, pydicom-data's RG1_UNCR, the TotalSegmentator CT series, under fresh UIDs), with the pipelines of
the node config. Measures latency (last instance acknowledged by the node -> all results in Orthanc, p50 / p95,
CR and CT, stable-study wait included), throughput with concurrent senders, and the slot-exhaustion recovery time
(16 silent connections plus one half PDU, until a real association succeeds) and the peak resident memory of the
node and of its largest child process. Bundles without ``models/model.pt``
run with random weights (``--allow-untrained``): timings only. Usage:
    python scripts/benchmark_pacs.py --cr-studies 10 --ct-studies 3 --senders 8 --studies-per-sender 5
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import platform
import resource
import socket
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import torch
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from dissect_monai.data import default_data_root
from dissect_monai.deploy.config import DestinationConfig, load_node_config
from dissect_monai.deploy.jobs import series_matches
from dissect_monai.deploy.node import InferenceNode
from dissect_monai.dicom.uids import assign_missing_uids
from dissect_monai.utils import machine_state

from repo_paths import REPO, RESULTS, TEST_HARNESS

sys.path.insert(0, str(TEST_HARNESS))
from harness.bundles import untrained_copy  # noqa: E402
from harness.orthanc import LocalOrthanc, free_port, wait_for  # noqa: E402

SIIM_CR = Path("dicom-samples", "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm")  # under the data root
CT_SERIES = Path("totalseg-ct", "example_ct_dicom")


def _encode(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _fresh_study(template: list[pydicom.Dataset]) -> list[bytes]:
    """The instances of ``template`` (one study) under new Study / Series / SOP Instance UIDs."""
    study, series = generate_uid(), generate_uid()
    out = []
    for ds in template:  # the template's UIDs are overwritten: every call sets all three anew
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        out.append(_encode(ds))
    return out


def _expected_results(node: InferenceNode, header: pydicom.Dataset) -> dict[str, int]:
    """Result modality -> count the node's pipelines produce for a study of this series."""
    outputs = [p.output for p in node.config.pipelines if series_matches(header, p.rules)]
    return {modality: outputs.count(o) for o, modality in (("sr", "SR"), ("seg", "SEG")) if o in outputs}


def _results_stored(orthanc: LocalOrthanc, study_uid: str, expected: dict[str, int]) -> bool:
    return all(len(orthanc.instance_ids(study_uid, modality)) >= n for modality, n in expected.items())


def _percentiles(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=float)
    return {"n": int(array.size), "p50_s": float(np.percentile(array, 50)), "p95_s": float(np.percentile(array, 95)),
            "mean_s": float(array.mean()), "max_s": float(array.max())}


def measure_latency(orthanc: LocalOrthanc, node: InferenceNode, template: list[pydicom.Dataset], studies: int,
                    timeout: float) -> list[float]:
    """Sequential studies through Orthanc -> node -> Orthanc; seconds from last instance acknowledged to results."""
    expected = _expected_results(node, template[0])
    latencies = []
    for _ in range(studies):
        instances = _fresh_study(template)
        ids = [orthanc.upload(data) for data in instances]
        study_uid = pydicom.dcmread(io.BytesIO(instances[0]), stop_before_pixels=True).StudyInstanceUID
        answer = orthanc.store_to_node(ids)
        received = time.perf_counter()
        if answer.get("FailedInstancesCount"):
            raise RuntimeError(f"Orthanc could not send {answer['FailedInstancesCount']} instance(s) to the node")
        wait_for(lambda: _results_stored(orthanc, study_uid, expected), timeout, interval=0.1, what="results")
        latencies.append(time.perf_counter() - received)
    return latencies


def measure_throughput(orthanc: LocalOrthanc, node: InferenceNode, templates: list[list[pydicom.Dataset]],
                       senders: int, per_sender: int, timeout: float) -> dict[str, float]:
    """``senders`` SCUs push ``per_sender`` studies each at once; studies/min until every result is in Orthanc."""
    work = [[_fresh_study(templates[(s + k) % len(templates)]) for k in range(per_sender)] for s in range(senders)]
    expected = _expected_results(node, templates[0][0])
    errors: list[str] = []

    def push(index: int) -> None:
        ae = AE(ae_title=f"SENDER{index}")
        ae.dimse_timeout = 300
        headers = [pydicom.dcmread(io.BytesIO(study[0]), stop_before_pixels=True) for study in work[index]]
        for sop_class, syntax in sorted({(str(h.SOPClassUID), str(h.file_meta.TransferSyntaxUID)) for h in headers}):
            ae.add_requested_context(sop_class, syntax)
        assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title=node.config.ae_title)
        statuses = [getattr(assoc.send_c_store(pydicom.dcmread(io.BytesIO(data))), "Status", None)
                    for study in work[index] for data in study] if assoc.is_established else ["no association"]
        errors.extend(f"sender {index}: C-STORE status {status}" for status in statuses if status != 0x0000)
        if assoc.is_established:
            assoc.release()

    study_uids = [pydicom.dcmread(io.BytesIO(s[0]), stop_before_pixels=True).StudyInstanceUID for w in work for s in w]
    started = time.perf_counter()
    with ThreadPoolExecutor(senders) as pool:
        list(pool.map(push, range(senders)))
    sent = time.perf_counter()
    if errors:
        raise RuntimeError("; ".join(errors))
    wait_for(lambda: all(_results_stored(orthanc, uid, expected) for uid in study_uids), timeout, 0.5, "results")
    elapsed = time.perf_counter() - started
    return {"senders": senders, "studies": len(study_uids), "send_s": sent - started, "elapsed_s": elapsed,
            "studies_per_min": 60.0 * len(study_uids) / elapsed}


def measure_slot_recovery(node: InferenceNode, idle: int = 16, timeout: float = 300.0) -> float:
    """Seconds until a real association succeeds while ``idle`` silent connections and one half PDU are open."""
    sockets = [socket.create_connection(("127.0.0.1", node.dicom_port)) for _ in range(idle + 1)]
    sockets[-1].sendall(b"\x01\x00\x00\x00\x01\x00\x00\x01")  # an A-ASSOCIATE-RQ header, 2 of 256 bytes
    ae = AE(ae_title="SENDER0")
    ae.add_requested_context(Verification)
    started = time.perf_counter()
    try:
        assoc = wait_for(lambda: (a := ae.associate("127.0.0.1", node.dicom_port, ae_title=node.config.ae_title))
                         .is_established and a, timeout, interval=0.2, what="a free association slot")
        assoc.release()
        return time.perf_counter() - started
    finally:
        for s in sockets:
            s.close()


def _bundles(config, scratch: Path, allow_untrained: bool) -> tuple[list, dict[str, bool]]:
    trained = {p.name: (p.bundle / p.model_file).is_file() for p in config.pipelines}
    missing = [str(p.bundle / p.model_file) for p in config.pipelines if not trained[p.name]]
    if missing and not allow_untrained:
        raise SystemExit(f"no trained weights: {', '.join(missing)}; train them or pass --allow-untrained")
    return [p if trained[p.name] else replace(p, bundle=untrained_copy(p.bundle, scratch))
            for p in config.pipelines], trained


def _markdown(report: dict) -> str:
    env, t = report["environment"], report["throughput"]
    lines = [
        "# PACS round trip: Orthanc 1.10 -> inference node -> Orthanc", "",
        f"Generated by `scripts/benchmark_pacs.py` on {env['date']} ({env['cpus']} CPU cores, AMX "
        f"{'yes' if env['amx'] else 'no'}, load {env['load_before'][0]:.2f} before and {env['load_after'][0]:.2f} "
        f"at the end (1-minute averages), torch threads {env['torch_threads']}, stable-study wait "
        f"{report['stable_seconds']} s). Latency = last "
        "instance of a study acknowledged by the node -> all its results stored in Orthanc (wait included).", "",
        "| studies | results per study | n | p50 (s) | p95 (s) | p50 minus stable wait (s) |",
        "| --- | --- | --- | --- | --- | --- |",
    ] + [
        f"| {name} | {e['results']} | {e['n']} | {e['p50_s']:.2f} | {e['p95_s']:.2f} | "
        f"{e['p50_s'] - report['stable_seconds']:.2f} |" for name, e in report["latency"].items()
    ] + [
        "", f"Throughput: {t['senders']} concurrent senders, {t['studies']} chest CR studies: "
        f"**{t['studies_per_min']:.1f} studies/min** ({t['elapsed_s']:.1f} s from first instance sent to last "
        f"result stored; sending took {t['send_s']:.1f} s; jobs run one at a time, models loaded once).", "",
        f"Slot exhaustion: 16 silent connections and one half PDU held slots; a real association succeeded "
        f"after **{report['slot_recovery_s']:.1f} s** (network timeout {report['network_timeout_s']:.0f} s).", "",
        f"Peak memory (resident): node process **{report['peak_rss_mb']['node']:.0f} MB**; the largest child "
        f"process (a forked job or Orthanc) **{report['peak_rss_mb']['largest_child']:.0f} MB**.", "",
        "Weights: " + ", ".join(f"{k}: {'trained' if v else 'random init (timing only)'}"
                                for k, v in report["trained_weights"].items()) + ".", "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, default in (("--cr-studies", 10), ("--ct-studies", 3), ("--senders", 8), ("--studies-per-sender", 5),
                          ("--stable-seconds", 2.0), ("--torch-threads", 2), ("--timeout", 900.0)):
        parser.add_argument(flag, type=type(default), default=default)
    parser.add_argument("--config", default=str(REPO / "configs" / "deploy" / "node.yaml"))
    parser.add_argument("--allow-untrained", action="store_true")
    parser.add_argument("--out", default=str(RESULTS / "pacs"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # the slot measurement's sockets make it shout
    logging.getLogger("highdicom").setLevel(logging.WARNING)
    warnings.simplefilter("ignore", UserWarning)

    data = default_data_root()
    before = machine_state()
    chest_crs = [pydicom.dcmread(data / SIIM_CR), pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))]
    ct_series = data / CT_SERIES
    ct = assign_missing_uids([pydicom.dcmread(p) for p in sorted(ct_series.iterdir())], ct_series.name)
    with tempfile.TemporaryDirectory(prefix="pacs-bench-") as tmp:
        scratch = Path(tmp)
        config = load_node_config(args.config)
        pipelines, trained = _bundles(config, scratch / "bundles", args.allow_untrained)
        node_port = free_port()
        orthanc = LocalOrthanc(scratch / "orthanc", config.ae_title, node_port)
        config = replace(
            config, pipelines=pipelines, spool_dir=scratch / "spool", port=node_port, health_port=0,
            stable_seconds=args.stable_seconds, poll_seconds=0.1, torch_threads=args.torch_threads,
            allowed_calling_aets=["ORTHANC"] + [f"SENDER{i}" for i in range(args.senders)],
            destination=DestinationConfig(ae_title="ORTHANC", host="127.0.0.1", port=orthanc.dicom_port),
            associations=replace(config.associations, max_associations_per_peer=args.senders + 1),
        )
        node = InferenceNode(config)
        node.start()
        try:
            cr_latency = [measure_latency(orthanc, node, [chest_crs[k % 2]], 1, args.timeout)[0]
                          for k in range(args.cr_studies)]
            ct_latency = measure_latency(orthanc, node, ct, args.ct_studies, args.timeout)
            throughput = measure_throughput(orthanc, node, [[c] for c in chest_crs], args.senders,
                                            args.studies_per_sender, args.timeout)
            slot_recovery = measure_slot_recovery(node)
            health = node.health()
        finally:
            node.stop()
            orthanc.stop()
    report = {
        "stable_seconds": args.stable_seconds,
        "latency": {name: {**_percentiles(values), "results": "+".join(sorted(_expected_results(node, first))),
                           "values_s": values}
                    for name, values, first in (("chest CR (1 image)", cr_latency, chest_crs[0]),
                                                ("CT series (20 slices)", ct_latency, ct[0]))},
        "throughput": throughput, "slot_recovery_s": slot_recovery,
        "network_timeout_s": config.associations.network_timeout_seconds,
        "node_counts": health, "trained_weights": trained,
        "peak_rss_mb": {"node": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                        "largest_child": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024},
        "environment": {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": before["cpu_count"],
                        "amx": before["amx"], "load_before": before["load_average"],
                        "load_after": machine_state()["load_average"],
                        "torch_threads": args.torch_threads, "torch": torch.__version__,
                        "python": platform.python_version(), "orthanc": "1.10.1"},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(_markdown(report))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
