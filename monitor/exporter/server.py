"""The exporter's one HTTP(S) server: ``/metrics``, ``/healthz``, ``/readyz``, nothing else.

One server, so one port to open, scrape and probe. ``/metrics`` is prometheus-client's own
WSGI app (content negotiation, gzip, ``name[]`` filters); this module adds routing, readiness,
optional TLS and optional HTTP basic auth, with the standard library only.

- ``/healthz`` (liveness) answers 200 while the process serves and ``is_live`` (if given)
  says so, 503 otherwise; ``/readyz`` answers 200 while ``ready`` says so (the model and probe
  loaded, the runs watched), 503 otherwise. Both stay open when
  basic auth is on: they reveal one bit, and kubelet and Docker health checks cannot easily
  carry a password (putting it in a pod spec would spread the secret).
- Basic auth compares SHA-256 digests of user and password with ``hmac.compare_digest``, so
  the time taken tells nothing about either, not even their length. The password is read from
  ``metrics.basic_auth_password_file`` at start-up; the config never holds it.
- Connections are served by ``connections.ConnectionPool``: a fixed number of threads, a
  deadline for each whole request, TLS handshakes that never block ``accept`` or each other,
  so slow or silent clients can neither exhaust the process nor starve ``/healthz``.
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
from collections.abc import Callable, Iterable
from io import BytesIO
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, make_wsgi_app

from monitor.config.secrets import read_password, tls_context
from monitor.errors import ConfigError
from monitor.exporter.binding import bind_failure
from monitor.exporter.connections import ConnectionPool, DropCounter
from monitor.exporter.requests_in import ConnectionLimits, SocketWriter

if TYPE_CHECKING:
    from monitor.config.schema import MetricsConfig

log = logging.getLogger("monitor.metrics_server")

REALM = "stiffness-monitor"
StartResponse = Callable[..., Any]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Handler(WSGIRequestHandler):
    """Quiet (a request log line per scrape would drown the daemon's log). Its ``request`` is
    ``(request bytes, socket)``, as a datagram server's is: the pool has read the whole request
    before a worker runs, so the handler reads from memory and only writes to the socket."""

    def setup(self) -> None:
        assert isinstance(self.request, tuple)
        data, self.connection = self.request
        self.rfile = BytesIO(data)
        self.wfile = SocketWriter(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class _Server(WSGIServer):
    """Binds and holds the WSGI environ; the pool, not ``serve_forever``, serves."""

    request_queue_size = 128  # a burst of connects waits in the kernel, not in SYN retries
    tls: ssl.SSLContext | None = None

    def answer(self, sock: socket.socket, address: Any, data: bytes) -> None:
        _Handler((data, sock), address, self)


class MetricsServer:
    """Serves a registry. ``ready`` is asked on every ``/readyz``, ``is_live`` (default: always
    live) on every ``/healthz``; ``limits`` bounds what clients may hold (tests make it small).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        ready: Callable[[], bool],
        config: MetricsConfig,
        is_live: Callable[[], bool] | None = None,
        limits: ConnectionLimits | None = None,
    ) -> None:
        self.config = config
        self._registry = registry
        self._ready = ready
        self._live = is_live
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
        try:  # a taken port or unknown host: a ConfigError naming host:port and the key
            family = socket.getaddrinfo(config.host, config.port, type=socket.SOCK_STREAM)[0][0]
            server_class = type("MetricsHTTPServer", (_Server,), {"address_family": family})
            self.server: _Server = server_class((config.host, config.port), _Handler)
        except OSError as error:
            raise bind_failure(config.host, config.port, error) from None
        self.server.tls = tls
        self.server.set_app(self._app)
        self._pool = ConnectionPool(self.server.socket, self.server.answer,
                                    limits or ConnectionLimits(), tls)  # fmt: skip
        self._drops = DropCounter(self._pool)
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
        self._registry.register(self._drops)  # here, not in __init__: ``stop`` takes it off
        self._pool.start()
        return self

    def stop(self) -> None:
        self._pool.stop()
        self.server.server_close()
        self._registry.unregister(self._drops)

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
            if self._live is not None and not self._live():
                return _reply(start_response, "503 Service Unavailable", b"not live\n",
                              head=method == "HEAD")  # fmt: skip
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
