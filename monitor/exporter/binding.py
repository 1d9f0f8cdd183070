"""Whether the metrics server can listen where the config says, checked by trying.

A taken port is the most common reason a second daemon (or one restarted too fast) dies at
start-up, and the operating system's "[Errno 98] Address already in use" names neither the
address nor the key to change. ``check`` binds the port and releases it at once; the server
turns the same failure into the same message (``bind_failure``), exit code 2.
"""

from __future__ import annotations

import errno
import socket

from monitor.errors import ConfigError


def address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_failure(host: str, port: int, error: OSError) -> ConfigError:
    """The error for a server that cannot listen on ``host:port``, naming the key to change."""
    where = address(host, port)
    reason = error.strerror or str(error)
    if isinstance(error, socket.gaierror) or error.errno == errno.EADDRNOTAVAIL:
        return ConfigError(
            f"metrics.host: cannot listen on {where} ({reason}); expected an address or "
            "name of this machine (127.0.0.1, 0.0.0.0, ::)"
        )
    if error.errno == errno.EADDRINUSE:
        return ConfigError(
            f"metrics.port: cannot listen on {where}: another process holds the port (a "
            "second daemon, or one still stopping?); stop it or set metrics.port to a free "
            "port (0 picks one)"
        )
    return ConfigError(
        f"metrics.port: cannot listen on {where} ({reason}); expected a port this process "
        "may bind (below 1024 needs privileges), or 0 to pick one"
    )


def try_bind(host: str, port: int) -> None:
    """Bind ``host:port`` as the server does (``SO_REUSEADDR``, the first address family the
    host resolves to) and release it; ``ConfigError`` from ``bind_failure`` if that fails."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as error:
        raise bind_failure(host, port, error) from None
