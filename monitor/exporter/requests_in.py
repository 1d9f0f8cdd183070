"""One HTTP request on its way in: the limits it is read under, when it is complete, and the
few bytes the metrics server writes without a worker.

Kept apart from the pool (``connections``) so the parsing that decides "complete" can be read
and tested on its own. It is deliberately small: the server answers ``GET`` and ``HEAD``, and
``wsgiref`` parses the request properly once it is complete; here we only need to know where
the headers end and how much body was announced, so that nothing is left unread (closing a
socket with unread bytes resets it, and the client may lose the reply).
"""

from __future__ import annotations

import io
import re
import selectors
import socket
import ssl
from dataclasses import dataclass
from typing import Any

_CONTENT_LENGTH = re.compile(rb"^content-length[ \t]*:[ \t]*(\d{1,18})[ \t]*\r?$", re.I | re.M)
_EXPECT = re.compile(rb"^expect[ \t]*:", re.I | re.M)  # 100-continue: no body until we answer
BUSY = b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 5\r\nRetry-After: 1\r\n\r\nbusy\n"
TOO_LARGE = b"HTTP/1.0 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n\r\n"


@dataclass(frozen=True)
class ConnectionLimits:
    """How much the metrics server gives its clients; checked when built."""

    workers: int = 4
    queued: int = 32
    pending: int = 256
    request_deadline: float = 10.0  # seconds from accept to the request's last byte
    write_timeout: float = 10.0  # seconds for each write of a reply
    max_request_bytes: int = 131072  # headers and the part of a body that is waited for

    def __post_init__(self) -> None:
        for name in ("workers", "queued", "pending", "max_request_bytes"):
            if (value := getattr(self, name)) < 1:
                raise ValueError(f"ConnectionLimits.{name}: expected at least 1, got {value}")
        for name in ("request_deadline", "write_timeout"):
            if not (value := getattr(self, name)) > 0:  # NaN fails this too
                raise ValueError(f"ConnectionLimits.{name}: expected seconds > 0, got {value}")


class PendingRequest:
    """A connection still sending its request (or, with TLS, still shaking hands)."""

    __slots__ = ("address", "data", "deadline", "events", "handshaking", "scanned", "sock")

    def __init__(self, sock: socket.socket, address: Any, deadline: float) -> None:
        self.sock, self.address, self.deadline = sock, address, deadline
        self.data = bytearray()  # appended to in place: a byte at a time stays linear
        self.scanned = 0  # where to resume looking for the end of the headers
        self.events = selectors.EVENT_READ
        self.handshaking = isinstance(sock, ssl.SSLSocket)

    def complete(self, cap: int) -> bool | None:
        """True once the headers and the announced body are in (the body only up to ``cap``),
        False at ``cap`` bytes without the end of the headers, None while more is to come."""
        data = self.data
        start = max(0, self.scanned - 3)  # an end split across two reads is still found
        ends = [i + len(end) for end in (b"\n\r\n", b"\n\n") if (i := data.find(end, start)) >= 0]
        if not ends:
            self.scanned = len(data)
            return None if len(data) < cap else False
        headers_end = min(ends)
        head = bytes(data[:headers_end])
        match = _CONTENT_LENGTH.search(head)
        body = int(match.group(1)) if match and not _EXPECT.search(head) else 0
        return True if len(data) >= min(headers_end + body, cap) else None


class SocketWriter(io.BufferedIOBase):
    """A reply's ``wfile``: every write sent in full (a raw ``SocketIO`` may send part)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._sock.sendall(data)
        with memoryview(data) as view:
            return view.nbytes


def close(sock: socket.socket, last_words: bytes = b"") -> None:
    """Best effort: a short final reply if the socket takes it now, then shut down and close."""
    try:
        if last_words:
            sock.send(last_words)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    sock.close()
