"""The exporter's HTTP server through real requests: routes, readiness and liveness, TLS, basic
auth, config, and the connection limits (deadlines, the pending cap, the busy 503).

Servers bind port 0 on 127.0.0.1; certificates are made for each test module by the real
``openssl`` command line (self-signed, with 127.0.0.1 in the subject alternative names).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import logging
import math
import re
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from monitor.config.schema import MetricsConfig, load_config
from monitor.errors import ConfigError
from monitor.exporter.metrics import MonitorMetrics
from monitor.exporter.requests_in import ConnectionLimits
from monitor.exporter.server import MetricsServer
from tests.conftest import run_cli

PASSWORD = "s3cret: with spaces and ünïcode"


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Message
    body: bytes


def make_cert(folder: Path, name: str, passphrase: str | None = None) -> tuple[Path, Path]:
    """A self-signed P-256 certificate for localhost and 127.0.0.1, and its key."""
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    protect = ["-passout", f"pass:{passphrase}"] if passphrase else ["-noenc"]
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         *protect, "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_cert(tmp_path_factory.mktemp("tls"), "server")


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "password"
    path.write_text(PASSWORD + "\n")  # as `echo ... > file` leaves it
    return path


def get(
    url: str,
    *,
    auth: tuple[str, str] | str | None = None,
    context: ssl.SSLContext | None = None,
    method: str = "GET",
) -> Reply:
    request = urllib.request.Request(url, method=method)
    if isinstance(auth, tuple):
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    elif auth is not None:
        request.add_header("Authorization", auth)
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return Reply(response.status, response.headers, response.read())
    except urllib.error.HTTPError as error:
        return Reply(error.code, error.headers, error.read())


def server(metrics: MonitorMetrics, **options: object) -> MetricsServer:
    config = MetricsConfig.model_validate({"port": 0, **options})
    return MetricsServer(metrics.registry, lambda: metrics.is_ready, config)


def at(s: MetricsServer, path: str) -> str:
    return s.url.removesuffix("/metrics") + path


def test_routes_and_readiness_before_and_after_ready() -> None:
    metrics = MonitorMetrics()
    with server(metrics) as s:
        assert s.url.startswith("http://127.0.0.1:")
        assert (get(at(s, "/healthz")).status, get(at(s, "/healthz")).body) == (200, b"ok\n")
        assert get(at(s, "/readyz")).status == 503
        assert b"stiffness_ready 0.0" in get(s.url).body
        metrics.set_ready(True)
        assert (get(at(s, "/readyz")).status, get(at(s, "/readyz")).body) == (200, b"ready\n")
        assert b"stiffness_ready 1.0" in get(s.url).body
        metrics.set_ready(False)  # shutting down: no longer ready, still alive
        assert (get(at(s, "/readyz")).status, get(at(s, "/healthz")).status) == (503, 200)
        assert [get(at(s, p)).status for p in ("/", "/metrics/x", "/favicon.ico")] == [404] * 3
        posted = get(s.url, method="POST")
        assert (posted.status, posted.headers["Allow"]) == (405, "GET, HEAD")
        head = get(at(s, "/healthz"), method="HEAD")
        assert (head.status, head.body) == (200, b"")


def test_metrics_honour_prometheus_content_negotiation() -> None:
    with server(MonitorMetrics()) as s:
        request = urllib.request.Request(s.url, headers={"Accept": "application/openmetrics-text"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.headers["Content-Type"].startswith("application/openmetrics-text")
            assert response.read().endswith(b"# EOF\n")


def test_tls_serves_https_with_the_given_certificate(tls: tuple[Path, Path]) -> None:
    cert, key = tls
    trusting = ssl.create_default_context(cafile=str(cert))
    with server(MonitorMetrics(), tls_cert=cert, tls_key=key) as s:
        assert s.url.startswith("https://127.0.0.1:")
        reply = get(s.url, context=trusting)
        assert reply.status == 200 and b"# TYPE stiffness_ready gauge" in reply.body
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            get(s.url, context=ssl.create_default_context())  # not the system's trust
        plain = s.url.replace("https://", "http://")
        with pytest.raises((urllib.error.URLError, http.client.HTTPException, OSError)):
            get(plain)
        assert get(at(s, "/healthz"), context=trusting).status == 200  # still serving


def test_a_stalled_tls_client_does_not_block_other_scrapes(tls: tuple[Path, Path]) -> None:
    """Handshakes run in each connection's thread, so a silent client holds only its own."""
    cert, key = tls
    trusting = ssl.create_default_context(cafile=str(cert))
    s = server(MonitorMetrics(), tls_cert=cert, tls_key=key)
    with s, socket.create_connection(("127.0.0.1", s.port), timeout=10):  # it says nothing
        replies: list[int] = []
        scrape = threading.Thread(
            target=lambda: replies.append(get(s.url, context=trusting).status)
        )
        scrape.start()
        scrape.join(timeout=5)
        assert replies == [200]


