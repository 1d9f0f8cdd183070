"""Stop a Lightning ``Trainer`` when stiffness-monitor writes the run's stop file.

Usage::

    from monitor.stopping.integrations.lightning import StiffnessStopCallback

    trainer = Trainer(callbacks=[StiffnessStopCallback("/checkpoints/run-a/STOP")])

The file is checked every ``check_every_n_steps`` optimizer steps and at the end of every
validation loop (where Lightning's own ``EarlyStopping`` decides). Only global rank 0 reads it;
the decision is OR-reduced over all ranks with ``trainer.strategy.reduce_boolean_decision``, so
every rank sets ``trainer.should_stop`` at the same step and none is left waiting in a
collective. Lightning then ends training gracefully (respecting ``min_steps``/``min_epochs``),
running the usual end-of-training hooks and checkpoint callbacks.

A stop file written before training started is ignored: it is the stop of an earlier run into
the same folder. With ``restore_best_weights=True``, when the stop comes the callback loads the
weights of the attempt's best checkpoint (the stop file's ``best_checkpoint``, else the
daemon's ``best_checkpoint.json`` beside the stop file) into the module at the end of training,
on every rank, as Keras's ``EarlyStopping(restore_best_weights=True)`` does.

Works with ``lightning`` (``lightning.pytorch``) or the older ``pytorch_lightning`` package.
For type checking, the base class is ``object`` (see ``_CallbackBase``): mypy then checks this
module identically whether or not Lightning is installed, and the hook signatures below are
Lightning's, with framework objects typed as ``Any``.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from monitor.stopping.integrations.best import restore_best
from monitor.stopping.trainer import read_stop

log = logging.getLogger("monitor.integrations.lightning")


def _load_callback_base() -> type:
    for module in ("lightning.pytorch", "pytorch_lightning"):
        try:
            base: type = importlib.import_module(module).Callback
        except ImportError:
            continue
        return base
    raise ImportError(
        "monitor.stopping.integrations.lightning needs Lightning: pip install lightning "
        "(or the older pytorch-lightning)"
    )


if TYPE_CHECKING:
    _CallbackBase = object
else:
    _CallbackBase = _load_callback_base()


class StiffnessStopCallback(_CallbackBase):
    """Sets ``trainer.should_stop`` once the stop file exists (decided by rank 0 for all ranks).

    After the stop, ``stop_info`` holds the stop file's content on global rank 0 (None on the
    others) and ``stopped_at_step`` the global step at which the stop was seen.
    """

    def __init__(
        self,
        stop_file: str | os.PathLike[str],
        check_every_n_steps: int = 10,
        check_on_validation_end: bool = True,
        restore_best_weights: bool = False,
    ) -> None:
        if check_every_n_steps < 1:
            raise ValueError(f"expected check_every_n_steps >= 1, got {check_every_n_steps}")
        super().__init__()
        self.stop_file = stop_file
        self.check_every_n_steps = check_every_n_steps
        self.check_on_validation_end = check_on_validation_end
        self.restore_best_weights = restore_best_weights
        self.stop_info: dict[str, Any] | None = None
        self.stopped_at_step: int | None = None
        self.restored_from: str | None = None
        self._last_checked_step = -1
        self._since = time.time()  # again at on_train_start: older stop files are a past run's

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._since = time.time()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.restore_best_weights and self.stopped_at_step is not None:
            self.restored_from = restore_best(pl_module, self.stop_file, self.stop_info,
                                              self._since)  # fmt: skip

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = int(trainer.global_step)
        # global_step counts optimizer steps; with gradient accumulation several batches share
        # one. It is the same on every rank, so every rank takes part in the same checks.
        if step == self._last_checked_step or step % self.check_every_n_steps != 0:
            return
        self._last_checked_step = step
        self._check(trainer)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if self.check_on_validation_end and not trainer.sanity_checking:
            self._check(trainer)

    def _check(self, trainer: Any) -> None:
        if self.stopped_at_step is not None:
            trainer.should_stop = True
            return
        info = read_stop(self.stop_file, self._since) if trainer.is_global_zero else None
        decide = getattr(trainer.strategy, "reduce_boolean_decision", None)
        stop = bool(decide(info is not None, all=False)) if decide else info is not None
        if not stop:
            return
        self.stop_info = info
        self.stopped_at_step = int(trainer.global_step)
        trainer.should_stop = True
        if info is not None:
            log.warning(
                "stopping at step %d: stop file %s (rule %s: %s)",
                self.stopped_at_step,
                self.stop_file,
                info.get("rule", "?"),
                info.get("reason", "no reason given"),
            )
