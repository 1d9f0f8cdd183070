"""The exporter's one HTTP(S) server: ``/metrics``, ``/healthz``, ``/readyz``, nothing else.

One server, so one port to open, scrape and probe. ``/metrics`` is prometheus-client's own
WSGI app (content negotiation, gzip, ``name[]`` filters); this module adds routing, readiness,
optional TLS and optional HTTP basic auth, with the standard library only.

- ``/healthz`` (liveness) answers 200 while the process serves; ``/readyz`` answers 200 once
  the model and probe are loaded and the runs are watched, 503 before. Both stay open when
  basic auth is on: they reveal one bit, and kubelet and Docker health checks cannot easily
  carry a password (putting it in a pod spec would spread the secret).
- Basic auth compares SHA-256 digests of user and password with ``hmac.compare_digest``, so
  the time taken tells nothing about either, not even their length. The password is read from
  ``metrics.basic_auth_password_file`` at start-up; the config never holds it.
- TLS handshakes run in the connection's own thread (not in ``accept``), so a client that
  stalls a handshake cannot block other scrapes; every connection has a timeout.
- Binding a non-loopback address without TLS or auth is allowed (containers must bind
  0.0.0.0 to be scraped) but logged as a warning, since anyone who can reach the port can read
  the metrics.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, make_wsgi_app

from monitor.config.secrets import read_password, tls_context
from monitor.errors import ConfigError

if TYPE_CHECKING:
    from monitor.config.schema import MetricsConfig

log = logging.getLogger("monitor.metrics_server")

REALM = "stiffness-monitor"
CONNECTION_TIMEOUT = 30.0  # seconds: a silent client holds one thread at most this long
SHUTDOWN_POLL = 0.2  # seconds: how long ``stop`` may wait for the serving loop to notice
StartResponse = Callable[..., Any]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Handler(WSGIRequestHandler):
    """Quiet (a request log line per scrape would drown the daemon's log), with a timeout."""

    timeout = CONNECTION_TIMEOUT

    def setup(self) -> None:
        self.request.settimeout(self.timeout)
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    tls: ssl.SSLContext | None = None

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        if self.tls is not None:
            connection = self.tls.wrap_socket(
                connection, server_side=True, do_handshake_on_connect=False
            )
        return connection, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that speaks plain HTTP to HTTPS, or hangs up: one debug line, no trace."""
        log.debug("metrics connection from %s failed", client_address, exc_info=True)


class MetricsServer:
    """Serves a registry; ``ready`` is asked on every ``/readyz``."""

    def __init__(
        self, registry: CollectorRegistry, ready: Callable[[], bool], config: MetricsConfig
    ) -> None:
        self.config = config
        self._ready = ready
        self._metrics_app = make_wsgi_app(registry)
        self._credentials: tuple[bytes, bytes] | None = None
        tls: ssl.SSLContext | None = None
        try:
            if config.basic_auth_user is not None and config.basic_auth_password_file is not None:
                password = read_password(config.basic_auth_password_file)
                self._credentials = (_digest(config.basic_auth_user.encode()), _digest(password))
            if config.tls_cert is not None and config.tls_key is not None:
                tls = tls_context(config.tls_cert, config.tls_key)
        except ValueError as error:  # the files changed since the config was validated
            raise ConfigError(f"metrics: {error}") from None
        family = socket.getaddrinfo(config.host, config.port, type=socket.SOCK_STREAM)[0][0]
        server_class = type("MetricsHTTPServer", (_Server,), {"address_family": family})
        self.server: _Server = server_class((config.host, config.port), _Handler)
        self.server.tls = tls
        self.server.set_app(self._app)
        self._thread = threading.Thread(
            target=self.server.serve_forever,
            kwargs={"poll_interval": SHUTDOWN_POLL},
            name="metrics-server",
            daemon=True,
        )
        absent = [name for name, on in (("TLS", tls), ("basic auth", self._credentials)) if not on]
        if absent and not is_loopback(config.host):
            missing = " or ".join(absent)
            log.warning(
                "metrics server binds %s without %s: anyone who can reach port %d can read it",
                config.host, missing, self.port,
            )  # fmt: skip

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        scheme = "https" if self.server.tls is not None else "http"
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"{scheme}://{host}:{self.port}/metrics"

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            return _reply(start_response, "405 Method Not Allowed", b"use GET\n",
                          [("Allow", "GET, HEAD")])  # fmt: skip
        if path == "/healthz":
            return _reply(start_response, "200 OK", b"ok\n", head=method == "HEAD")
        if path == "/readyz":
            if self._ready():
                return _reply(start_response, "200 OK", b"ready\n", head=method == "HEAD")
            return _reply(start_response, "503 Service Unavailable", b"not ready\n",
                          head=method == "HEAD")  # fmt: skip
        if not self._authorized(environ.get("HTTP_AUTHORIZATION", "")):
            challenge = f'Basic realm="{REALM}", charset="UTF-8"'
            return _reply(start_response, "401 Unauthorized", b"unauthorized\n",
                          [("WWW-Authenticate", challenge)])  # fmt: skip
        if path != "/metrics":
            return _reply(start_response, "404 Not Found",
                          b"not found: try /metrics, /healthz or /readyz\n")  # fmt: skip
        if method == "HEAD":
            return _reply(start_response, "200 OK", b"", head=True)
        return list(self._metrics_app(environ, start_response))

    def _authorized(self, header: str) -> bool:
        if self._credentials is None:
            return True
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, colon, password = base64.b64decode(encoded.strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        user_ok = hmac.compare_digest(_digest(user), self._credentials[0])
        password_ok = hmac.compare_digest(_digest(password), self._credentials[1])
        return bool(colon) and user_ok and password_ok


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def _reply(
    start_response: StartResponse,
    status: str,
    body: bytes,
    headers: list[tuple[str, str]] | None = None,
    head: bool = False,
) -> list[bytes]:
    start_response(
        status,
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
         *(headers or [])],
    )  # fmt: skip
    return [] if head else [body]
