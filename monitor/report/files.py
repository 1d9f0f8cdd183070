"""Files a reader may open at any moment (a page, a PNG, the demo's config), written whole."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def atomic_write(path: Path, payload: bytes) -> None:
    """Write a new file beside ``path`` and rename it over ``path``: a reader (a browser, a
    web server) never sees half a page, and a symlink planted at either name is never
    followed (the temporary name is fresh, opened with O_EXCL and O_NOFOLLOW)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temporary, flags, 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
