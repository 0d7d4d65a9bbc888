"""The MLLP listener: HL7 v2 over TCP, one acknowledgement per message, several messages per connection.

A thin adapter over ``EhrService.handle_hl7``: a threaded TCP server (TCP_NODELAY, one thread per connection)
that splits the byte stream into MLLP frames and writes each message's ACK back before reading the next, so a
sender that waits for its ACK (as the standard asks) never has two messages in flight. Bytes outside a frame
and frames over ``max_message_bytes`` get an AR at once; the connection stays usable.

Configured by the ``[mllp]`` table::

    [mllp]
    port = 2575                         # no port: no listener
    host = "0.0.0.0"                    # default: the HTTP host
    allowed_facilities = ["HIS", "LAB"] # MSH-4 values accepted (default: any)
    max_message_bytes = 10485760
    idle_timeout_s = 600                # a connection silent this long is closed
"""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.audit import audit
from gateway.config import ConfigError, Settings
from gateway.ehr.ack import ErrorDetail, build_ack
from gateway.ehr.hl7v2 import MLLPDecoder, frame

if TYPE_CHECKING:
    from gateway.ehr.service import EhrService

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 10 * 1024 * 1024
DEFAULT_IDLE_TIMEOUT_S = 600.0
READ_SIZE = 65536


@dataclass(frozen=True)
class MllpConfig:
    port: int | None = None
    host: str = "127.0.0.1"
    allowed_facilities: tuple[str, ...] | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S

    @classmethod
    def from_settings(cls, settings: Settings) -> MllpConfig:
        section = settings.section("mllp")
        known = {"port", "host", "allowed_facilities", "max_message_bytes", "idle_timeout_s"}
        unknown = set(section) - known
        if unknown:
            raise ConfigError(f"[mllp]: unknown keys {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
        port = section.get("port")
        if port is not None and (not isinstance(port, int) or not 0 <= port < 65536):
            raise ConfigError(f"[mllp] port: {port!r} is not a TCP port")
        facilities = section.get("allowed_facilities")
        if facilities is not None and (not isinstance(facilities, list)
                                       or not all(isinstance(f, str) and f for f in facilities)):
            raise ConfigError("[mllp] allowed_facilities must be a list of MSH-4 sending facility names")
        size = section.get("max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES)
        if not isinstance(size, int) or size < 1024:
            raise ConfigError("[mllp] max_message_bytes must be an integer of at least 1024")
        timeout = section.get("idle_timeout_s", DEFAULT_IDLE_TIMEOUT_S)
        if not isinstance(timeout, int | float) or timeout <= 0:
            raise ConfigError("[mllp] idle_timeout_s must be a positive number of seconds")
        return cls(port, str(section.get("host") or settings.host),
                   tuple(facilities) if facilities is not None else None, size, float(timeout))


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def setup(self) -> None:
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.request.settimeout(self.server.config.idle_timeout_s)
        self.server.track(self.request, True)

    def finish(self) -> None:
        self.server.track(self.request, False)

    def handle(self) -> None:
        peer = f"{self.client_address[0]}:{self.client_address[1]}"
        decoder = MLLPDecoder(self.server.config.max_message_bytes)
        audit("mllp-connection", peer=peer, state="open")
        reason = "closed by peer"
        try:
            while True:
                try:
                    data = self.request.recv(READ_SIZE)
                except TimeoutError:
                    reason = "idle timeout"
                    break
                if not data:
                    if decoder.pending:
                        reason = "closed by peer in the middle of a message (nothing of it was stored)"
                    break
                for event in decoder.feed(data):
                    self.request.sendall(self._answer(event.kind, event.data, event.size, peer))
        except OSError as exc:
            reason = f"connection error: {exc}"
        finally:
            audit("mllp-connection", peer=peer, state="closed", reason=reason)

    def _answer(self, kind: str, data: bytes, size: int, peer: str) -> bytes:
        service = self.server.service
        if kind == "message":
            outcome = service.handle_hl7(data, peer)
            return frame(outcome.ack, outcome.charset)
        if kind == "oversize":
            text = (f"message of {size} bytes or more is over this gateway's limit of "
                    f"{self.server.config.max_message_bytes} bytes; it was not read")
        else:
            text = f"{size} bytes outside an MLLP frame (start block 0x0B ... end block 0x1C 0x0D) were ignored"
        audit("hl7-message", peer=peer, outcome="AR", detail=text)
        original = _header_only(data)
        error = ErrorDetail("207" if kind == "oversize" else "100", text)
        return frame(build_ack(original, "AR", text, error), original.charset if original is not None else "utf-8")


def _header_only(data: bytes) -> Any:
    """The MSH of a message we will not process, so that its AR names its control id (None if unreadable)."""
    from gateway.ehr import hl7v2

    first = data.split(b"\r", 1)[0].split(b"\n", 1)[0]
    if not first.startswith(b"MSH"):
        return None
    try:
        return hl7v2.parse(first + b"\r")
    except hl7v2.HL7ParseError:
        return None


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], service: EhrService, config: MllpConfig) -> None:
        self.service = service
        self.config = config
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, connection: socket.socket, active: bool) -> None:
        with self._lock:
            if active:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def close_connections(self) -> None:
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class MllpListener:
    """The listening socket and its connection threads; ``close`` stops both."""

    def __init__(self, service: EhrService, config: MllpConfig, host: str | None = None,
                 port: int | None = None) -> None:
        port = config.port if port is None else port
        if port is None:
            raise ValueError("no MLLP port configured ([mllp] port)")
        self.config = config
        self._server = _Server((host or config.host, port), service, config)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="mllp-listener", daemon=True)
        self._thread.start()
        log.info("MLLP listener on %s:%d (HL7 v2 ADT/ORU)", self.host, self.port)

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        server, self._server = self._server, None  # type: ignore[assignment]
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.close_connections()
        self._thread.join(timeout=5)

    def __enter__(self) -> MllpListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
