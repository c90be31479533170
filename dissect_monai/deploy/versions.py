"""Result versions per study: which version a study's next job writes, and what each result series holds now.

One small JSON file per study under ``<spool>/versions/<study hash>.json`` (the hash of the job names, no UID in
the file name)::

    {"version": 2, "series": {"<result SeriesInstanceUID>": {"version": 2, "sop_class": "<SOPClassUID>"}}}

``version`` is reserved before a job runs (a job interrupted by a crash makes the next run use a higher number,
never the same one twice); ``series`` is updated once a job's results are published, and tells the next version
of each result which instance it replaces (see :mod:`dissect_monai.deploy.jobs`).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from dissect_monai.dicom import result_uid

__all__ = ["ResultVersions"]


class ResultVersions:
    """The version records of a spool.

    Args:
        root: the folder of the records (created when missing).
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root.chmod(0o700)
        self._lock = threading.Lock()

    def _path(self, study_key: str) -> Path:
        return self.root / f"{study_key}.json"

    def _read(self, study_key: str) -> dict[str, Any]:
        try:
            record = json.loads(self._path(study_key).read_text())
        except FileNotFoundError:
            return {"version": 0, "series": {}}
        except ValueError as err:  # a record is rewritten whole by rename; a broken one is a disk fault
            raise RuntimeError(f"{self._path(study_key)}: unreadable version record: {err}") from err
        return {"version": int(record.get("version", 0)), "series": dict(record.get("series", {}))}

    def _write(self, study_key: str, record: dict[str, Any]) -> None:
        partial = self._path(study_key).with_suffix(".partial")
        with open(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
            json.dump(record, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, self._path(study_key))

    def reserve(self, study_key: str) -> int:
        """The version the next job of the study writes (1 for a study never processed), recorded durably."""
        with self._lock:
            record = self._read(study_key)
            record["version"] += 1
            self._write(study_key, record)
            return record["version"]

    def previous(self, study_key: str, study_uid: str) -> dict[str, Dataset]:
        """Result SeriesInstanceUID -> a reference to its current instance (Study / Series / SOP Instance /
        SOP Class UIDs, what a Predecessor Documents Sequence cites)."""
        references = {}
        for series_uid, entry in self._read(study_key)["series"].items():
            ref = Dataset()
            ref.StudyInstanceUID, ref.SeriesInstanceUID = study_uid, series_uid
            ref.SOPInstanceUID = result_uid(study_uid, series_uid, entry["version"])
            ref.SOPClassUID = entry["sop_class"]
            references[series_uid] = ref
        return references

    def published(self, study_key: str, results: list[Dataset]) -> None:
        """Record that ``results`` are now the current instance of their series (version = InstanceNumber)."""
        with self._lock:
            record = self._read(study_key)
            for ds in results:
                record["series"][str(ds.SeriesInstanceUID)] = {
                    "version": int(ds.InstanceNumber), "sop_class": str(ds.SOPClassUID)
                }
            self._write(study_key, record)
