"""The metrics server's connections: one I/O thread reads requests, a fixed pool answers them.

A thread per connection let 200 clients that connect and then trickle a byte now and then (or
say nothing) hold 200 threads for as long as they liked; a per-``recv`` timeout cannot stop a
client that sends one byte every few seconds. So requests are read without threads:

- One I/O thread accepts, runs TLS handshakes without blocking (a stalled handshake never
  blocks ``accept`` or another client) and reads each request, headers and body, in full,
  within one deadline counted from ``accept``. A connection that has not sent its whole
  request by then is closed.
- Only complete requests reach the fixed pool of worker threads, so a worker never waits on a
  client to send; its writes have a timeout. The thread count is ``1 + workers``, whatever the
  load, and ``/healthz`` is answered as soon as it arrives.
- At most ``pending`` connections may be mid-request: one more closes the oldest (the nearest
  its deadline). At most ``queued`` complete requests wait for a worker: one more gets a
  ``503`` at once. Each connection closed this way is counted by reason in
  ``stiffness_metrics_connections_dropped_total``; the first in a minute is logged as a warning
  (a flood must not flood the log too), the rest at debug.
"""

from __future__ import annotations

import logging
import queue
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from monitor.exporter.requests_in import BUSY, TOO_LARGE, ConnectionLimits, PendingRequest, close

log = logging.getLogger("monitor.metrics_server")

POLL = 0.2  # seconds: how long ``stop`` may wait for the I/O thread to notice
WARN_EVERY = 60.0  # seconds: at most one warning about dropped connections per this long
READ_SIZE = 65536
REASONS = ("deadline", "pending", "busy", "too-large")
Handle = Callable[[socket.socket, Any, bytes], None]


