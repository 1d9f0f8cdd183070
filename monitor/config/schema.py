"""The one YAML config file: its schema, and errors that say where and what.

The key names are a contract (DESIGN §4): docs, examples, dashboards and scripts use them, so
sections may gain keys but never rename them. Unknown keys are errors, because a misspelt key
that is silently ignored is a setting the operator believes in but does not have. Relative
paths resolve against the config file's folder, so a config means the same thing whatever the
daemon's working directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from monitor.config.evaluating import (
    CheckpointConfig,
    CheckpointFormat,
    ModelConfig,
    ProbeConfig,
    StiffnessConfig,
)
from monitor.config.messages import describe_validation_error
from monitor.config.quoting import short
from monitor.config.reader import read_yaml
from monitor.config.running import (
    DEFAULT_PATTERNS,
    LoggingConfig,
    MetricsConfig,
    RunConfig,
    StopConfig,
    StoreConfig,
    TensorBoardConfig,
    WatchConfig,
    expand_path_template,
)
from monitor.config.section import Section, parse_bytes, resolve_path
from monitor.config.section import base_dir as config_folder
from monitor.errors import ConfigError

__all__ = [  # the whole file's model: every section is part of it
    "DEFAULT_PATTERNS",
    "CheckpointConfig",
    "CheckpointFormat",
    "LoggingConfig",
    "MetricsConfig",
    "ModelConfig",
    "MonitorConfig",
    "ProbeConfig",
    "RunConfig",
    "StiffnessConfig",
    "StopConfig",
    "StoreConfig",
    "TensorBoardConfig",
    "WatchConfig",
    "load_config",
    "parse_bytes",
    "parse_config",
]


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
    tensorboard: TensorBoardConfig = Field(default_factory=TensorBoardConfig)
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
        return resolve_path(value, info) if isinstance(value, Path) else value

    @field_validator("runs")
    @classmethod
    def _unique_names(cls, runs: list[RunConfig]) -> list[RunConfig]:
        names = [run.name for run in runs]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"expected unique run names, got duplicates {short(duplicates)}")
        return runs

    @field_validator("tensorboard")
    @classmethod
    def _own_folders(cls, value: TensorBoardConfig, info: ValidationInfo) -> TensorBoardConfig:
        """Two runs writing to one folder would show as one TensorBoard run, mixing steps."""
        folders: dict[Path, str] = {}
        for run in info.data.get("runs", []) if value.enabled else []:
            folder = expand_path_template(value.dir, run, config_folder(info))
            if folder in folders:
                raise ValueError(
                    f"expected one folder per run, got {short(str(folder), 200)} for runs "
                    f"{folders[folder]} and {run.name} (use {{run}} or {{run_dir}} in dir)"
                )
            folders[folder] = run.name
        return value

    @property
    def base_dir(self) -> Path:
        return self.source.parent

    def tensorboard_dir(self, run: RunConfig) -> Path:
        """Where ``run``'s TensorBoard event files go (``tensorboard.dir`` expanded)."""
        return expand_path_template(self.tensorboard.dir, run, self.base_dir)


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
        raise ConfigError(
            describe_validation_error(exc, source, text, model=MonitorConfig)
        ) from None


def load_config(path: str | Path) -> MonitorConfig:
    """Read and validate a config file; every problem is reported in one ConfigError."""
    source = Path(path).expanduser().resolve()
    data, text = read_yaml(
        source,
        not_found=f"{source}: config file not found",
        unreadable=f"{source}: cannot read the config file ({{error}})",
    )
    return parse_config(data, source, text)
