"""A private Orthanc 1.10 (Debian package ``orthanc``) on 127.0.0.1 for integration tests and benchmarks."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import pydicom
import requests
import urllib3

__all__ = ["LocalOrthanc", "free_port", "orthanc_available", "wait_for"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.2, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


class LocalOrthanc:
    """A private Orthanc 1.10 on 127.0.0.1 with a temporary config (HTTP on loopback-only access, no auth).

    Orthanc's DICOM server is enabled because the node stores its results there; Orthanc 1.10 has no bind
    address option, so that port listens on all interfaces: it is a random free high port, and Orthanc only
    talks DICOM with the modalities listed in its config.
    """

    BINARY = shutil.which("Orthanc") or "/usr/sbin/Orthanc"

    DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"

    def __init__(
        self, workdir: Path, node_aet: str, node_port: int, dicomweb: bool = False, users: dict[str, str] | None = None
    ) -> None:
        """Start Orthanc; with ``dicomweb`` the Debian ``orthanc-dicomweb`` plugin serves ``<url>/dicom-web``;
        with ``users`` (name -> password) its HTTP side (REST and DICOMweb) requires HTTP basic auth."""
        self.workdir = workdir
        self.session = requests.Session()
        # Orthanc may close a kept-alive connection the session then reuses ("Remote end closed connection"):
        # retried, as every request of the harness may be repeated (uploads and lookups are idempotent)
        retry = urllib3.util.Retry(total=3, connect=3, read=3, allowed_methods=None, backoff_factor=0.2)
        self.session.mount("http://", requests.adapters.HTTPAdapter(max_retries=retry))
        if users:
            self.session.auth = next(iter(users.items()))
        self.http_port, self.dicom_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "dissect-test", "StorageDirectory": str(workdir / "db"), "IndexDirectory": str(workdir / "db"),
            "HttpPort": self.http_port, "RemoteAccessAllowed": False, "AuthenticationEnabled": bool(users),
            "RegisteredUsers": users or {},
            "DicomServerEnabled": True, "DicomAet": "ORTHANC", "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": False, "DicomAlwaysAllowEcho": False,
            "DicomModalities": {"node": {"AET": node_aet, "Host": "127.0.0.1", "Port": node_port,
                                         "AllowStore": True, "AllowEcho": True}},
            "Plugins": [self.DICOMWEB_PLUGIN] if dicomweb else [],
            "DicomWeb": {"Enable": dicomweb, "Root": "/dicom-web/"},
            "StableAge": 1, "SaveJobs": False, "HttpTimeout": 120, "DicomScuTimeout": 60,
        }
        (workdir / "orthanc.json").write_text(json.dumps(config, indent=2))
        self._log = open(workdir / "orthanc.log", "wb")
        self.process = subprocess.Popen(
            [self.BINARY, str(workdir / "orthanc.json")], stdout=self._log, stderr=subprocess.STDOUT
        )
        wait_for(self._alive, 30, what=f"Orthanc to answer on {self.url}")

    def _alive(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {self.process.returncode}: see {self.workdir / 'orthanc.log'}")
        try:
            return self.session.get(self.url + "/system", timeout=2).ok
        except requests.RequestException:
            return False

    def set_node_port(self, port: int) -> None:
        """Point the ``node`` modality at another port (e.g. a restarted node)."""
        body = {"AET": "DISSECT_AI", "Host": "127.0.0.1", "Port": port, "AllowStore": True, "AllowEcho": True}
        self.session.put(f"{self.url}/modalities/node", json=body, timeout=10).raise_for_status()

    def upload(self, instance: Path | bytes) -> str:
        """``POST /instances`` a Part-10 file (path or bytes); returns Orthanc's instance id."""
        data = instance if isinstance(instance, bytes) else Path(instance).read_bytes()
        response = self.session.post(self.url + "/instances", data=data, timeout=60)
        response.raise_for_status()
        return response.json()["ID"]

    def store_to_node(self, resources: list[str]) -> dict:
        body = {"Resources": resources, "Synchronous": True}
        response = self.session.post(f"{self.url}/modalities/node/store", json=body, timeout=300)
        response.raise_for_status()
        return response.json()

    def get(self, path: str) -> Any:
        response = self.session.get(self.url + path, timeout=60)
        response.raise_for_status()
        return response.json()

    def instance_ids(self, study_uid: str, modality: str) -> list[str]:
        """Orthanc ids of the instances of ``modality`` stored in the study ``study_uid``."""
        found = self.session.post(self.url + "/tools/lookup", data=study_uid, timeout=10).json()
        ids = []
        for study in (f["ID"] for f in found if f["Type"] == "Study"):
            for series in self.get(f"/studies/{study}/series"):
                if series["MainDicomTags"].get("Modality") == modality:
                    ids.extend(series["Instances"])
        return ids

    def study_instances(self, study_uid: str, modality: str) -> list[pydicom.Dataset]:
        """Every instance of ``modality`` stored in the study, downloaded and parsed."""
        datasets = []
        for instance in self.instance_ids(study_uid, modality):
            data = self.session.get(f"{self.url}/instances/{instance}/file", timeout=60).content
            datasets.append(pydicom.dcmread(io.BytesIO(data)))
        return datasets

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def orthanc_available(dicomweb: bool = False) -> bool:
    """Whether the Orthanc server binary (and with ``dicomweb`` its DICOMweb plugin) is installed."""
    plugin = not dicomweb or os.path.isfile(LocalOrthanc.DICOMWEB_PLUGIN)
    return os.access(LocalOrthanc.BINARY, os.X_OK) and plugin
