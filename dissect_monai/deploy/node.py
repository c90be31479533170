"""The DICOM inference node: C-STORE in, spool, study jobs through MONAI bundles, SR / SEG back to the PACS.

Threads: the pynetdicom SCP (one per association, see :mod:`dissect_monai.deploy.listener` for its limits), one
worker (claims stable studies and runs jobs one at a time, the models are loaded once; prunes ``done/`` and
``sent/``), one sender (delivers ``outbox/`` with exponential backoff) and a small HTTP server on 127.0.0.1
answering ``GET /health`` (JSON; HTTP 503 when the worker or sender is dead or stuck) and ``GET /metrics``
(Prometheus text format). Worker and sender survive any exception: they log its type and go on.

Every association is logged (peer address, AE titles, outcome) and every refused C-STORE with its reason; no log
line carries a value of the patient's data or a UID.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import prometheus_client
import torch
from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from dissect_monai.deploy.bundle_runner import BundleRunner
from dissect_monai.deploy.config import NodeConfig
from dissect_monai.deploy.intake import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_DATASET_MISMATCH,
    STATUS_OUT_OF_RESOURCES,
    STATUS_SUCCESS,
    Refusal,
    accepted_sop_classes,
    check_instance,
)
from dissect_monai.deploy.jobs import FAILURE_CATEGORIES, JobRunner, StudyProcessor
from dissect_monai.deploy.listener import GuardedAssociationServer, log_safe, server_ssl_context
from dissect_monai.deploy.sender import SendError, send_c_store, send_stow_rs
from dissect_monai.deploy.spool import Spool

__all__ = ["InferenceNode", "Metrics"]

logger = logging.getLogger(__name__)

#: attempts of a job whose bookkeeping (not its model) raised, e.g. a full disk while publishing results
_JOB_ATTEMPTS = 3


class Metrics:
    """Counters since start, exported in the Prometheus text format and summed for ``/health``.

    ``received`` / ``rejected`` count instances (``rejected`` by reason), ``processed`` / ``failed`` jobs (and
    ``failed_<category>`` per failure category, see :data:`dissect_monai.deploy.jobs.FAILURE_CATEGORIES`),
    ``failure_reports`` failure SRs published, ``not_assessed`` SRs for inputs the quality gate flagged, ``sent``
    result instances, ``send_errors`` delivery attempts, ``associations`` by outcome.
    """

    _COUNTERS = {
        "received": ("instances acknowledged and spooled", ()),
        "rejected": ("instances refused at C-STORE", ("reason",)),
        "processed": ("study jobs finished with results", ()),
        "failed": ("study jobs moved to failed/", ()),
        **{f"failed_{category}": (f"study jobs failed: {text}", ()) for category, text in FAILURE_CATEGORIES.items()},
        "failure_reports": ("failure SRs published", ()),
        "not_assessed": ("SRs saying the quality gate flagged the input", ()),
        "sent": ("result instances delivered", ()),
        "send_errors": ("failed delivery attempts", ()),
        "associations": ("associations by outcome", ("outcome",)),
    }

    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        self._lock = threading.Lock()
        self._totals = dict.fromkeys(self._COUNTERS, 0)
        self._counters = {
            name: prometheus_client.Counter(f"dissect_node_{name}", doc, labels, registry=self.registry)
            for name, (doc, labels) in self._COUNTERS.items()
        }

    def add(self, name: str, value: int = 1, label: str | None = None) -> None:
        counter = self._counters[name]
        (counter.labels(label) if label is not None else counter).inc(value)
        with self._lock:
            self._totals[name] += value

    def gauge(self, name: str, doc: str, read: Callable[[], float]) -> None:
        """A value read at scrape time (queue sizes, thread liveness)."""
        prometheus_client.Gauge(f"dissect_node_{name}", doc, registry=self.registry).set_function(read)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._totals)

    def text(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)


class InferenceNode:
    """The node; ``start()`` returns once it listens, ``stop()`` shuts every thread down.

    Args:
        config: the node configuration.
        runners: pipeline name -> loaded bundle (loaded from the pipeline configs when omitted).
    """

    def __init__(self, config: NodeConfig, runners: Mapping[str, BundleRunner] | None = None) -> None:
        self.config = config
        os.umask(0o077)  # spool files 0600, folders 0700: received images are patient data
        self.spool = Spool(config.spool_dir)
        self.metrics = Metrics()
        self._sop_classes = accepted_sop_classes(config.intake)
        self._ssl_context = server_ssl_context(config.security.tls) if config.security.tls else None
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
        self._job_attempts: dict[str, int] = {}
        self._beats = {"worker": time.monotonic(), "sender": time.monotonic()}
        self._spool_bytes = (0.0, 0)  # (when measured, bytes in incoming/ + processing/ + outbox/)
        self._spool_bytes_lock = threading.Lock()
        self._last_prune = 0.0
        self.metrics.gauge("incoming_instances", "instances waiting in incoming/", self.spool.incoming_count)
        self.metrics.gauge("pending_jobs", "jobs claimed, not finished", lambda: len(self.spool.pending_jobs()))
        self.metrics.gauge("queued_results", "jobs with results to send", lambda: len(self.spool.outbox_jobs()))
        self.metrics.gauge("healthy", "1 when worker and sender are alive and not stuck", self._healthy)

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
        limits, security = self.config.associations, self.config.security
        ae.require_calling_aet = list(self.config.allowed_calling_aets)
        ae.require_called_aet = security.require_called_aet
        ae.maximum_associations = limits.max_associations
        ae.acse_timeout, ae.dimse_timeout = limits.acse_timeout_seconds, limits.dimse_timeout_seconds
        ae.network_timeout = limits.network_timeout_seconds
        self._ae = ae
        self._scp = ae.make_server(
            (self.config.host, self.config.port),
            ssl_context=self._ssl_context,
            evt_handlers=[
                (evt.EVT_C_STORE, self._on_store),
                (evt.EVT_C_ECHO, lambda event: STATUS_SUCCESS),
                (evt.EVT_ESTABLISHED, self._on_association),
                (evt.EVT_REJECTED, self._on_association),
                (evt.EVT_RELEASED, self._on_association),
                (evt.EVT_ABORTED, self._on_association),
            ],
            server_class=GuardedAssociationServer,
            network_timeout=limits.network_timeout_seconds,
            allowed_peers=security.allowed_peers,
            max_per_peer=limits.max_associations_per_peer,
        )
        ae._servers.append(self._scp)  # as AE.start_server does: AssociationServer.shutdown() removes it again
        self._http = ThreadingHTTPServer((self.config.health_host, self.config.health_port), self._http_handler())
        # a job's forked child (JobRunner's timeout) must not keep the listening sockets: after a SIGKILL of the
        # node it would still hold the port, and the restarted node could not bind it
        listeners = (self._scp.socket, self._http.socket)
        os.register_at_fork(after_in_child=lambda: [sock.close() for sock in listeners])
        self._threads = [
            threading.Thread(target=self._scp.serve_forever, name="dicom", daemon=True),
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
            "node %s listening on %s:%d%s (health on %s:%d), %d pending jobs, %d queued results",
            self.config.ae_title, self.config.host, self.dicom_port, " over TLS" if security.tls else "",
            self.config.health_host, self.health_port, len(self.spool.pending_jobs()), len(self.spool.outbox_jobs()),
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

    def _thread_states(self) -> dict[str, str]:
        """``ok``, ``dead`` (its thread ended before ``stop()``) or ``stuck`` (no loop for ``health_stuck_seconds``)."""
        states = {}
        now = time.monotonic()
        for thread in self._threads:
            if thread.name not in self._beats:
                continue
            if not thread.is_alive():
                states[thread.name] = "ok" if self._stop.is_set() else "dead"
            elif now - self._beats[thread.name] > self.config.health_stuck_seconds:
                states[thread.name] = "stuck"
            else:
                states[thread.name] = "ok"
        return states

    def _healthy(self) -> bool:
        return all(state == "ok" for state in self._thread_states().values())

    def health(self) -> dict[str, Any]:
        """Status (``ok`` / ``degraded``), the worker's and sender's state, counts since start, queue sizes."""
        threads = self._thread_states()
        return {
            "status": "ok" if all(state == "ok" for state in threads.values()) else "degraded",
            **threads,
            **self.metrics.snapshot(),
            "incoming_instances": self.spool.incoming_count(),
            "pending_jobs": len(self.spool.pending_jobs()),
            "queued_results": len(self.spool.outbox_jobs()),
        }

    # ---------------------------------------------------------------- receiving
    def _on_association(self, event) -> None:
        """Log one association event: peer address, AE titles and outcome (no patient data)."""
        assoc = event.assoc
        request = assoc.requestor.primitive
        calling = log_safe(assoc.requestor.ae_title or getattr(request, "calling_ae_title", ""))
        called = log_safe(getattr(request, "called_ae_title", "") or assoc.acceptor.ae_title)
        outcome = {"EVT_ESTABLISHED": "accepted", "EVT_REJECTED": "rejected", "EVT_RELEASED": "released",
                   "EVT_ABORTED": "aborted"}[event.event.name]
        detail = ""
        if outcome == "rejected":
            if self.config.allowed_calling_aets and calling not in self.config.allowed_calling_aets:
                detail = " (calling AE title not in allowed_calling_aets; titles match case-sensitively)"
            elif self.config.security.require_called_aet and called != self.config.ae_title:
                detail = " (called AE title is not the node's)"
            else:
                detail = f" (more than {self.config.associations.max_associations} associations)"
        if outcome in ("accepted", "rejected"):
            self.metrics.add("associations", label=outcome)
        log = logger.warning if outcome in ("rejected", "aborted") else logger.info
        log("association %s from %s:%s calling %r called %r%s", outcome, log_safe(assoc.requestor.address),
            assoc.requestor.port, calling, called, detail)

    def _refuse(self, refusal: Refusal, peer: str) -> int:
        self.metrics.add("rejected", label=refusal.label)
        logger.warning("C-STORE from %s refused with 0x%04X: %s", peer, refusal.status, refusal.reason)
        return refusal.status

    def _spool_full(self, incoming: int) -> Refusal | None:
        """Refusal when storing ``incoming`` more bytes would cross the free-space floor or the spool quota."""
        intake = self.config.intake
        free = shutil.disk_usage(self.spool.root).free
        if free - incoming < intake.min_free_bytes:
            return Refusal(STATUS_OUT_OF_RESOURCES, "disk_full",
                           f"{free} bytes free on the spool's file system, intake.min_free_bytes is "
                           f"{intake.min_free_bytes}")
        if intake.spool_max_bytes is None:
            return None
        with self._spool_bytes_lock:  # measured at most once a second, counted up in between
            measured, used = self._spool_bytes
            if time.monotonic() - measured > 1.0:
                used = self.spool.bytes_in("incoming", "processing", "outbox")
                measured = time.monotonic()
            if used + incoming > intake.spool_max_bytes:
                self._spool_bytes = (measured, used)
                return Refusal(STATUS_OUT_OF_RESOURCES, "spool_quota",
                               f"the spool holds {used} bytes, intake.spool_max_bytes is {intake.spool_max_bytes}")
            self._spool_bytes = (measured, used + incoming)
        return None

    def _on_store(self, event) -> int:
        peer = log_safe(event.assoc.requestor.address)
        try:
            ds = event.dataset
            uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
            request = (event.request.AffectedSOPClassUID, event.request.AffectedSOPInstanceUID)
            refusal = check_instance(ds, event.context.transfer_syntax, request, self.config.intake,
                                     self._sop_classes)
        except Exception as err:  # noqa: BLE001 - a dataset that cannot be decoded is refused, node unharmed
            refusal = Refusal(STATUS_CANNOT_UNDERSTAND, "undecodable",
                              f"data set cannot be decoded ({type(err).__name__})")
        if refusal is not None:
            return self._refuse(refusal, peer)
        encoded = event.encoded_dataset()
        refusal = self._spool_full(len(encoded))
        if refusal is not None:
            return self._refuse(refusal, peer)
        started = time.perf_counter()
        try:
            self.spool.store(encoded, *uids)
        except ValueError as err:
            return self._refuse(Refusal(STATUS_DATASET_MISMATCH, "uid", str(err).split(":")[0]), peer)
        except OSError as err:
            return self._refuse(Refusal(STATUS_OUT_OF_RESOURCES, "spool_write",
                                        f"spool write failed ({type(err).__name__})"), peer)
        self.metrics.add("received")
        elapsed = time.perf_counter() - started
        if elapsed > 5.0:
            logger.warning("slow spool write: %.1f s for one instance (disk under load?)", elapsed)
        return STATUS_SUCCESS

    # ---------------------------------------------------------------- jobs
    def _work_loop(self) -> None:
        while not self._stop.is_set():
            self._beats["worker"] = time.monotonic()
            try:
                busy = self._work_once()
            except Exception as err:  # noqa: BLE001 - the worker never dies; the next round retries
                logger.error("worker: %s while scheduling jobs; retrying", type(err).__name__)
                busy = False
            if not busy:
                self._stop.wait(self.config.poll_seconds)

    def _work_once(self) -> bool:
        """One round: prune if due, claim stable studies, run every pending job; whether a job was run."""
        retention = self.config.retention
        if time.monotonic() - self._last_prune >= retention.interval_seconds:
            self._last_prune = time.monotonic()
            hours = 3600.0
            for area, age, size in (("done", retention.done_max_age_hours, retention.done_max_bytes),
                                    ("sent", retention.sent_max_age_hours, retention.sent_max_bytes)):
                deleted = self.spool.prune(area, None if age is None else age * hours, size)
                if deleted:
                    logger.info("retention: %d job(s) deleted from %s/", deleted, area)
        self.spool.claim_stable_studies(self.config.stable_seconds)
        pending = self.spool.pending_jobs()
        for job in pending:
            if self._stop.is_set():
                break
            self._beats["worker"] = time.monotonic()
            self.run_job(job)
        return bool(pending)

    def run_job(self, job: str) -> None:
        """Process one claimed job (:meth:`dissect_monai.deploy.jobs.JobRunner.run`) to ``outbox/`` + ``done/``,
        or ``failed/`` with a reason file.

        A failing model or writer fails the job inside the job runner; an ``OSError`` of the node's own
        bookkeeping (e.g. no space to publish the results) leaves the job in ``processing/`` for ``_JOB_ATTEMPTS``
        rounds, then fails it with category ``internal``, as any other exception does at once. Reason files and
        log lines carry exception types and categories, never the patient's values.
        """
        started = time.perf_counter()
        try:
            outcome = self.jobs.run(job)
        except OSError as err:  # retried: the cause may pass (disk space)
            attempts = self._job_attempts[job] = self._job_attempts.get(job, 0) + 1
            if attempts < _JOB_ATTEMPTS:
                logger.error("job %s: %s, attempt %d of %d", job, type(err).__name__, attempts, _JOB_ATTEMPTS)
                return
            self._fail_internal(job, f"{type(err).__name__} in {attempts} attempts")
            return
        except Exception as err:  # noqa: BLE001 - a failing job never stops the node
            self._fail_internal(job, type(err).__name__)
            return
        self._job_attempts.pop(job, None)
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

    def _fail_internal(self, job: str, cause: str) -> None:
        """Fail a job the job runner could not finish (category ``internal``; ``cause`` names exception types)."""
        self._job_attempts.pop(job, None)
        self.spool.fail(job, f"category: internal\ncause: {cause}\n")
        self.metrics.add("failed")
        self.metrics.add("failed_internal")
        logger.error("job %s failed: %s (moved to failed/)", job, cause)

    # ---------------------------------------------------------------- sending
    def _send_loop(self) -> None:
        while not self._stop.is_set():
            self._beats["sender"] = time.monotonic()
            try:
                self._send_once()
            except Exception as err:  # noqa: BLE001 - the sender never dies; queued results stay queued
                logger.error("sender: %s while delivering; retrying", type(err).__name__)
            self._stop.wait(self.config.poll_seconds)

    def _send_once(self) -> None:
        for job in self.spool.outbox_jobs():
            now = time.monotonic()
            attempts, due = self._next_attempt.get(job, (0, 0.0))
            if due > now:
                continue
            self._beats["sender"] = now
            if self._deliver(job):
                self._next_attempt.pop(job, None)
            else:
                delay = min(self.config.retry.max_seconds, self.config.retry.initial_seconds * 2**attempts)
                self._next_attempt[job] = (attempts + 1, now + delay)
                logger.warning("job %s: send attempt %d failed, retry in %.1f s", job, attempts + 1, delay)

    def _deliver(self, job: str) -> bool:
        files = self.spool.outbox_files(job)
        destination = self.config.destination
        try:
            if files:  # a retry repeats both sends; receivers keep one copy per SOP Instance UID
                send_c_store(files, destination, self.config.ae_title, self.config.dicom_timeout_seconds)
                if destination.stow_url:
                    send_stow_rs(files, destination.stow_url, destination.stow_auth,
                                 self.config.dicom_timeout_seconds)
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
                path = self.path.rstrip("/")
                if path == "/health":
                    health = node.health()
                    code = 200 if health["status"] == "ok" else 503
                    body, kind = json.dumps(health).encode(), "application/json"
                elif path == "/metrics":
                    body, code, kind = node.metrics.text(), 200, prometheus_client.CONTENT_TYPE_LATEST
                else:
                    self.send_error(404)
                    return
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server API
                logger.debug("health request: %s", format % args)

        return Handler
