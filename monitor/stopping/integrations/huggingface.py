"""Stop a Hugging Face ``Trainer`` when stiffness-monitor writes the run's stop file.

Usage::

    from monitor.stopping.integrations.huggingface import StiffnessStopCallback

    trainer = Trainer(..., callbacks=[StiffnessStopCallback("/checkpoints/run-a/STOP")])

The file is checked every ``check_every_n_steps`` optimizer steps (``on_step_end``) and after
every evaluation (``on_evaluate``); a stop sets ``control.should_training_stop``, and the
Trainer finishes the step, runs its end-of-training hooks and saves as configured.

The Trainer calls callbacks on every process, and a process that leaves the loop while the
others go on would leave them hanging in their next collective. So when torch.distributed is
initialised (torchrun, accelerate, DeepSpeed), rank 0 reads the file and the decision is
all-reduced (:func:`monitor.stopping.trainer.should_stop_distributed`): every rank stops at the same
step. ``state.global_step`` is identical on all ranks, so all of them join the same checks.

A stop file written before training started is ignored: it is the stop of an earlier run into
the same folder. With ``restore_best_weights=True``, when the stop comes the callback loads the
weights of the attempt's best checkpoint (a ``checkpoint-N`` folder: the stop file's
``best_checkpoint``, else the daemon's ``best_checkpoint.json`` beside the stop file) into the
model at the end of training, on every process, like Keras's ``restore_best_weights``.

For type checking the base class is ``object`` (see ``_CallbackBase``), so mypy checks this
module identically whether or not transformers is installed; framework objects are ``Any``.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from monitor.stopping.integrations.best import restore_best
from monitor.stopping.trainer import read_stop_distributed

log = logging.getLogger("monitor.integrations.huggingface")


def _load_callback_base() -> type:
    try:
        base: type = importlib.import_module("transformers").TrainerCallback
    except ImportError as exc:
        raise ImportError(
            "monitor.stopping.integrations.huggingface needs transformers: pip install transformers"
        ) from exc
    return base


if TYPE_CHECKING:
    _CallbackBase = object
else:
    _CallbackBase = _load_callback_base()


class StiffnessStopCallback(_CallbackBase):
    """Sets ``control.should_training_stop`` once the stop file exists, on every rank at once.

    After the stop, ``stop_info`` holds the stop file's content on rank 0 (None on the others)
    and ``stopped_at_step`` the global step at which the stop was seen.
    """

    def __init__(
        self,
        stop_file: str | os.PathLike[str],
        check_every_n_steps: int = 10,
        check_on_evaluate: bool = True,
        restore_best_weights: bool = False,
    ) -> None:
        if check_every_n_steps < 1:
            raise ValueError(f"expected check_every_n_steps >= 1, got {check_every_n_steps}")
        self.stop_file = stop_file
        self.check_every_n_steps = check_every_n_steps
        self.check_on_evaluate = check_on_evaluate
        self.restore_best_weights = restore_best_weights
        self.stop_info: dict[str, Any] | None = None
        self.stopped_at_step: int | None = None
        self.restored_from: str | None = None
        self._since = time.time()  # again at on_train_begin: older stop files are a past run's

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self._since = time.time()
        return control

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        model = kwargs.get("model")
        if self.restore_best_weights and self.stopped_at_step is not None and model is not None:
            self.restored_from = restore_best(model, self.stop_file, self.stop_info, self._since)
        return control

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if int(state.global_step) % self.check_every_n_steps == 0:
            self._check(state, control)
        return control

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.check_on_evaluate:
            self._check(state, control)
        return control

    def _check(self, state: Any, control: Any) -> None:
        if self.stopped_at_step is None:
            stop, info = read_stop_distributed(self.stop_file, since=self._since)
            if not stop:
                return
            self.stop_info = info
            self.stopped_at_step = int(state.global_step)
            if info is not None:
                log.warning(
                    "stopping at step %d: stop file %s (rule %s: %s)",
                    self.stopped_at_step,
                    self.stop_file,
                    info.get("rule", "?"),
                    info.get("reason", "no reason given"),
                )
        control.should_training_stop = True