@pytest.mark.parametrize(
    ("auth", "status"),
    [
        (("monitor", PASSWORD), 200),
        (("monitor", PASSWORD + "x"), 401),
        (("monitor", PASSWORD[:-1]), 401),
        (("Monitor", PASSWORD), 401),
        (None, 401),
        ("Basic !!not-base64!!", 401),
        ("Basic " + base64.b64encode(b"monitor").decode(), 401),  # no colon
        ("Bearer " + base64.b64encode(f"monitor:{PASSWORD}".encode()).decode(), 401),
    ],
    ids=["right", "wrong-password", "prefix-of-password", "wrong-user", "missing",
         "malformed", "no-colon", "other-scheme"],
)  # fmt: skip
def test_basic_auth(password_file: Path, auth: tuple[str, str] | str | None, status: int) -> None:
    options = {"basic_auth_user": "monitor", "basic_auth_password_file": password_file}
    with server(MonitorMetrics(), **options) as s:
        reply = get(s.url, auth=auth)
        assert reply.status == status
        if status == 401:
            assert (
                reply.headers["WWW-Authenticate"]
                == 'Basic realm="stiffness-monitor", charset="UTF-8"'
            )
            assert b"stiffness_" not in reply.body
        else:
            assert b"# HELP stiffness_ready" in reply.body


def test_probes_stay_open_and_other_paths_need_auth_too(password_file: Path) -> None:
    metrics = MonitorMetrics()
    options = {"basic_auth_user": "monitor", "basic_auth_password_file": password_file}
    with server(metrics, **options) as s:
        metrics.set_ready(True)
        assert (get(at(s, "/healthz")).status, get(at(s, "/readyz")).status) == (200, 200)
        assert get(at(s, "/elsewhere")).status == 401
        assert get(at(s, "/elsewhere"), auth=("monitor", PASSWORD)).status == 404


def test_tls_and_basic_auth_together(tls: tuple[Path, Path], password_file: Path) -> None:
    cert, key = tls
    trusting = ssl.create_default_context(cafile=str(cert))
    options = {"tls_cert": cert, "tls_key": key, "basic_auth_user": "monitor",
               "basic_auth_password_file": password_file}  # fmt: skip
    with server(MonitorMetrics(), **options) as s:
        assert get(s.url, context=trusting).status == 401
        assert get(s.url, context=trusting, auth=("monitor", PASSWORD)).status == 200


@pytest.mark.parametrize(
    ("tls_on", "auth_on", "host", "warned"),
    [(False, False, "0.0.0.0", "TLS or basic auth"), (True, False, "0.0.0.0", "basic auth"),
     (True, True, "0.0.0.0", None), (False, False, "127.0.0.1", None),
     (False, False, "localhost", None)],
    ids=["open", "tls-only", "tls-and-auth", "loopback", "localhost"],
)  # fmt: skip
def test_warns_when_exposed_without_protection(
    caplog: pytest.LogCaptureFixture,
    tls: tuple[Path, Path],
    password_file: Path,
    tls_on: bool,
    auth_on: bool,
    host: str,
    warned: str | None,
) -> None:
    options: dict[str, object] = {"host": host}
    if tls_on:
        options |= {"tls_cert": tls[0], "tls_key": tls[1]}
    if auth_on:
        options |= {"basic_auth_user": "monitor", "basic_auth_password_file": password_file}
    with (
        caplog.at_level(logging.WARNING, logger="monitor.exporter.server"),
        server(MonitorMetrics(), **options),
    ):
        pass
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    if warned is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and f"binds {host} without {warned}:" in warnings[0]


def write_config(folder: Path, metrics: str) -> Path:
    path = folder / "config.yaml"
    path.write_text(f"probe: {{path: probe.pt}}\nmetrics:\n{metrics}")
    return path


def config_error(folder: Path, metrics: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(folder, metrics))
    return str(caught.value)


def test_config_paths_resolve_against_the_config_folder(
    tmp_path: Path, tls: tuple[Path, Path]
) -> None:
    (tmp_path / "secrets").mkdir()
    for source in tls:
        (tmp_path / "secrets" / source.name).write_bytes(source.read_bytes())
    (tmp_path / "secrets" / "pw").write_text("x")
    config = load_config(write_config(tmp_path, (
        "  tls_cert: secrets/server.crt\n  tls_key: secrets/server.key\n"
        "  basic_auth_user: monitor\n  basic_auth_password_file: secrets/pw\n"
    )))  # fmt: skip
    assert config.metrics.tls_cert == tmp_path / "secrets" / "server.crt"
    assert config.metrics.basic_auth_password_file == tmp_path / "secrets" / "pw"
    assert "x" not in config.metrics.model_dump_json()  # the password itself is never held


