"""PACS round-trip benchmark: a private Orthanc 1.10 and the inference node on 127.0.0.1, real DICOM studies.

Measures, with the pipelines of the node config (default ``configs/deploy/node.yaml``: chest CR/DX ->
classification SR + lung SEG, CT -> SEG):

* per-study latency from the moment the last instance of a study was acknowledged by the node (Orthanc's
  synchronous C-STORE to the node returned) to the moment all of its results are stored in Orthanc (polled every
  0.1 s), p50 / p95, for chest CR studies and for the 20-slice CT series; the node's stable-study wait is part of
  it and reported separately;
* throughput in studies/min when several senders (pynetdicom SCUs, one association each) push CR studies to the
  node at once, from the first instance sent to the last result stored in Orthanc.

Studies are the real SIIM chest CR, pydicom-data's chest CR (RG1_UNCR) and the TotalSegmentator CT series, each
sent under fresh Study/Series/SOP Instance UIDs (pixels untouched). Bundles without trained weights
(``models/model.pt``) are run with a random initialisation of their own ``network_def`` (``--allow-untrained``):
the timings then hold for the real configs and architectures, the predictions mean nothing; the JSON says which.

    python scripts/benchmark_pacs.py --cr-studies 10 --ct-studies 3 --senders 4 --studies-per-sender 5
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import torch
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from pynetdicom import AE

from dissect_monai.deploy.config import DestinationConfig, load_node_config
from dissect_monai.deploy.dicom_io import assign_missing_uids
from dissect_monai.deploy.jobs import series_matches
from dissect_monai.deploy.node import InferenceNode

REPO = Path(__file__).resolve().parents[1]
# The Orthanc harness and untrained bundle copies are test infrastructure (tests/harness), shared with the deploy
# tests rather than copied or shipped in the package: this one path entry makes them importable.
sys.path.insert(0, str(REPO / "tests"))
from harness.bundles import untrained_copy  # noqa: E402
from harness.orthanc import LocalOrthanc, free_port, wait_for  # noqa: E402
DATA = REPO.parent / "shared" / "data"
SIIM_CR = DATA / "dicom-samples" / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
CT_SERIES = DATA / "totalseg-ct" / "example_ct_dicom"


def _encode(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _fresh_study(template: list[pydicom.Dataset]) -> list[bytes]:
    """The instances of ``template`` (one study) under new Study / Series / SOP Instance UIDs."""
    study, series = generate_uid(), generate_uid()
    out = []
    for ds in template:
        copy = pydicom.dcmread(io.BytesIO(_encode(ds)))
        copy.StudyInstanceUID, copy.SeriesInstanceUID = study, series
        copy.SOPInstanceUID = copy.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        out.append(_encode(copy))
    return out


def _expected_results(node: InferenceNode, header: pydicom.Dataset) -> dict[str, int]:
    """Result modality -> count the node's pipelines produce for a study of this series."""
    counts: dict[str, int] = {}
    for pipeline in node.config.pipelines:
        if series_matches(header, pipeline.rules):
            modality = "SR" if pipeline.output == "sr" else "SEG"
            counts[modality] = counts.get(modality, 0) + 1
    return counts


def _results_stored(orthanc: LocalOrthanc, study_uid: str, expected: dict[str, int]) -> bool:
    return all(len(orthanc.instance_ids(study_uid, modality)) >= n for modality, n in expected.items())


