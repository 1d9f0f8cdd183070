"""What every config section shares: unknown keys are errors, values are frozen once
validated, and relative paths resolve against the config file's folder (so a config means the
same thing whatever the daemon's working directory). Also the formats of values that appear
in several sections.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationInfo

from monitor.config.quoting import short

FACTORY_PATTERN = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"
RUN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
_BYTE_UNITS = {
    "": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip


def parse_bytes(value: int | str) -> int:
    """``8GiB``, ``512MB``, ``1e9`` or a plain integer, in bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str):  # str() of a list from the file could be any size
        raise ValueError(f"expected a size such as 8GiB or 512MB, got {short(value)}")
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?(?:e[0-9]+)?)\s*([A-Za-z]*)\s*", value)
    if not match or match.group(2).lower() not in _BYTE_UNITS:
        raise ValueError(f"expected a size such as 8GiB or 512MB, got {short(value)}")
    size = float(match.group(1)) * _BYTE_UNITS[match.group(2).lower()]
    if size != size or size == float("inf"):  # 1e999 parses as infinity
        raise ValueError(f"expected a size such as 8GiB or 512MB, got {short(value)}")
    return int(size)


def base_dir(info: ValidationInfo) -> Path:
    context = info.context or {}
    return Path(context.get("base_dir", "."))


def resolve_path(path: Path, info: ValidationInfo) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else (base_dir(info) / path).resolve()


class Section(BaseModel):
    """Common settings: unknown keys are errors, values are immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)
