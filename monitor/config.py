"""The one YAML config file: its schema, and errors that say where and what.

The key names are a contract (DESIGN §4): docs, examples, dashboards and scripts use them, so
sections may gain keys but never rename them. Unknown keys are errors, because a misspelt key
that is silently ignored is a setting the operator believes in but does not have. Relative
paths resolve against the config file's folder, so a config means the same thing whatever the
daemon's working directory.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from monitor.config_errors import describe_validation_error, read_yaml
from monitor.errors import ConfigError
from monitor.stiffness.inputs import EngineOptions

FACTORY_PATTERN = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"
RUN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
_BYTE_UNITS = {
    "": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip


def parse_bytes(value: int | str) -> int:
    """``8GiB``, ``512MB``, ``1e9`` or a plain integer, in bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 8GiB or 512MB")
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?(?:e[0-9]+)?)\s*([A-Za-z]*)\s*", str(value))
    if not match or match.group(2).lower() not in _BYTE_UNITS:
        raise ValueError(f"expected a size such as 8GiB or 512MB, got {value!r}")
    return int(float(match.group(1)) * _BYTE_UNITS[match.group(2).lower()])


def _base_dir(info: ValidationInfo) -> Path:
    context = info.context or {}
    return Path(context.get("base_dir", "."))


def _resolve(path: Path, info: ValidationInfo) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else (_base_dir(info) / path).resolve()


class Section(BaseModel):
    """Common settings: unknown keys are errors, values are immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(Section):
    factory: str | None = Field(None, pattern=FACTORY_PATTERN)
    kwargs: dict[str, Any] = Field(default_factory=dict)


CheckpointFormat = Literal[
    "auto", "state_dict", "lightning", "safetensors", "hf", "dcp", "torchscript", "export"
]


class CheckpointConfig(Section):
    format: CheckpointFormat = "auto"
    state_dict_key: str | None = None
    strict: bool = True
    allow_pickle: bool = False
    step_regex: str = r"step[_=-]?(\d+)"

    @field_validator("step_regex")
    @classmethod
    def _one_group(cls, value: str) -> str:
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"expected a regular expression, got {value!r} ({exc})") from exc
        if compiled.groups < 1:
            raise ValueError(f"expected a regular expression with one (\\d+) group, got {value!r}")
        return value


class ProbeConfig(Section):
    path: Path | None = None
    factory: str | None = Field(None, pattern=FACTORY_PATTERN)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    per_class: int = Field(50, ge=2)
    seed: int = 0
    classes: list[int] | None = None

    @field_validator("path")
    @classmethod
    def _resolve_path(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else _resolve(value, info)

    @model_validator(mode="after")
    def _exactly_one_source(self) -> ProbeConfig:
        if (self.path is None) == (self.factory is None):
            raise ValueError("expected exactly one of 'path' or 'factory'")
        return self


class StiffnessConfig(Section):
    mode: Literal["class", "pair"] = "class"
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda|cuda:\d+|mps)$")
    batch_size: int = Field(64, ge=1)
    precision: Literal["fp32", "tf32", "bf16"] = "fp32"
    memory_limit: int | None = None
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    min_grad_norm: float = Field(1e-10, ge=0)
    distance_bins: int = Field(20, ge=1)
    loss: Literal["cross_entropy"] = "cross_entropy"
    uncertainty: bool = False
    backend: Literal["auto", "hooks", "vmap", "loop"] = "auto"

    @field_validator("memory_limit", mode="before")
    @classmethod
    def _parse_memory(cls, value: int | str | None) -> int | None:
        if value is None:
            return None
        size = parse_bytes(value)
        if size <= 0:
            raise ValueError(f"expected a positive size, got {value!r}")
        return size

    def engine_options(self) -> EngineOptions:
        return EngineOptions(
            mode=self.mode,
            batch_size=self.batch_size,
            precision=self.precision,
            include=tuple(self.include),
            exclude=tuple(self.exclude),
            min_grad_norm=self.min_grad_norm,
            distance_bins=self.distance_bins,
            memory_limit=self.memory_limit,
            uncertainty=self.uncertainty,
            backend=self.backend,
        )


DEFAULT_PATTERNS = ("*.pt", "*.pth", "*.ckpt", "*.safetensors", "*.pt2")


class RunConfig(Section):
    name: str = Field(pattern=RUN_NAME_PATTERN)
    path: Path
    patterns: list[str] = Field(default_factory=lambda: list(DEFAULT_PATTERNS), min_length=1)

    @field_validator("path")
    @classmethod
    def _resolve_path(cls, value: Path, info: ValidationInfo) -> Path:
        return _resolve(value, info)


class WatchConfig(Section):
    observer: Literal["auto", "native", "polling"] = "auto"
    poll_interval: float = Field(5.0, gt=0)
    settle_seconds: float = Field(2.0, ge=0)
    backlog: Literal["all", "latest"] = "all"
    rescan_interval: float = Field(60.0, gt=0)
    ready_markers: list[str] = Field(default_factory=list)
    unfinished_markers: list[str] = Field(default_factory=lambda: ["*-unfinished"])
    heartbeat_interval: float = Field(300.0, gt=0)


class StopConfig(Section):
    file: str = "{run_dir}/STOP"
    on_stop: list[str] | None = Field(None, min_length=1)
    on_stop_timeout: float = Field(30.0, gt=0)

    @field_validator("file")
    @classmethod
    def _known_fields(cls, value: str) -> str:
        try:
            value.format(run_dir="d", run="r")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"expected a path template using only {{run_dir}} and {{run}}, got {value!r}"
            ) from exc
        return value


class MetricsConfig(Section):
    """The exporter (see ``metrics_server``): the files are checked here, so ``check`` sees a
    bad certificate or an empty password file before the daemon starts."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9108, ge=0, le=65535)
    per_class_limit: int = Field(20, ge=0)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    basic_auth_user: str | None = None
    basic_auth_password_file: Path | None = None

    @field_validator("basic_auth_user")
    @classmethod
    def _user(cls, value: str | None) -> str | None:
        if value is not None and (not value or ":" in value):
            raise ValueError(f"expected a non-empty user name without ':', got {value!r}")
        return value

    @field_validator("tls_cert", "tls_key", "basic_auth_password_file")
    @classmethod
    def _readable_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        path = _resolve(value, info)
        try:
            path.open("rb").close()
        except OSError as exc:
            raise ValueError(
                f"expected a readable file, got {str(path)!r} ({exc.strerror})"
            ) from None
        return path

    @model_validator(mode="after")
    def _complete(self) -> MetricsConfig:
        from monitor.metrics_server import read_password, tls_context

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
        return _resolve(value, info)


