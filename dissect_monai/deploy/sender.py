"""Deliver result instances: DICOM C-STORE (pynetdicom) and optionally DICOMweb STOW-RS (dicomweb-client)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from dissect_monai.deploy.config import DestinationConfig, StowAuthConfig

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


def _stow_session(auth: StowAuthConfig | None) -> requests.Session:
    """A requests session carrying the configured STOW-RS credentials (read from the environment)."""
    session = requests.Session()
    if auth is None:
        return session
    variable = auth.password_env if auth.kind == "basic" else auth.token_env
    secret = os.environ.get(variable or "")
    if not secret:
        raise SendError(f"STOW-RS {auth.kind} auth: environment variable {variable!r} is not set")
    if auth.kind == "basic":
        session.auth = requests.auth.HTTPBasicAuth(auth.username or "", secret)
    else:
        session.headers["Authorization"] = f"Bearer {secret}"
    return session


def send_stow_rs(
    paths: Sequence[Path], url: str, auth: StowAuthConfig | None = None, timeout: float = 60.0
) -> None:
    """STOW-RS the files to ``<url>/studies`` (PS3.18 10.5) with :class:`dicomweb_client.DICOMwebClient`.

    Raises:
        SendError: on a transport error, an HTTP error status, or a response listing failed instances (HTTP 202).
    """
    client = DICOMwebClient(url.rstrip("/"), session=_stow_session(auth), timeout=timeout)
    try:
        response = client.store_instances([pydicom.dcmread(p) for p in paths])
    except requests.HTTPError as err:
        raise SendError(f"STOW-RS to {url} returned HTTP {err.response.status_code}") from err
    except requests.RequestException as err:
        raise SendError(f"STOW-RS to {url} failed: {type(err).__name__}") from err
    failed = len(response.get("FailedSOPSequence", []))
    if failed:
        raise SendError(f"STOW-RS to {url}: {failed} of {len(paths)} instance(s) not stored")
