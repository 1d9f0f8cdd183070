"""One checkpoint in, one evaluation out: the wiring of config, loading and the engine.

An ``Evaluator`` holds what stays the same from checkpoint to checkpoint (the model skeleton,
the probe on its device, the engine options), so the daemon builds it once per run and pays
only for reading weights and computing stiffness at each checkpoint. It computes nothing
itself: loading lives in ``monitor.checkpoints`` and ``monitor.probe``, the numbers in
``monitor.stiffness``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import torch

from monitor.checkpoints.loading import load_weights
from monitor.checkpoints.reader import LoadedCheckpoint, read_checkpoint
from monitor.config.factory import add_import_path, build_model, output_spec
from monitor.config.schema import MonitorConfig
from monitor.errors import CheckpointError, EngineError
from monitor.probe.sampling import load_probe
from monitor.stiffness import compute_stiffness
from monitor.stiffness.engine import class_ordered
from monitor.stiffness.inputs import EngineOptions, ProbeSet
from monitor.stiffness.outputs import OutputSpec
from monitor.stiffness.result import StiffnessResult


class Engine(Protocol):
    """What computes a result: ``compute_stiffness``, or a distributed engine called the
    same way."""

    def __call__(
        self,
        model: torch.nn.Module,
        probe: ProbeSet,
        options: EngineOptions,
        device: torch.device,
        *,
        output: OutputSpec = ...,
    ) -> StiffnessResult: ...


def resolve_device(spec: str) -> torch.device:
    """``auto`` picks the first CUDA device when there is one; an unavailable one is an error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise EngineError(f"stiffness.device is {spec!r} but no CUDA device is available")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise EngineError(
                f"stiffness.device is {spec!r} but only {torch.cuda.device_count()} "
                "CUDA device(s) exist"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise EngineError(f"stiffness.device is {spec!r} but MPS is not available")
    return device


def cap_device_memory(device: torch.device, limit: int | None) -> float | None:
    """Hold this process to ``limit`` bytes of the GPU (a sidecar shares it with the trainer).

    PyTorch's caching allocator then raises out-of-memory at the cap instead of taking the
    trainer's memory, and the engine's out-of-memory handling shrinks its chunks to fit.
    Returns the fraction set, or None when there is nothing to cap.
    """
    if limit is None or device.type != "cuda":
        return None
    if device.index is None:  # "cuda", as `auto` gives: torch's call needs the index
        device = torch.device("cuda", torch.cuda.current_device())
    total = torch.cuda.get_device_properties(device).total_memory
    fraction = min(1.0, limit / total)
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    return fraction


def _to(values: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if values is None else values.to(device)


@dataclass(frozen=True)
class Evaluation:
    """A checkpoint's identity together with what the engine measured on it."""

    checkpoint: str
    format: str
    step: int | None
    step_source: str
    result: StiffnessResult
    run: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The ``evaluate --json`` object (DESIGN §4): identity first, then the result."""
        return {
            "run": self.run,
            "step": self.step,
            "step_source": self.step_source,
            "checkpoint": self.checkpoint,
            "format": self.format,
            **self.result.to_dict(),
        }


class Evaluator:
    """Evaluates checkpoints of one model family against one probe set."""

    def __init__(
        self,
        config: MonitorConfig,
        device: torch.device | None = None,
        engine: Engine = compute_stiffness,
    ) -> None:
        self.config = config
        self._engine = engine
        self.device = device if device is not None else resolve_device(config.stiffness.device)
        self.options = config.stiffness.engine_options()
        cap_device_memory(self.device, self.options.memory_limit)
        add_import_path(config.base_dir)
        self.output = output_spec(config.model.output, config.model.output_fn)
        self._model: torch.nn.Module | None = None
        if config.model.factory is not None:
            factory, kwargs = config.model.factory, config.model.kwargs
            # A distributed engine may build it sharded across its ranks (``--split fsdp``).
            place = getattr(engine, "build_model", None)
            if place is not None:
                self._model = place(lambda: build_model(factory, kwargs), self.device)
            else:
                self._model = build_model(factory, kwargs).to(self.device)
        probe = load_probe(config.probe)
        # Class mode sorts the probe by split and class; sorted once here, on the host, the
        # engine finds it sorted and makes no copy of it on the device at each evaluation.
        # ``_order`` maps the per-example results back (position i was example order[i]).
        self._order: torch.Tensor | None = None
        if self.options.mode == "class":
            probe, self._order = class_ordered(probe)
        self.probe = ProbeSet(
            inputs=probe.inputs.to(self.device),
            targets=probe.targets.to(self.device),
            is_train=None if probe.is_train is None else probe.is_train.to(self.device),
            token_targets=_to(probe.token_targets, self.device),
            attention_mask=_to(probe.attention_mask, self.device),
            classes=probe.classes,
            source_indices=probe.source_indices,
            source=probe.source,
        )

    def _model_for(self, loaded: LoadedCheckpoint) -> torch.nn.Module:
        if loaded.module is not None:
            return loaded.module.to(self.device)
        if self._model is None:
            raise CheckpointError(
                f"{loaded.path}: a {loaded.format} checkpoint holds weights only; set "
                "model.factory in the config to build the model they belong to",
                reason="format",
            )
        return load_weights(self._model, loaded, strict=self.config.checkpoint.strict)

    def evaluate(self, path: str | Path, run: str | None = None) -> Evaluation:
        """Load one checkpoint's weights and measure stiffness on the probe."""
        started = time.perf_counter()
        loaded = read_checkpoint(path, self.config.checkpoint)
        model = self._model_for(loaded)
        loaded_at = time.perf_counter()
        result = self._engine(model, self.probe, self.options, self.device, output=self.output)
        if self._order is not None:  # per-example values in the probe source's order again
            norms: list[float | None] = [None] * len(result.gradient_norms)
            for position, example in enumerate(self._order.tolist()):
                norms[example] = result.gradient_norms[position]
            result = replace(result, gradient_norms=tuple(norms))
        timings = {
            **result.timings,
            "load": loaded_at - started,
            "engine": result.timings.get("total", 0.0),
            "total": time.perf_counter() - started,
        }
        result = replace(result, timings=timings)
        return Evaluation(
            checkpoint=str(loaded.path),
            format=loaded.format,
            step=loaded.step,
            step_source=loaded.step_source,
            result=result,
            run=run,
        )
