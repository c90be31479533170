"""The node's DICOM listener: a pynetdicom association server that bounds what one connection can hold.

pynetdicom frees a slot only when an association's thread ends, and its accepted sockets block without a timeout:
a peer that sends half a PDU and waits keeps its slot forever. :class:`GuardedAssociationServer` puts the network
timeout on every accepted socket (so a stalled receive ends the connection), refuses connections from addresses
outside the allow-list or beyond the per-peer limit before any DICOM is read, and does the TLS handshake in the
connection's own thread (bounded by the same timeout) instead of in the thread that accepts every connection.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
from collections.abc import Sequence
from typing import Any

from pynetdicom.transport import ThreadedAssociationServer

from dissect_monai.deploy.config import TLSConfig

__all__ = ["GuardedAssociationServer", "log_safe", "server_ssl_context"]

logger = logging.getLogger(__name__)


def log_safe(text: Any, limit: int = 64) -> str:
    """A peer-supplied value (AE title, address) fit for a log line: printable characters only, bounded length."""
    return "".join(c if c.isprintable() else "?" for c in str(text).strip())[:limit]


def server_ssl_context(tls: TLSConfig) -> ssl.SSLContext:
    """A TLS 1.2+ server context with the node's certificate; verifies client certificates against the CA bundle.

    Raises:
        ValueError: naming the file when a certificate or key cannot be loaded.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=str(tls.certificate), keyfile=str(tls.private_key))
        if tls.ca_certificates is not None:
            context.load_verify_locations(cafile=str(tls.ca_certificates))
    except (OSError, ssl.SSLError) as err:
        files = ", ".join(str(f) for f in (tls.certificate, tls.private_key, tls.ca_certificates) if f)
        raise ValueError(f"TLS: cannot load {files}: {err}") from err
    if tls.require_client_certificate:
        if tls.ca_certificates is None:
            raise ValueError("TLS: require_client_certificate needs ca_certificates")
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class GuardedAssociationServer(ThreadedAssociationServer):
    """A :class:`~pynetdicom.transport.ThreadedAssociationServer` with per-socket timeouts and peer limits.

    Passed to :meth:`pynetdicom.ae.ApplicationEntity.make_server` as ``server_class`` with these keyword arguments:

    Args:
        network_timeout: seconds any receive (or TLS handshake) may stall before the connection is closed.
        allowed_peers: IP addresses / CIDR networks allowed to connect (empty = any).
        max_per_peer: connections at once from one IP address.
    """

    def __init__(
        self,
        *args: Any,
        network_timeout: float,
        allowed_peers: Sequence[str] = (),
        max_per_peer: int = 8,
        **kwargs: Any,
    ) -> None:
        self.connection_timeout = float(network_timeout)
        self.allowed_networks = [ipaddress.ip_network(p, strict=False) for p in allowed_peers]
        self.max_per_peer = int(max_per_peer)
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept a connection (TLS is wrapped later, in the connection's thread) with the network timeout set."""
        client, address = self.socket.accept()
        client.settimeout(self.connection_timeout)
        return client, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Refuse (close unanswered) connections from outside the allow-list or beyond the per-peer limit."""
        host = str(client_address[0])
        if self.allowed_networks and not any(ipaddress.ip_address(host) in n for n in self.allowed_networks):
            logger.warning("connection from %s refused: address not in security.allowed_peers", log_safe(host))
            return False
        open_now = sum(1 for assoc in self.active_associations if assoc.requestor.address == host)
        if open_now >= self.max_per_peer:
            logger.warning(
                "connection from %s refused: %d associations open from this address (limit %d)",
                log_safe(host), open_now, self.max_per_peer,
            )
            return False
        return True

    def process_request_thread(self, request: socket.socket, client_address: Any) -> None:
        """In the connection's own thread: the TLS handshake (if any), then pynetdicom's association handling."""
        if self.ssl_context is not None:
            try:
                request = self.ssl_context.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError) as err:
                logger.warning("connection from %s refused: TLS handshake failed (%s)", log_safe(client_address[0]),
                               log_safe(getattr(err, "reason", None) or type(err).__name__))
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)