def _percentiles(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=float)
    return {"n": int(array.size), "p50_s": float(np.percentile(array, 50)), "p95_s": float(np.percentile(array, 95)),
            "mean_s": float(array.mean()), "min_s": float(array.min()), "max_s": float(array.max())}


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
        wait_for(lambda: _results_stored(orthanc, study_uid, expected), timeout, interval=0.1,
                 what="results in Orthanc")
        latencies.append(time.perf_counter() - received)
        logging.info("study done in %.2f s", latencies[-1])
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
        if not assoc.is_established:
            errors.append(f"sender {index}: association failed")
            return
        for study in work[index]:
            for data in study:
                status = assoc.send_c_store(pydicom.dcmread(io.BytesIO(data)))
                if getattr(status, "Status", None) != 0x0000:
                    errors.append(f"sender {index}: C-STORE status {status}")
        assoc.release()

    study_uids = [pydicom.dcmread(io.BytesIO(s[0]), stop_before_pixels=True).StudyInstanceUID for w in work for s in w]
    started = time.perf_counter()
    threads = [threading.Thread(target=push, args=(i,)) for i in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sent = time.perf_counter()
    if errors:
        raise RuntimeError("; ".join(errors))
    wait_for(lambda: all(_results_stored(orthanc, uid, expected) for uid in study_uids), timeout, interval=0.5,
             what="every study's results in Orthanc")
    elapsed = time.perf_counter() - started
    return {"senders": senders, "studies": len(study_uids), "send_s": sent - started, "elapsed_s": elapsed,
            "studies_per_min": 60.0 * len(study_uids) / elapsed}


def _bundles(config, scratch: Path, allow_untrained: bool) -> tuple[list, dict[str, bool]]:
    pipelines, trained = [], {}
    for pipeline in config.pipelines:
        has_weights = (pipeline.bundle / pipeline.model_file).is_file()
        trained[pipeline.name] = has_weights
        if has_weights:
            pipelines.append(pipeline)
        elif allow_untrained:
            pipelines.append(replace(pipeline, bundle=untrained_copy(pipeline.bundle, scratch)))
        else:
            raise SystemExit(f"{pipeline.bundle}: no {pipeline.model_file}; train it or pass --allow-untrained")
    return pipelines, trained


def _markdown(report: dict) -> str:
    lines = [
        "# PACS round trip: Orthanc 1.10 -> inference node -> Orthanc",
        "",
        f"Generated by `scripts/benchmark_pacs.py` on {report['environment']['date']} "
        f"({report['environment']['cpus']} CPU cores shared with other jobs, torch threads "
        f"{report['environment']['torch_threads']}, stable-study wait {report['stable_seconds']} s).",
        "",
        "Latency = last instance of a study acknowledged by the node -> all of the study's results stored in "
        "Orthanc (includes the stable-study wait).",
        "",
        "| studies | results per study | n | p50 (s) | p95 (s) | p50 minus stable wait (s) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, entry in report["latency"].items():
        lines.append(
            f"| {name} | {entry['results']} | {entry['n']} | {entry['p50_s']:.2f} | {entry['p95_s']:.2f} | "
            f"{entry['p50_s'] - report['stable_seconds']:.2f} |"
        )
    t = report["throughput"]
    lines += [
        "",
        f"Throughput: {t['senders']} concurrent senders, {t['studies']} chest CR studies: "
        f"**{t['studies_per_min']:.1f} studies/min** ({t['elapsed_s']:.1f} s from first instance sent to last "
        f"result stored; sending took {t['send_s']:.1f} s; jobs run one at a time, models loaded once).",
        "",
        "Weights: " + ", ".join(f"{k}: {'trained' if v else 'random init (timing only)'}"
                                for k, v in report["trained_weights"].items()) + ".",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "deploy" / "node.yaml"))
    parser.add_argument("--cr-studies", type=int, default=10)
    parser.add_argument("--ct-studies", type=int, default=3)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--studies-per-sender", type=int, default=5)
    parser.add_argument("--stable-seconds", type=float, default=2.0)
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--allow-untrained", action="store_true")
    parser.add_argument("--out", default=str(REPO / "results" / "pacs"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for chatty in ("pynetdicom", "highdicom"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    warnings.simplefilter("ignore", UserWarning)

    chest_crs = [pydicom.dcmread(SIIM_CR), pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))]
    ct = assign_missing_uids([pydicom.dcmread(p) for p in sorted(CT_SERIES.iterdir())], CT_SERIES.name)
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
        )
        node = InferenceNode(config)
        node.start()
        try:
            cr_latency = []
            for k in range(args.cr_studies):
                cr_latency += measure_latency(orthanc, node, [chest_crs[k % 2]], 1, args.timeout)
            ct_latency = measure_latency(orthanc, node, ct, args.ct_studies, args.timeout)
            throughput = measure_throughput(orthanc, node, [[c] for c in chest_crs], args.senders,
                                            args.studies_per_sender, args.timeout)
            health = node.health()
        finally:
            node.stop()
            orthanc.stop()
    cr_results = _expected_results(node, chest_crs[0])
    ct_results = _expected_results(node, ct[0])
    report = {
        "stable_seconds": args.stable_seconds,
        "latency": {
            "chest CR (1 image)": {**_percentiles(cr_latency), "results": "+".join(sorted(cr_results)),
                                   "values_s": cr_latency},
            "CT series (20 slices)": {**_percentiles(ct_latency), "results": "+".join(sorted(ct_results)),
                                      "values_s": ct_latency},
        },
        "throughput": throughput,
        "node_counts": health,
        "trained_weights": trained,
        "environment": {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
                        "torch_threads": args.torch_threads,
                        "torch": torch.__version__, "python": platform.python_version(), "orthanc": "1.10.1"},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(_markdown(report))
    print(_markdown(report))


if __name__ == "__main__":
    main()
