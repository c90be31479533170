"""The DICOM inference node: C-STORE in, spool, study jobs through MONAI bundles, SR / SEG back to the PACS.

Threads: the pynetdicom SCP (one per association), one worker (claims stable studies and runs jobs one at a
time, the models are loaded once), one sender (delivers ``outbox/`` with exponential backoff) and a small
HTTP server on 127.0.0.1 answering ``GET /health`` and ``GET /metrics`` with JSON counts.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch
from pydicom.uid import UID
from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from dissect_monai.deploy.bundle_runner import BundleRunner
from dissect_monai.deploy.config import NodeConfig
from dissect_monai.deploy.jobs import FAILURE_CATEGORIES, JobRunner, StudyProcessor
from dissect_monai.deploy.sender import SendError, send_c_store, send_stow_rs
from dissect_monai.deploy.spool import Spool

__all__ = ["InferenceNode", "Metrics"]

logger = logging.getLogger(__name__)

_STATUS_SUCCESS = 0x0000
_STATUS_OUT_OF_RESOURCES = 0xA700
_STATUS_DATASET_MISMATCH = 0xA900
_STATUS_CANNOT_UNDERSTAND = 0xC000


class Metrics:
    """Thread-safe counters since start: received, rejected, processed, failed, sent, send_errors; and per
    failure category (``failed_<category>``, see :data:`dissect_monai.deploy.jobs.FAILURE_CATEGORIES`) with
    ``failure_reports`` (failure SRs published) and ``not_assessed`` (SRs for inputs the quality gate flagged)."""

    _NAMES = ("received", "rejected", "processed", "failed", "sent", "send_errors", "failure_reports", "not_assessed",
              *(f"failed_{category}" for category in FAILURE_CATEGORIES))

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(self._NAMES, 0)

    def add(self, name: str, value: int = 1) -> None:
        with self._lock:
            self._counts[name] += value

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def _is_image_storage(sop_class_uid: str) -> bool:
    return str(UID(sop_class_uid).name).endswith("Image Storage")


class InferenceNode:
    """The node; ``start()`` returns once it listens, ``stop()`` shuts every thread down.

    Args:
        config: the node configuration.
        runners: pipeline name -> loaded bundle (loaded from the pipeline configs when omitted).
    """

    def __init__(self, config: NodeConfig, runners: Mapping[str, BundleRunner] | None = None) -> None:
        self.config = config
        self.spool = Spool(config.spool_dir)
        self.metrics = Metrics()
        torch.set_num_threads(max(1, int(config.torch_threads)))
        if runners is None:
            runners = {
                p.name: BundleRunner(p.bundle, config_file=p.config_file, model_file=p.model_file,
                                     quality_gate_file=p.quality_gate)
                for p in config.pipelines
            }
        self.processor = StudyProcessor(config.pipelines, runners)
        self.jobs = JobRunner(self.processor, self.spool, config.results, node_name=config.ae_title)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._scp = None
        self._http: ThreadingHTTPServer | None = None
        self._next_attempt: dict[str, tuple[int, float]] = {}

    # ---------------------------------------------------------------- lifecycle
    @property
    def dicom_port(self) -> int:
        return int(self._scp.server_address[1]) if self._scp else self.config.port

    @property
    def health_port(self) -> int:
        return int(self._http.server_address[1]) if self._http else self.config.health_port

    def start(self) -> None:
        ae = AE(ae_title=self.config.ae_title)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        ae.require_calling_aet = list(self.config.allowed_calling_aets)
        ae.maximum_associations = 16
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.config.dicom_timeout_seconds
        self._ae = ae
        self._scp = ae.start_server(
            (self.config.host, self.config.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, lambda event: _STATUS_SUCCESS)],
        )
        self._http = ThreadingHTTPServer((self.config.health_host, self.config.health_port), self._http_handler())
        self._threads = [
            threading.Thread(target=self._http.serve_forever, name="health", daemon=True),
            threading.Thread(target=self._work_loop, name="worker", daemon=True),
            threading.Thread(target=self._send_loop, name="sender", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        (self.spool.root / "node.json").write_text(
            json.dumps({"dicom_port": self.dicom_port, "health_port": self.health_port, "ae_title": ae.ae_title})
        )
        logger.info(
            "node %s listening on %s:%d (health on %s:%d), %d pending jobs, %d queued results",
            self.config.ae_title, self.config.host, self.dicom_port, self.config.health_host, self.health_port,
            len(self.spool.pending_jobs()), len(self.spool.outbox_jobs()),
        )

    def stop(self) -> None:
        self._stop.set()
        if self._scp is not None:
            self._scp.shutdown()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        for thread in self._threads:
            thread.join(timeout=60)
        logger.info("node stopped: %s", self.metrics.snapshot())

    def health(self) -> dict[str, Any]:
        """Counts since start plus the spool's queue sizes."""
        return {
            "status": "ok",
            **self.metrics.snapshot(),
            "incoming_instances": self.spool.incoming_count(),
            "pending_jobs": len(self.spool.pending_jobs()),
            "queued_results": len(self.spool.outbox_jobs()),
        }

    # ---------------------------------------------------------------- receiving
    def _on_store(self, event) -> int:
        try:
            ds = event.dataset
            uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
            sop_class = str(ds.get("SOPClassUID") or event.request.AffectedSOPClassUID)
            has_pixels = "PixelData" in ds
        except Exception as err:  # noqa: BLE001 - a dataset that cannot be decoded is refused, node unharmed
            self.metrics.add("rejected")
            logger.warning("C-STORE refused: dataset cannot be decoded (%s)", type(err).__name__)
            return _STATUS_CANNOT_UNDERSTAND
        if _is_image_storage(sop_class) and not has_pixels:
            self.metrics.add("rejected")
            logger.warning("C-STORE refused: %s without pixel data", UID(sop_class).name)
            return _STATUS_DATASET_MISMATCH
        started = time.perf_counter()
        try:
            self.spool.store(event.encoded_dataset(), *uids)
        except ValueError as err:
            self.metrics.add("rejected")
            logger.warning("C-STORE refused: %s", str(err).split(":")[0])
            return _STATUS_DATASET_MISMATCH
        except OSError as err:
            self.metrics.add("rejected")
            logger.error("C-STORE refused: spool write failed (%s)", type(err).__name__)
            return _STATUS_OUT_OF_RESOURCES
        self.metrics.add("received")
        elapsed = time.perf_counter() - started
        if elapsed > 5.0:
            logger.warning("slow spool write: %.1f s for one instance (disk under load?)", elapsed)
        return _STATUS_SUCCESS

    # ---------------------------------------------------------------- jobs
    def _work_loop(self) -> None:
        while not self._stop.is_set():
            self.spool.claim_stable_studies(self.config.stable_seconds)
            pending = self.spool.pending_jobs()
            for job in pending:
                if self._stop.is_set():
                    return
                self.run_job(job)
            if not pending:
                self._stop.wait(self.config.poll_seconds)

    def run_job(self, job: str) -> None:
        """Process one claimed job to ``outbox/`` + ``done/``, or ``failed/`` with a reason file."""
        started = time.perf_counter()
        try:
            outcome = self.jobs.run(job)
        except Exception as err:  # noqa: BLE001 - a failing job never stops the node
            self.spool.fail(job, f"category: internal\ncause: {type(err).__name__}\n")
            self.metrics.add("failed")
            self.metrics.add("failed_internal")
            logger.error("job %s failed: %s (moved to failed/)", job, type(err).__name__)
            return
        if outcome.status == "failed":
            self.metrics.add("failed")
            self.metrics.add(f"failed_{outcome.category}")
            self.metrics.add("failure_reports", outcome.results)
            logger.error("job %s failed (%s), moved to failed/; %d failure report(s)", job, outcome.category,
                         outcome.results)
        elif outcome.status == "processed":
            self.metrics.add("processed")
            self.metrics.add("not_assessed", outcome.not_assessed)
            logger.info("job %s done: version %d, %d result instance(s) in %.1f s", job, outcome.version,
                        outcome.results, time.perf_counter() - started)

    # ---------------------------------------------------------------- sending
    def _send_loop(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            for job in self.spool.outbox_jobs():
                attempts, due = self._next_attempt.get(job, (0, 0.0))
                if due > now:
                    continue
                if self._deliver(job):
                    self._next_attempt.pop(job, None)
                else:
                    delay = min(self.config.retry.max_seconds, self.config.retry.initial_seconds * 2**attempts)
                    self._next_attempt[job] = (attempts + 1, now + delay)
                    logger.warning("job %s: send attempt %d failed, retry in %.1f s", job, attempts + 1, delay)
            self._stop.wait(self.config.poll_seconds)

    def _deliver(self, job: str) -> bool:
        files = self.spool.outbox_files(job)
        destination = self.config.destination
        try:
            if files:  # a retry repeats both sends; receivers keep one copy per SOP Instance UID
                send_c_store(files, destination, self.config.ae_title, self.config.dicom_timeout_seconds)
                if destination.stow_url:
                    send_stow_rs(files, destination.stow_url)
        except (SendError, OSError) as err:
            self.metrics.add("send_errors")
            logger.warning("job %s: %s", job, err)
            return False
        self.spool.mark_sent(job)
        self.metrics.add("sent", len(files))
        logger.info("job %s: %d result instance(s) sent", job, len(files))
        return True

    # ---------------------------------------------------------------- health
    def _http_handler(self) -> type[BaseHTTPRequestHandler]:
        node = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                if self.path.rstrip("/") not in ("/health", "/metrics"):
                    self.send_error(404)
                    return
                body = json.dumps(node.health()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server API
                logger.debug("health request: %s", format % args)

        return Handler