def test_config_errors_name_the_file_and_key(tmp_path: Path, tls: tuple[Path, Path]) -> None:
    cert, key = tls
    other_cert, other_key = make_cert(tmp_path, "other")
    _, locked_key = make_cert(tmp_path, "locked", passphrase="pass")
    (tmp_path / "empty").write_text("\n")
    config = tmp_path / "config.yaml"
    nope, empty = tmp_path / "nope.crt", tmp_path / "empty"
    cases = [
        (
            f"tls_cert: {cert}",
            "metrics: expected tls_key together with tls_cert, got only tls_cert",
        ),
        (f"tls_key: {key}", "metrics: expected tls_cert together with tls_key, got only tls_key"),
        (
            f"tls_cert: nope.crt\n  tls_key: {key}",
            f"metrics.tls_cert: expected a readable file, got '{nope}' (No such file",
        ),
        (
            f"tls_cert: {cert}\n  tls_key: {tmp_path}",
            f"metrics.tls_key: expected a regular file, got '{tmp_path}'",
        ),
        (
            f"tls_cert: {cert}\n  tls_key: {other_key}",
            "to hold a PEM certificate and its matching, unencrypted private key, got [X509",
        ),
        (f"tls_cert: {other_cert}\n  tls_key: {locked_key}", "the key is encrypted"),
        (f"tls_cert: {key}\n  tls_key: {key}", "to hold a PEM certificate"),
        (
            "basic_auth_user: monitor",
            "metrics: expected basic_auth_password_file together with basic_auth_user",
        ),
        (
            "basic_auth_user: monitor\n  basic_auth_password_file: empty",
            f"expected a password in '{empty}', got an empty file",
        ),
        (
            "basic_auth_user: 'a:b'\n  basic_auth_password_file: empty",
            "metrics.basic_auth_user: expected a non-empty user name without ':', got 'a:b'",
        ),
    ]
    for metrics, expected in cases:
        message = config_error(tmp_path, f"  {metrics}\n")
        assert re.match(rf"{re.escape(str(config))}:[234]: metrics", message), message
        assert expected in message and "\n" not in message, message


@pytest.mark.slow
def test_watch_exits_2_naming_each_bad_metrics_key(tmp_path: Path) -> None:
    config = write_config(tmp_path, "  tls_cert: missing.crt\n  tls_key: missing.key\n")
    completed = run_cli("watch", "-c", config)
    assert completed.returncode == 2
    assert completed.stderr.splitlines() == [  # one line per problem
        f"error: {config}:3: metrics.tls_cert: expected a readable file, got "
        f"'{tmp_path / 'missing.crt'}' (No such file or directory)",
        f"{config}:4: metrics.tls_key: expected a readable file, got "
        f"'{tmp_path / 'missing.key'}' (No such file or directory)",
    ]


# -- liveness and connection limits (issue 19, items 2 and 8) -----------------------------------


def test_healthz_answers_what_is_live_says() -> None:
    live = [True]
    metrics = MonitorMetrics()
    config = MetricsConfig(port=0)
    with MetricsServer(metrics.registry, lambda: True, config, is_live=lambda: live[0]) as s:
        assert (get(at(s, "/healthz")).status, get(at(s, "/healthz")).body) == (200, b"ok\n")
        live[0] = False  # a dead watcher past its grace period, say
        assert (get(at(s, "/healthz")).status, get(at(s, "/healthz")).body) == (503, b"not live\n")
        head = get(at(s, "/healthz"), method="HEAD")
        assert (head.status, head.body) == (503, b"")
        assert (get(at(s, "/readyz")).status, get(s.url).status) == (200, 200)  # others unmoved
        live[0] = True
        assert get(at(s, "/healthz")).status == 200


def limited(metrics: MonitorMetrics, **limits: Any) -> MetricsServer:
    ready = limits.pop("ready", lambda: True)
    config = MetricsConfig(port=0)
    return MetricsServer(metrics.registry, ready, config, limits=ConnectionLimits(**limits))


def dropped(s: MetricsServer, reason: str) -> float:
    """``stiffness_metrics_connections_dropped_total{reason=...}`` from a real scrape."""
    text = get(s.url).body.decode()
    series = rf'stiffness_metrics_connections_dropped_total\{{reason="{reason}"\}}'
    found = re.search(rf"^{series} (\S+)$", text, re.MULTILINE)
    assert found is not None, text
    return float(found.group(1))


def closed_by_server(sock: socket.socket) -> bytes:
    """What the server sent before it closed (b"" for nothing); raises if it stays open."""
    received = b""
    while chunk := sock.recv(4096):
        received += chunk
    return received


