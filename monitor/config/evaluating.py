"""The sections that say what is evaluated and how: ``model``, ``checkpoint``, ``probe`` and
``stiffness``. ``StiffnessConfig.engine_options`` is the one place the file's keys become the
engine's options.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from monitor.config.quoting import cut, short
from monitor.config.section import FACTORY_PATTERN, Section, parse_bytes, resolve_path
from monitor.stiffness.inputs import (
    DEFAULT_PROJECTION_DIM,
    DEFAULT_PROJECTION_TOTAL_DIM,
    EngineOptions,
    Projection,
)


class ModelConfig(Section):
    """The model the weights go into, and where its output keeps the logits: ``output``
    names a key, attribute or index of the output; ``output_fn`` a function picking them."""

    factory: str | None = Field(None, pattern=FACTORY_PATTERN)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    output: str | int | None = None
    output_fn: str | None = Field(None, pattern=FACTORY_PATTERN)

    @field_validator("output", mode="before")
    @classmethod
    def _key_or_index(cls, value: Any) -> Any:
        if value is not None and (isinstance(value, bool) or not isinstance(value, str | int)):
            raise ValueError(f"expected a key, attribute name or index, got {short(value)}")
        if value == "":
            raise ValueError("expected a key, attribute name or index, got ''")
        return value

    @model_validator(mode="after")
    def _one_way(self) -> ModelConfig:
        if self.output is not None and self.output_fn is not None:
            raise ValueError("expected at most one of 'output' or 'output_fn', got both")
        return self


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
        except (re.error, RecursionError, OverflowError) as exc:  # the last two: deep nesting
            raise ValueError(
                f"expected a regular expression, got {short(value)} ({cut(str(exc), 100)})"
            ) from None
        if compiled.groups < 1:
            raise ValueError(
                f"expected a regular expression with one (\\d+) group, got {short(value)}"
            )
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
        return None if value is None else resolve_path(value, info)

    @model_validator(mode="after")
    def _exactly_one_source(self) -> ProbeConfig:
        if (self.path is None) == (self.factory is None):
            raise ValueError("expected exactly one of 'path' or 'factory'")
        return self


class ProjectionConfig(Section):
    """``stiffness.projection``: per-example gradients projected to at most ``dim``
    dimensions per parameter, matrices drawn from ``seed``, outer-product gradients the
    ``kind`` way, and the whole row folded to at most ``total_dim`` values (null: not
    folded; docs/precision.md)."""

    dim: int = Field(DEFAULT_PROJECTION_DIM, ge=1)
    seed: int = Field(0, ge=0)
    kind: Literal["tensor_sketch", "khatri_rao", "kronecker"] = "tensor_sketch"
    total_dim: int | None = Field(DEFAULT_PROJECTION_TOTAL_DIM, ge=1)

    @field_validator("dim", "seed", "total_dim", mode="before")
    @classmethod
    def _whole(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None and info.field_name == "total_dim":
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {short(value)}")
        return value


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
    loss: Literal["cross_entropy", "causal_lm", "token_cross_entropy"] = "cross_entropy"
    uncertainty: bool = False
    backend: Literal["auto", "hooks", "vmap", "loop"] = "auto"
    statistics: bool = False
    projection: ProjectionConfig | None = None

    @field_validator("memory_limit", mode="before")
    @classmethod
    def _parse_memory(cls, value: int | str | None) -> int | None:
        if value is None:
            return None
        size = parse_bytes(value)
        if size <= 0:
            raise ValueError(f"expected a positive size, got {short(value)}")
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
            statistics=self.statistics,
            loss=self.loss,
            projection=(
                None
                if self.projection is None
                else Projection(
                    self.projection.dim,
                    self.projection.seed,
                    self.projection.kind,
                    self.projection.total_dim,
                )
            ),
        )
