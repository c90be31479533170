"""Crash-safe on-disk spool of received instances, study jobs and result instances.

Layout under the spool root (every move is an atomic ``rename`` inside one file system)::

    tmp/                                      partial writes (removed on start; never acknowledged)
    incoming/<StudyUID>/<SeriesUID>/<SOPUID>.dcm   received, fsync'ed before the C-STORE is answered
    processing/<job>/<SeriesUID>/<SOPUID>.dcm      a stable study claimed as a job
    outbox/<job>/<n>.dcm                      results of a finished job, waiting to be sent
    sent/<job>/                               results delivered to every destination
    done/<job>/                               inputs of jobs whose results exist
    failed/<job>/ + reason.txt                inputs of jobs that failed, with the reason

Every folder is created 0700 and every file 0600 (received images are patient data; the node also sets its
umask to 0077). ``done/`` and ``sent/`` are pruned oldest first by :meth:`Spool.prune`; ``failed/`` and
``versions/`` (the per-study result versions of :mod:`dissect_monai.deploy.versions`) are never pruned.

Late instances of a study whose job has run make a new job, which takes the earlier jobs' inputs back
(:meth:`Spool.merge_prior_inputs`), so every job covers the whole study (see :mod:`dissect_monai.deploy.jobs`
on result versions). Once retention has pruned a study's inputs from ``done/``, a late instance is processed
without them: its job covers only what is still in the spool, and its results are still the next version of
the study's result series. A job's results appear in ``outbox/`` by one directory rename, so however often a
job is restarted after a
crash, at most one result set exists for it; a job found in ``processing/`` at start is finished again unless
its results already exist. Job names are a hash of the StudyInstanceUID plus a counter: no UID, and no patient
identifier, ever appears in a log line.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from pydicom.dataset import Dataset

from dissect_monai.dicom.uids import sanitise_uid

__all__ = ["Spool"]

logger = logging.getLogger(__name__)

_AREAS = ("tmp", "incoming", "processing", "outbox", "sent", "done", "failed")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durable(path: Path, data: bytes) -> None:
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class Spool:
    """The node's durable state (see the module docstring for the layout)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root.chmod(0o700)
        for area in _AREAS:
            (self.root / area).mkdir(mode=0o700, exist_ok=True)
            (self.root / area).chmod(0o700)  # also a spool created by an older version with 0755 folders
        for leftover in (self.root / "tmp").iterdir():
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        for leftover in (self.root / "outbox").glob(".*.partial"):
            shutil.rmtree(leftover)
        self._lock = threading.Lock()
        self._last_arrival: dict[str, float] = {}

    def area(self, name: str) -> Path:
        return self.root / name

    # ---------------------------------------------------------------- receiving
    def store(self, encoded: bytes, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        """Durably store one received Part-10 instance; returns its path once it is on disk.

        Raises:
            ValueError: when a UID is missing or not a valid UID (nothing is written).
        """
        study = sanitise_uid(study_uid, "StudyInstanceUID")
        series = sanitise_uid(series_uid, "SeriesInstanceUID")
        name = sanitise_uid(sop_uid, "SOPInstanceUID") + ".dcm"
        partial = self.root / "tmp" / f"{uuid.uuid4().hex}.part"
        _write_durable(partial, encoded)
        with self._lock:  # against claim_stable_studies moving the study folder away meanwhile
            folder = self.root / "incoming" / study / series
            created = not folder.exists()
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            target = folder / name
            os.replace(partial, target)
            self._last_arrival[study] = time.time()
            # descriptors of the folders whose entries changed: they stay valid if a claim renames the study
            descriptors = [os.open(d, os.O_RDONLY) for d in (folder, folder.parent, folder.parent.parent)]
        try:  # made durable before the caller acknowledges, outside the lock so concurrent stores overlap
            for fd in descriptors[: 3 if created else 1]:
                os.fsync(fd)
        finally:
            for fd in descriptors:
                os.close(fd)
        return target

    def incoming_count(self) -> int:
        """Number of instances waiting in ``incoming/`` (under the lock: a claim renames study folders away)."""
        with self._lock:
            return sum(1 for _ in (self.root / "incoming").glob("*/*/*.dcm"))

    # ---------------------------------------------------------------- jobs
    def claim_stable_studies(self, stable_seconds: float) -> list[str]:
        """Move every study that received nothing for ``stable_seconds`` to ``processing/``; returns new jobs."""
        jobs = []
        now = time.time()
        with self._lock:
            for study_dir in sorted((self.root / "incoming").iterdir()):
                study = study_dir.name
                last = self._last_arrival.get(study)
                if last is None:  # after a restart: the newest file tells when the study last grew
                    stamps = [p.stat().st_mtime for p in study_dir.glob("*/*")] or [study_dir.stat().st_mtime]
                    last = self._last_arrival[study] = max(stamps)
                if now - last < stable_seconds:
                    continue
                job = f"{hashlib.sha1(study.encode()).hexdigest()[:12]}-{time.time_ns()}"
                os.replace(study_dir, self.root / "processing" / job)
                _fsync_dir(self.root / "incoming")
                _fsync_dir(self.root / "processing")
                self._last_arrival.pop(study, None)
                jobs.append(job)
        return jobs

    def pending_jobs(self) -> list[str]:
        """Jobs in ``processing/`` (claimed but not finished), oldest first."""
        return sorted(p.name for p in (self.root / "processing").iterdir() if p.is_dir())

    def job_instances(self, job: str) -> dict[str, list[Path]]:
        """Series folder name -> instance files of a job in ``processing/``."""
        folder = self.root / "processing" / job
        return {s.name: sorted(s.glob("*.dcm")) for s in sorted(folder.iterdir()) if s.is_dir()}

    def has_results(self, job: str) -> bool:
        return (self.root / "outbox" / job).exists() or (self.root / "sent" / job).exists()

    def result_files(self, job: str) -> list[Path]:
        """The published result instances of a job, queued (``outbox/``) or delivered (``sent/``)."""
        return sorted((self.root / "outbox" / job).glob("*.dcm")) + sorted((self.root / "sent" / job).glob("*.dcm"))

    def merge_prior_inputs(self, job: str) -> int:
        """Move the inputs of earlier jobs of the same study (``done/``, ``failed/``) into ``job``, so that a
        study reopened by late instances is processed whole; an instance received again keeps its newest copy.

        Idempotent (every move is a rename; an interrupted merge is finished by the next call). Returns the
        number of instances moved in.
        """
        prefix = job.split("-", 1)[0] + "-"
        target = self.root / "processing" / job
        moved = 0
        for area in ("done", "failed"):
            for prior in sorted((self.root / area).glob(prefix + "*")):
                for instance in prior.glob("*/*.dcm"):
                    destination = target / instance.parent.name / instance.name
                    if destination.exists():
                        instance.unlink()
                        continue
                    destination.parent.mkdir(exist_ok=True)
                    os.replace(instance, destination)
                    moved += 1
                shutil.rmtree(prior)
        if moved:
            _fsync_dir(target)
        return moved

    def _publish(self, job: str, results: Iterable[Dataset]) -> int:
        """Write results to ``outbox/<job>`` in one rename, unless they exist already (published before a crash)."""
        count = 0
        if not self.has_results(job):
            staging = self.root / "outbox" / f".{job}.partial"
            if staging.exists():
                shutil.rmtree(staging)
            staging.mkdir(mode=0o700)
            for count, ds in enumerate(results, start=1):
                path = staging / f"{count:03d}.dcm"
                ds.save_as(path, enforce_file_format=True)
                with open(path, "rb+") as handle:
                    os.fsync(handle.fileno())
            _fsync_dir(staging)
            os.replace(staging, self.root / "outbox" / job)
            _fsync_dir(self.root / "outbox")
        return count

    def complete(self, job: str, results: Iterable[Dataset]) -> int:
        """Publish a job's results to ``outbox/`` in one rename, then move its inputs to ``done/``.

        A job whose results already exist (published before a crash) publishes nothing again.
        Returns the number of result instances published now (0 also when nothing matched the pipelines).
        """
        count = self._publish(job, results)
        self._retire(job, "done")
        return count

    def fail(self, job: str, reason: str, results: Iterable[Dataset] = ()) -> int:
        """Publish ``results`` (e.g. a report saying the study could not be processed) as :meth:`complete` does,
        then move the job's inputs to ``failed/`` with a ``reason.txt``; returns the number published now.

        The move is a rename and needs no space: when the results or the reason cannot be written (a full disk),
        the job is still retired, without them, and the error is logged.
        """
        try:
            count = self._publish(job, results)
        except OSError as err:
            logger.error("job %s: cannot publish its failure results (%s); failed without them", job,
                         type(err).__name__)
            shutil.rmtree(self.root / "outbox" / f".{job}.partial", ignore_errors=True)
            count = 0
        path = self.root / "processing" / job / "reason.txt"
        try:
            _write_durable(path, reason.encode("utf-8", "replace"))
        except OSError as err:
            logger.error("job %s: cannot write reason.txt (%s); moved to failed/ without it", job, type(err).__name__)
            if path.is_file():
                path.unlink()
        self._retire(job, "failed")
        return count

    def bytes_in(self, *areas: str) -> int:
        """Total size of the files in the given areas."""
        return sum(_tree_bytes(self.root / area) for area in areas)

    def prune(self, area: str, max_age_seconds: float | None, max_bytes: int | None) -> int:
        """Delete the oldest jobs of ``done/`` or ``sent/`` until none is older than ``max_age_seconds`` and the
        area holds at most ``max_bytes`` (``None``: no limit); returns the number of jobs deleted."""
        if area not in ("done", "sent"):
            raise ValueError(f"only done/ and sent/ are pruned, not {area}/")
        jobs = sorted(((p.stat().st_mtime, p) for p in (self.root / area).iterdir() if p.is_dir()),
                      key=lambda item: item[0])
        sizes = {p: _tree_bytes(p) for _, p in jobs}
        total = sum(sizes.values())
        now = time.time()
        deleted = 0
        for mtime, job in jobs:
            too_old = max_age_seconds is not None and now - mtime > max_age_seconds
            too_big = max_bytes is not None and total > max_bytes
            if not (too_old or too_big):
                break
            shutil.rmtree(job)
            total -= sizes[job]
            deleted += 1
        return deleted

    def _retire(self, job: str, area: str) -> None:
        source = self.root / "processing" / job
        if source.exists():
            os.replace(source, self.root / area / job)
            os.utime(self.root / area / job)  # the retirement time: what retention ages from
            _fsync_dir(self.root / area)
            _fsync_dir(self.root / "processing")

    # ---------------------------------------------------------------- sending
    def outbox_jobs(self) -> list[str]:
        return sorted(p.name for p in (self.root / "outbox").iterdir() if p.is_dir() and not p.name.startswith("."))

    def outbox_files(self, job: str) -> list[Path]:
        return sorted((self.root / "outbox" / job).glob("*.dcm"))

    def mark_sent(self, job: str) -> None:
        os.replace(self.root / "outbox" / job, self.root / "sent" / job)
        os.utime(self.root / "sent" / job)
        _fsync_dir(self.root / "sent")
        _fsync_dir(self.root / "outbox")
