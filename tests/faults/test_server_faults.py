"""The metrics server cannot be exhausted (issue 19, item 8).

200 clients that connect and then say nothing, or trickle a byte now and then, once made the
server start 200 threads and hold them as long as the clients liked (a per-``recv`` timeout
never fires for a client that sends a byte every half second). Now the process's thread count
stays bounded, ``/healthz`` answers throughout, and each connection is cut at its request
deadline: in process against a real ``MetricsServer`` (plain HTTP, and TLS with both stalled
handshakes and trickling encrypted requests) and against a real daemon process.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from monitor.config.schema import MetricsConfig
from monitor.exporter.metrics import MonitorMetrics
from monitor.exporter.requests_in import ConnectionLimits
from monitor.exporter.server import MetricsServer
from tests.daemon_harness import DaemonProcess, make_config, metric_value, wait_for
from tests.exporter.test_server import make_cert

pytestmark = pytest.mark.slow

CLIENTS = 200
#: Threads the server may add under any load: its I/O thread and its workers, and some slack.
THREAD_ALLOWANCE = 10
REQUEST = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nUser-Agent: trickle\r\n" + b"X: y\r\n" * 50


def status(url: str, context: ssl.SSLContext | None = None) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10, context=context) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


@contextlib.contextmanager
def trickling_clients(
    port: int, tls: ssl.SSLContext | None = None, count: int = CLIENTS
) -> Iterator[list[socket.socket]]:
    """``count`` connections: half say nothing (with TLS: never start the handshake), half send
    a request one byte every 0.5 s (with TLS: after a real handshake, encrypted)."""
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]
    if tls is not None:
        sockets[::2] = [tls.wrap_socket(sock, server_hostname="localhost") for sock in sockets[::2]]
    stop = threading.Event()

    def trickle() -> None:
        offset = 0
        while not stop.wait(0.5):
            for sock in sockets[::2]:
                with contextlib.suppress(OSError):  # the server cut it off, as it should
                    sock.send(REQUEST[offset % len(REQUEST) : offset % len(REQUEST) + 1])
            offset += 1

    sender = threading.Thread(target=trickle, name="trickler", daemon=True)
    sender.start()
    try:
        yield sockets
    finally:
        stop.set()
        sender.join(10)
        for sock in sockets:
            sock.close()


def most_threads(count_threads: Callable[[], int], seconds: float = 4.0) -> int:
    """The most threads seen while the clients are connected (the old server added one each)."""
    deadline, most = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        most = max(most, count_threads())
        time.sleep(0.05)
    return most


def timed_status(url: str, context: ssl.SSLContext | None = None) -> tuple[int, float]:
    started = time.monotonic()
    code = status(url, context)
    return code, time.monotonic() - started


@pytest.mark.parametrize("tls_on", [False, True], ids=["http", "https"])
def test_trickling_clients_hold_no_threads_and_healthz_answers(
    tmp_path: Path, tls_on: bool
) -> None:
    options: dict[str, object] = {"port": 0}
    context = None
    if tls_on:
        cert, key = make_cert(tmp_path, "server")
        options |= {"tls_cert": cert, "tls_key": key}
        context = ssl.create_default_context(cafile=str(cert))
    metrics = MonitorMetrics()
    config = MetricsConfig.model_validate(options)
    limits = ConnectionLimits(request_deadline=6.0)  # default 10 s: shorter to keep this quick
    with MetricsServer(metrics.registry, lambda: True, config, limits=limits) as s:
        healthz = s.url.removesuffix("/metrics") + "/healthz"
        assert status(healthz, context) == 200
        before = threading.active_count()
        with trickling_clients(s.port, context) as clients:
            most = most_threads(threading.active_count)
            code, took = timed_status(healthz, context)
            assert code == 200
            assert took < 5, f"/healthz took {took:.1f}s under load"
            # Every one is cut at its deadline, though the tricklers never fall silent.
            wait_for(lambda: dropped(s, context) == CLIENTS, what="all clients cut off")
            assert all(closed_by_server(client) for client in clients)
        assert most <= before + 1 + THREAD_ALLOWANCE, (before, most)  # +1: the trickler


def dropped(s: MetricsServer, context: ssl.SSLContext | None) -> float | None:
    with urllib.request.urlopen(s.url, timeout=10, context=context) as response:
        exposition = response.read().decode()
    name = "stiffness_metrics_connections_dropped_total"
    return metric_value(exposition, name, reason="deadline")


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, ssl.SSLEOFError):
        return True


def process_threads(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^Threads:\s+(\d+)$", text, re.MULTILINE).group(1))  # type: ignore[union-attr]


def test_a_daemon_under_trickling_clients_keeps_its_threads_and_healthz(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    daemon = DaemonProcess(make_config(tmp_path / "monitor", {"digits": run_dir}))
    try:
        base = daemon.metrics_url().removesuffix("/metrics")
        wait_for(lambda: status(base + "/readyz") == 200, timeout=120, what="the daemon ready")
        port = int(base.rpartition(":")[2])
        pid = daemon.process.pid
        before = process_threads(pid)
        with trickling_clients(port):
            most = most_threads(lambda: process_threads(pid))
            code, took = timed_status(base + "/healthz")
            assert code == 200
            assert took < 5, f"/healthz took {took:.1f}s under load"
        assert most <= before + THREAD_ALLOWANCE, (before, most)
        assert daemon.process.poll() is None
    finally:
        assert daemon.stop() == 0, daemon.log