def test_a_client_trickling_its_request_is_cut_off_at_the_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One byte every 0.2 s never trips a per-read timeout; the whole-request deadline does."""
    request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n" + b"X-Slow: 1\r\n" * 100 + b"\r\n"
    caplog.set_level(logging.WARNING, logger="monitor.metrics_server")
    with limited(MonitorMetrics(), request_deadline=1.5) as s:
        client = socket.create_connection(("127.0.0.1", s.port), timeout=10)
        with client:
            started, sent = time.monotonic(), 0
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                while sent < len(request) and time.monotonic() - started < 30:
                    client.send(request[sent : sent + 1])
                    sent += 1
                    time.sleep(0.2)
            assert time.monotonic() - started >= 1.5
            assert sent < len(request) and closed_by_server(client) == b""
        assert dropped(s, "deadline") == 1
        assert get(at(s, "/healthz")).status == 200
    warnings = [r.getMessage() for r in caplog.records if r.name == "monitor.metrics_server"]
    assert len(warnings) == 1, warnings  # one line, however many follow within the minute
    assert "(deadline); more within a minute are only counted" in warnings[0]


def test_a_request_split_across_packets_is_served_once_complete() -> None:
    with server(MonitorMetrics()) as s:
        for parts, status in [
            ([b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"\r\n"], b"200"),
            ([b"POST /metrics HTTP/1.1\r\nContent-Length: 10\r\n\r\n01234", b"56789"], b"405"),
            ([b"GET /healthz HTTP/1.0\n", b"Host: x\n\n"], b"200"),  # bare line feeds
        ]:
            with socket.create_connection(("127.0.0.1", s.port), timeout=10) as client:
                for part in parts:
                    client.sendall(part)
                    time.sleep(0.3)  # the server must wait for the rest, not answer early
                assert closed_by_server(client).startswith(b"HTTP/1.0 " + status), parts


def test_too_many_connections_still_sending_close_the_oldest() -> None:
    with limited(MonitorMetrics(), pending=4) as s:
        silent = [socket.create_connection(("127.0.0.1", s.port), timeout=10) for _ in range(5)]
        try:
            assert closed_by_server(silent[0]) == b""  # the oldest made room for the fifth
            assert get(at(s, "/healthz")).status == 200  # and the next one for this probe
            assert dropped(s, "pending") == 2  # (this scrape found room: the probe had gone)
            silent[-1].settimeout(0.5)
            with pytest.raises(TimeoutError):
                silent[-1].recv(1)  # the newest is still open
        finally:
            for sock in silent:
                sock.close()


def test_when_every_worker_is_busy_a_request_gets_503_at_once() -> None:
    entered, release = threading.Semaphore(0), threading.Event()

    def slow_ready() -> bool:
        entered.release()
        return release.wait(30)

    with limited(MonitorMetrics(), workers=1, queued=1, ready=slow_ready) as s:
        replies: list[int] = []

        def ask(path: str) -> None:
            replies.append(get(at(s, path)).status)

        first = threading.Thread(target=ask, args=("/readyz",))
        first.start()
        assert entered.acquire(timeout=10)  # the one worker is held
        others = [threading.Thread(target=ask, args=("/readyz",)) for _ in range(2)]
        for thread in others:
            thread.start()
        try:
            for _ in range(300):  # up to 30 s: wait for the event, not for a fixed time
                if 503 in replies:
                    break
                time.sleep(0.1)
        finally:
            release.set()
        for thread in (first, *others):
            thread.join(30)
        assert sorted(replies) == [200, 200, 503]  # one queued, one refused
        assert dropped(s, "busy") == 1


def test_headers_that_never_end_get_431() -> None:
    with limited(MonitorMetrics(), max_request_bytes=4096) as s:
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as client:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                client.sendall(b"GET /healthz HTTP/1.1\r\n" + b"X: y\r\n" * 1000)
            assert closed_by_server(client).startswith(b"HTTP/1.0 431 ")
        assert dropped(s, "too-large") == 1


def test_stopping_closes_connections_still_sending_and_ends_every_thread() -> None:
    before = set(threading.enumerate())
    s = limited(MonitorMetrics(), workers=3).start()
    assert len(set(threading.enumerate()) - before) == 4  # the I/O thread and three workers
    silent = socket.create_connection(("127.0.0.1", s.port), timeout=10)
    with silent:
        assert get(at(s, "/healthz")).status == 200
        s.stop()
        assert closed_by_server(silent) == b""
    assert set(threading.enumerate()) - before == set()


@pytest.mark.parametrize(
    ("field", "value"),
    [("workers", 0), ("queued", 0), ("pending", 0), ("max_request_bytes", 0),
     ("request_deadline", 0.0), ("write_timeout", -1.0), ("request_deadline", math.nan)],
)  # fmt: skip
def test_connection_limits_are_checked_when_built(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=rf"^ConnectionLimits\.{field}: expected "):
        ConnectionLimits(**{field: value})
