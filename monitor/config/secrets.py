"""The exporter's secrets, read where the config names them: a basic-auth password file and a
TLS certificate with its key. Checked when the config is loaded, so ``check`` reports a bad
certificate or an empty password file before the daemon starts; the server uses the same
readers when it starts, so both agree on what is valid.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from monitor.config.quoting import short

#: Far beyond any password; the file is read no further (it could be a device or a log).
MAX_PASSWORD_BYTES = 4096


def read_password(path: Path) -> bytes:
    """The password file's content without its trailing newline (``echo pw > file`` adds one)."""
    name = short(str(path), 200)
    try:
        with path.open("rb") as handle:
            password = handle.read(MAX_PASSWORD_BYTES + 1).rstrip(b"\r\n")
    except OSError as error:
        raise ValueError(
            f"expected a readable password file, got {name} ({error.strerror})"
        ) from None
    if len(password) > MAX_PASSWORD_BYTES:
        raise ValueError(f"expected a password of at most {MAX_PASSWORD_BYTES} bytes in {name}")
    if not password:
        raise ValueError(f"expected a password in {name}, got an empty file")
    return password


def _no_passphrase() -> bytes:
    raise ValueError("the key is encrypted; give an unencrypted PEM key (mount it as a secret)")


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context for the PEM certificate (chain) and its key; TLS 1.2 or newer."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
        raise ValueError(
            f"expected tls_cert {short(str(cert), 200)} and tls_key {short(str(key), 200)} to "
            f"hold a PEM certificate and its matching, unencrypted private key, got {error}"
        ) from None
    return context