class ConnectionPool:
    """Accepts on ``listener`` and calls ``handle(sock, address, request_bytes)`` in a worker."""

    def __init__(
        self,
        listener: socket.socket,
        handle: Handle,
        limits: ConnectionLimits,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.limits, self._listener, self._handle, self._tls = limits, listener, handle, tls
        self._selector = selectors.DefaultSelector()
        self._pending: dict[socket.socket, PendingRequest] = {}  # in accept order: oldest first
        # Unbounded as a type, bounded by ``_dispatch`` (the only producer): the workers' stop
        # sentinels must always fit.
        self._queue: queue.Queue[tuple[socket.socket, Any, bytes] | None] = queue.Queue()
        self._stopping = threading.Event()
        self._dropped = dict.fromkeys(REASONS, 0)
        self._quiet_until = 0.0
        self._threads = [threading.Thread(target=self._serve, name="metrics-server", daemon=True)]
        self._threads += [
            threading.Thread(target=self._work, name=f"metrics-worker-{n}", daemon=True)
            for n in range(limits.workers)
        ]

    def start(self) -> None:
        self._listener.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ)
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, close what is mid-request, let the workers finish what they hold."""
        self._stopping.set()
        self._threads[0].join(timeout)
        while True:  # the I/O thread has ended: nothing fills the queue any more
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                close(item[0])
        for _ in self._threads[1:]:
            self._queue.put(None)
        for thread in self._threads[1:]:
            thread.join(timeout)

    def dropped(self) -> dict[str, int]:
        return dict(self._dropped)

    # -- the I/O thread ------------------------------------------------------------------------

    def _serve(self) -> None:
        try:
            while not self._stopping.is_set():
                oldest = next(iter(self._pending.values()), None)
                wait = POLL if oldest is None else oldest.deadline - time.monotonic()
                for key, _ in self._selector.select(max(0.0, min(POLL, wait))):
                    try:
                        if key.fileobj is self._listener:
                            self._accept()
                        else:
                            self._read(key.data)
                    except Exception:  # a bug here must not end the server for everyone
                        log.exception("metrics server: unexpected failure, connection closed")
                        if key.data is not None:
                            self._forget(key.data)
                self._expire(time.monotonic())
        finally:
            for pending in list(self._pending.values()):
                self._forget(pending)
            self._selector.close()

    def _accept(self) -> None:
        for _ in range(64):  # then let the others be read too
            try:
                sock, address = self._listener.accept()
            except BlockingIOError:
                return
            except OSError:  # out of file descriptors: make room, try again next turn
                log.debug("metrics server could not accept", exc_info=True)
                if self._pending:
                    self._drop(next(iter(self._pending.values())), "pending")
                else:
                    self._stopping.wait(POLL)  # nothing of ours to close: do not spin
                return
            sock.setblocking(False)
            if self._tls is not None:  # the handshake itself happens in ``_read``
                sock = self._tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            if len(self._pending) >= self.limits.pending:
                self._drop(next(iter(self._pending.values())), "pending")
            pending = PendingRequest(sock, address, time.monotonic() + self.limits.request_deadline)
            self._pending[sock] = pending
            self._selector.register(sock, selectors.EVENT_READ, pending)

    def _read(self, pending: PendingRequest) -> None:
        sock, cap = pending.sock, self.limits.max_request_bytes
        try:
            if pending.handshaking and isinstance(sock, ssl.SSLSocket):
                sock.do_handshake()
                pending.handshaking = False
            while True:
                chunk = sock.recv(READ_SIZE)
                if not chunk:  # the client finished sending (or left): serve what came
                    if pending.data:
                        self._dispatch(pending)
                    else:
                        self._forget(pending)
                    return
                pending.data += chunk
                complete = pending.complete(cap)
                if complete is True:
                    self._dispatch(pending)
                    return
                if complete is False:
                    self._drop(pending, "too-large")
                    return
        except ssl.SSLWantWriteError:
            self._wait_for(pending, selectors.EVENT_WRITE)
        except (ssl.SSLWantReadError, BlockingIOError):
            self._wait_for(pending, selectors.EVENT_READ)
        except OSError:  # plain HTTP to HTTPS, a reset: one debug line, no trace
            log.debug("metrics connection from %s failed", pending.address, exc_info=True)
            self._forget(pending)

    def _wait_for(self, pending: PendingRequest, events: int) -> None:
        if pending.events != events:
            pending.events = events
            self._selector.modify(pending.sock, events, pending)

    def _expire(self, now: float) -> None:
        while self._pending:
            oldest = next(iter(self._pending.values()))
            if oldest.deadline > now:
                return
            self._drop(oldest, "deadline")

    def _dispatch(self, pending: PendingRequest) -> None:
        """Hand a complete request to the workers, or answer 503 if all are busy."""
        self._unregister(pending)
        if self._queue.qsize() >= self.limits.queued:
            self._count(pending, "busy")
            close(pending.sock, BUSY)
            return
        self._queue.put((pending.sock, pending.address, bytes(pending.data)))
        # From here a worker owns the socket: this thread must not touch it again.

    def _drop(self, pending: PendingRequest, reason: str) -> None:
        self._count(pending, reason)
        self._forget(pending, TOO_LARGE if reason == "too-large" else b"")

    def _count(self, pending: PendingRequest, reason: str) -> None:
        self._dropped[reason] += 1
        now = time.monotonic()
        if now < self._quiet_until:
            log.debug("metrics server closed a connection from %s (%s)", pending.address, reason)
            return
        self._quiet_until = now + WARN_EVERY
        log.warning(
            "metrics server closed a connection from %s (%s); more within a minute are only "
            "counted in stiffness_metrics_connections_dropped_total",
            pending.address[0] if isinstance(pending.address, tuple) else pending.address,
            reason,
        )

    def _forget(self, pending: PendingRequest, last_words: bytes = b"") -> None:
        self._unregister(pending)
        close(pending.sock, b"" if pending.handshaking else last_words)

    def _unregister(self, pending: PendingRequest) -> None:
        if self._pending.pop(pending.sock, None) is not None:
            self._selector.unregister(pending.sock)

    # -- the workers ---------------------------------------------------------------------------

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            sock, address, data = item
            try:
                sock.settimeout(self.limits.write_timeout)
                self._handle(sock, address, data)
            except Exception:
                log.debug("metrics connection from %s failed", address, exc_info=True)
            finally:
                close(sock)


class DropCounter(Collector):
    """``stiffness_metrics_connections_dropped_total``, read from the pool at each scrape."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "stiffness_metrics_connections_dropped",
            "Metrics server connections closed before a reply, by reason: deadline (the "
            "request did not arrive in full in time), pending (too many still sending: the "
            "oldest closed), busy (every worker busy and the queue full: 503), too-large "
            "(headers too long)",
            labels=["reason"],
        )
        for reason, count in self._pool.dropped().items():
            family.add_metric([reason], count)
        return [family]
