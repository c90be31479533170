"""Bundle commands run as recorded, resumable subprocesses (the pretraining runs of the comparison and the release).

A run lives in its own folder: the command's console output is appended to ``train.log`` and ``run.json`` records
the command, the start and end, the exit code and the wall time, summed over resumed attempts. A run whose
``model.pt`` exists and whose record says it exited 0 is finished and is not started again; an interrupted one is
started again with the same command, and the bundle resumes from its own checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dissect_monai.evaluation.results import read_json, write_json

__all__ = ["RecordedRun", "bundle_command", "run_finished", "run_recorded"]


def bundle_command(bundle: str | os.PathLike, configs: Sequence[str | os.PathLike], **overrides: Any) -> list[str]:
    """``python -m monai.bundle run`` of ``bundle`` with ``configs`` (paths, merged in order) and ``--key value``
    overrides (values as ``str``)."""
    bundle = Path(bundle)
    config_file = str(configs[0]) if len(configs) == 1 else json.dumps([str(c) for c in configs])
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config_file,
               "--meta_file", str(bundle / "configs" / "metadata.json"),
               "--logging_file", str(bundle / "configs" / "logging.conf"), "--bundle_root", str(bundle)]
    for key, value in overrides.items():
        command += [f"--{key}", str(value)]
    return command


def run_finished(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` holds a ``model.pt`` from a run recorded as exited 0."""
    run_dir = Path(run_dir)
    record = run_dir / "run.json"
    return (run_dir / "model.pt").is_file() and record.is_file() and read_json(record).get("returncode") == 0


class RecordedRun:
    """A started run: its process, its record (``run.json``) and its start time. Use :meth:`start`, then
    :meth:`wait` (or :meth:`poll` for several at once)."""

    def __init__(self, run_dir: Path, process: subprocess.Popen, record: dict[str, Any], log) -> None:
        self.run_dir, self.process, self.record, self._log = run_dir, process, record, log
        self._start = time.time()

    @classmethod
    def start(cls, run_dir: str | os.PathLike, command: Sequence[str], record: Mapping[str, Any] | None = None,
              threads: int | None = None, cwd: str | os.PathLike | None = None) -> "RecordedRun | None":
        """Start ``command`` for ``run_dir`` unless the run is finished (then ``None``).

        Args:
            record: what ``run.json`` records besides the command and times (e.g. method, epochs, image size).
            threads: ``OMP_NUM_THREADS`` of the subprocess.
        """
        run_dir = Path(run_dir)
        if run_finished(run_dir):
            return None
        run_dir.mkdir(parents=True, exist_ok=True)
        previous = read_json(run_dir / "run.json") if (run_dir / "run.json").is_file() else {}
        full = {**(record or {}), "command": " ".join(command), "resumed": bool(previous),
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "wall_seconds": previous.get("wall_seconds", 0.0)}
        write_json(run_dir / "run.json", full)
        env = dict(os.environ, PYTHONUNBUFFERED="1", **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
        log = open(run_dir / "train.log", "a", encoding="utf-8")
        process = subprocess.Popen(list(command), cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        return cls(run_dir, process, full, log)

    def poll(self) -> int | None:
        """The exit code once the process has ended (recorded at once), else ``None``."""
        code = self.process.poll()
        if code is not None and "returncode" not in self.record:
            self._finish(code)
        return code

    def wait(self) -> int:
        """Wait for the process; record and return its exit code."""
        code = self.process.wait()
        if "returncode" not in self.record:
            self._finish(code)
        return code

    def stop(self, timeout: float = 60.0) -> int:
        """End the process (SIGTERM, SIGKILL after ``timeout`` s) and record it as an interrupted attempt; a rerun
        resumes it from its last checkpoint."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.wait()

    def _finish(self, code: int) -> None:
        self._log.close()
        self.record.update(returncode=code, finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                           wall_seconds=round(self.record["wall_seconds"] + time.time() - self._start, 1))
        write_json(self.run_dir / "run.json", self.record)


def run_recorded(
    runs: Sequence[tuple[str | os.PathLike, Sequence[str], Mapping[str, Any]]], threads: int | None = None,
    parallel: bool = False, cwd: str | os.PathLike | None = None, poll_seconds: float = 1.0,
) -> dict[str, int | None]:
    """Run ``(run_dir, command, record)`` triples one after the other, or all at once with ``parallel`` (each run's
    end, and so its wall time, is recorded when it happens); returns each run folder's exit code (``None``: it was
    finished before and was skipped). Interrupted (``KeyboardInterrupt``, ``SystemExit``), it stops the runs it
    started (:meth:`RecordedRun.stop`) before it re-raises, so none outlives the launcher unrecorded."""
    codes: dict[str, int | None] = {}
    running: list[RecordedRun] = []
    try:
        if not parallel:
            for run_dir, command, record in runs:
                run = RecordedRun.start(run_dir, command, record, threads, cwd)
                running = [run] if run is not None else []
                codes[str(run_dir)] = None if run is None else run.wait()
            return codes
        for run_dir, command, record in runs:
            run = RecordedRun.start(run_dir, command, record, threads, cwd)
            codes[str(run_dir)] = None
            if run is not None:
                running.append(run)
        while running:
            for run in [r for r in running if r.poll() is not None]:
                codes[str(run.run_dir)] = run.process.returncode
                running.remove(run)
            time.sleep(poll_seconds if running else 0)
        return codes
    except BaseException:
        for run in running:
            run.stop()
        raise