class LoggingConfig(Section):
    format: Literal["plain", "json"] = "plain"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class MonitorConfig(Section):
    """The whole file. ``source`` is the file it came from (set by ``load_config``)."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    probe: ProbeConfig
    stiffness: StiffnessConfig = Field(default_factory=StiffnessConfig)
    runs: list[RunConfig] = Field(default_factory=list)
    watch: WatchConfig = Field(default_factory=WatchConfig)
    rules: Path | list[dict[str, Any]] | None = None
    stop: StopConfig = Field(default_factory=StopConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    source: Path = Field(Path("<memory>"), exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _validate_absent_sections(cls, data: Any) -> Any:
        """Absent sections are validated as empty ones, so their default paths resolve too."""
        if isinstance(data, dict):
            sections = ("model", "checkpoint", "stiffness", "watch", "stop", "metrics", "store")
            data = {**{name: {} for name in sections}, "logging": {}, **data}
        return data

    @field_validator("rules")
    @classmethod
    def _resolve_rules(
        cls, value: Path | list[dict[str, Any]] | None, info: ValidationInfo
    ) -> Path | list[dict[str, Any]] | None:
        return _resolve(value, info) if isinstance(value, Path) else value

    @field_validator("runs")
    @classmethod
    def _unique_names(cls, runs: list[RunConfig]) -> list[RunConfig]:
        names = [run.name for run in runs]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"expected unique run names, got duplicates {duplicates}")
        return runs

    @property
    def base_dir(self) -> Path:
        return self.source.parent


def parse_config(data: Any, source: Path, text: str | None = None) -> MonitorConfig:
    """Validate already-parsed YAML; ``text`` lets errors point at line numbers."""
    if not isinstance(data, dict):
        found = "an empty file" if data is None else type(data).__name__
        raise ConfigError(f"{source}: expected a mapping of sections at the top level, got {found}")
    if "source" in data:
        raise ConfigError(f"{source}: source: unknown key (expected one of the config sections)")
    try:
        return MonitorConfig.model_validate(
            {**data, "source": source}, context={"base_dir": source.parent}
        )
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, source, text)) from None


def load_config(path: str | Path) -> MonitorConfig:
    """Read and validate a config file; every problem is reported in one ConfigError."""
    source = Path(path).expanduser().resolve()
    data, text = read_yaml(
        source,
        not_found=f"{source}: config file not found",
        unreadable=f"{source}: cannot read the config file ({{error}})",
    )
    return parse_config(data, source, text)
