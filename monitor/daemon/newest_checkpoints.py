"""``check``'s look at the real thing: the newest checkpoint of each run, loaded into the model.

A config can validate, the model build and the probe fit, and still every checkpoint fail
in the daemon: the factory builds a different width, the trainer saves a wrapper's keys, or a
format needs ``allow_pickle``. Loading the newest existing checkpoint the way the daemon will
(``read_checkpoint`` and ``load_weights``, with the config's ``checkpoint`` section) finds
that at deploy time. What the operator must fix (a mismatch of keys or shapes, a format or
pickle refusal) is a problem; a checkpoint that cannot be read yet (half written, vanished)
is a warning, since the daemon waits for it and retries.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from monitor.checkpoints.loading import load_weights
from monitor.checkpoints.reader import read_checkpoint
from monitor.config.schema import MonitorConfig, RunConfig
from monitor.errors import CheckpointError
from monitor.watching.candidates import Layout

#: Failures a later checkpoint would hit too: the config or the model must change.
CONFIG_REASONS = ("mismatch", "format", "pickle")


def _order(layout: Layout, path: Path) -> tuple[bool, int, int]:
    """Newest last: a named step orders by step, then by modification time."""
    step = layout.step_of(path)
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        mtime = 0
    return (step is not None, -1 if step is None else step, mtime)


def newest_checkpoint(run: RunConfig, config: MonitorConfig) -> Path | None:
    """The run's newest checkpoint by the watcher's own rules of what counts, or None."""
    markers = (*config.watch.unfinished_markers, *config.watch.ready_markers)
    layout = Layout(run.path, tuple(run.patterns), markers, config.checkpoint.step_regex)
    found = [path for path, _ in layout.walk(run.path, lambda path, error: None)]
    return max(found, key=lambda path: _order(layout, path), default=None)


def check_newest_checkpoints(
    config: MonitorConfig,
    model: nn.Module | None,
    check_output: Callable[[nn.Module], str | None],
    problems: list[str],
    warnings: list[str],
    notes: list[str],
) -> None:
    """Load each run's newest checkpoint into ``model`` (the factory's; None without one).

    ``check_output`` runs the probe through a module a checkpoint carries itself
    (TorchScript, ``torch.export``); the factory's model was checked already.
    """
    for index, run in enumerate(config.runs):
        where = f"{config.source}: runs[{index}] ({run.name})"
        if not run.path.is_dir():
            continue  # ``check`` warns about the missing folder itself
        path = newest_checkpoint(run, config)
        if path is None:
            notes.append(f"checkpoint  run {run.name}: none yet in {run.path}")
            continue
        try:
            loaded = read_checkpoint(path, config.checkpoint)
            if loaded.module is not None:
                problem = check_output(loaded.module)
                if problem:
                    problems.append(f"{where}: {path}: {problem}")
                    continue
            elif model is None:
                raise CheckpointError(
                    f"{path}: a {loaded.format} checkpoint holds weights only; set "
                    "model.factory in the config to build the model they belong to",
                    reason="format",
                )
            else:
                with torch.no_grad():
                    load_weights(model, loaded, strict=config.checkpoint.strict)
        except CheckpointError as error:
            if error.reason in CONFIG_REASONS:
                problems.append(f"{where}: the newest checkpoint does not load: {error}")
            else:
                warnings.append(
                    f"{where}: the newest checkpoint cannot be read yet ({error}); the daemon "
                    "retries it"
                )
            continue
        step = "no step" if loaded.step is None else f"step {loaded.step}"
        notes.append(f"checkpoint  run {run.name}: {path} ({loaded.format}, {step}) loads")
