"""Deliver result instances: DICOM C-STORE (pynetdicom) and optionally DICOMweb STOW-RS."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path

import pydicom
import requests
from pynetdicom import AE
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dissect_monai.deploy.config import DestinationConfig

__all__ = ["SendError", "send_c_store", "send_stow_rs"]


class SendError(RuntimeError):
    """A delivery that did not complete; the files stay queued and are retried."""


def send_c_store(
    paths: Sequence[Path], destination: DestinationConfig, calling_ae_title: str, timeout: float = 120.0
) -> None:
    """C-STORE every file to the destination in one association; raises :class:`SendError` unless all succeed."""
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for sop_class in sorted({str(h.SOPClassUID) for h in headers}):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        raise SendError(f"association with {destination.ae_title}@{destination.host}:{destination.port} failed")
    try:
        for path in paths:
            status = assoc.send_c_store(path)
            code = getattr(status, "Status", None)
            if code is None or not (code == 0x0000 or 0xB000 <= code <= 0xBFFF):
                raise SendError(f"C-STORE of {path.name} returned status {code if code is None else hex(code)}")
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def send_stow_rs(paths: Sequence[Path], url: str, timeout: float = 60.0) -> None:
    """POST the files to ``<url>/studies`` as ``multipart/related; type="application/dicom"`` (PS3.18 STOW-RS)."""
    boundary = uuid.uuid4().hex
    body = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + Path(p).read_bytes() + b"\r\n"
        for p in paths
    ) + b"--" + boundary.encode() + b"--\r\n"
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json",
    }
    try:
        response = requests.post(url.rstrip("/") + "/studies", data=body, headers=headers, timeout=timeout)
    except requests.RequestException as err:
        raise SendError(f"STOW-RS to {url} failed: {type(err).__name__}") from err
    if response.status_code != 200:  # 202 means some instances were not stored
        raise SendError(f"STOW-RS to {url} returned HTTP {response.status_code}")
