"""The sections that say how the daemon runs: which ``runs`` it ``watch``es, where the
``stop`` file goes, how ``metrics`` are served (its certificate and password file are checked
here, so ``check`` sees them before the daemon starts), where ``tensorboard`` event files go,
the ``store`` and ``logging``.
"""

from __future__ import annotations

import os
import stat
import string
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from monitor.config.quoting import short
from monitor.config.secrets import read_password, tls_context
from monitor.config.section import RUN_NAME_PATTERN, Section, resolve_path

DEFAULT_PATTERNS = ("*.pt", "*.pth", "*.ckpt", "*.safetensors", "*.pt2")


class RunConfig(Section):
    name: str = Field(pattern=RUN_NAME_PATTERN)
    path: Path
    patterns: list[str] = Field(default_factory=lambda: list(DEFAULT_PATTERNS), min_length=1)

    @field_validator("path")
    @classmethod
    def _resolve_path(cls, value: Path, info: ValidationInfo) -> Path:
        return resolve_path(value, info)


class WatchConfig(Section):
    observer: Literal["auto", "native", "polling"] = "auto"
    poll_interval: float = Field(5.0, gt=0)
    settle_seconds: float = Field(2.0, ge=0)
    backlog: Literal["all", "latest"] = "all"
    rescan_interval: float = Field(60.0, gt=0)
    ready_markers: list[str] = Field(default_factory=list)
    unfinished_markers: list[str] = Field(default_factory=lambda: ["*-unfinished"])
    heartbeat_interval: float = Field(300.0, gt=0)
    corrupt_after: float = Field(30.0, gt=0)  # a failed file must stay unchanged this long


def path_template(value: str) -> str:
    """A path template naming only ``{run_dir}`` and ``{run}`` (``stop.file``,
    ``tensorboard.dir``), else a ValueError."""
    # Plain fields only: a format spec such as {run_dir:>2000000000} would build gigabytes.
    try:
        fields = [item[1:] for item in string.Formatter().parse(value) if item[1] is not None]
    except ValueError:  # an unmatched brace
        fields = [("", "", None)]
    if any(name not in ("run_dir", "run") or spec or conv for name, spec, conv in fields):
        raise ValueError(
            f"expected a path template using only {{run_dir}} and {{run}}, got {short(value)}"
        )
    return value


def expand_path_template(template: str, run: RunConfig, base_dir: Path) -> Path:
    """One run's path from a template; a relative result is relative to ``base_dir`` (the
    config file's folder). Not resolved: a symlink planted at the target must stay visible."""
    path = Path(template.format(run_dir=os.fspath(run.path), run=run.name)).expanduser()
    return path if path.is_absolute() else base_dir / path


class StopConfig(Section):
    file: str = "{run_dir}/STOP"
    best_file: str | None = "{run_dir}/best_checkpoint.json"  # None: not written
    on_stop: list[str] | None = Field(None, min_length=1)
    on_stop_timeout: float = Field(30.0, gt=0)

    @field_validator("file", "best_file")
    @classmethod
    def _known_fields(cls, value: str | None) -> str | None:
        return None if value is None else path_template(value)


class TensorBoardConfig(Section):
    """Event files of every evaluation (``monitor.exporter.tensorboard``); on by default, in a
    folder inside the run's, so a TensorBoard pointed at the run's folder shows them."""

    enabled: bool = True
    dir: str = "{run_dir}/stiffness-monitor"

    _known_fields = field_validator("dir")(path_template)


class MetricsConfig(Section):
    """The exporter (``monitor.exporter.server``): the files are checked here, so ``check``
    sees a bad certificate or an empty password file before the daemon starts."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9108, ge=0, le=65535)
    per_class_limit: int = Field(20, ge=0)
    stall_timeout: float = Field(1800.0, gt=0)  # /readyz fails when the loop stops turning
    liveness_grace: float = Field(300.0, ge=0)  # then /healthz too, this much later
    tls_cert: Path | None = None
    tls_key: Path | None = None
    basic_auth_user: str | None = None
    basic_auth_password_file: Path | None = None

    @field_validator("basic_auth_user")
    @classmethod
    def _user(cls, value: str | None) -> str | None:
        if value is not None and (not value or ":" in value):
            raise ValueError(f"expected a non-empty user name without ':', got {short(value)}")
        return value

    @field_validator("tls_cert", "tls_key", "basic_auth_password_file")
    @classmethod
    def _readable_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        path = resolve_path(value, info)
        try:  # a regular file: /dev/zero or a FIFO would be read (or waited on) forever
            if not stat.S_ISREG(path.stat().st_mode):
                raise ValueError(f"expected a regular file, got {short(str(path), 200)}")
            path.open("rb").close()
        except OSError as exc:
            raise ValueError(
                f"expected a readable file, got {short(str(path), 200)} ({exc.strerror})"
            ) from None
        return path

    @model_validator(mode="after")
    def _complete(self) -> MetricsConfig:
        pairs = (("tls_cert", "tls_key"), ("basic_auth_user", "basic_auth_password_file"))
        for first, second in pairs:
            if (getattr(self, first) is None) != (getattr(self, second) is None):
                given, absent = (first, second) if getattr(self, first) else (second, first)
                raise ValueError(f"expected {absent} together with {given}, got only {given}")
        if self.tls_cert is not None and self.tls_key is not None:
            tls_context(self.tls_cert, self.tls_key)
        if self.basic_auth_password_file is not None:
            read_password(self.basic_auth_password_file)
        return self


class StoreConfig(Section):
    path: Path = Field(Path(".stiffness-monitor/state.db"), validate_default=True)

    @field_validator("path")
    @classmethod
    def _resolve_path(cls, value: Path, info: ValidationInfo) -> Path:
        return resolve_path(value, info)


class LoggingConfig(Section):
    format: Literal["plain", "json"] = "plain"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
