"""What the demo prints: a line per evaluated checkpoint, then where the rules stopped the run
and what stopping cost.

An early stop is only worth having if the checkpoint it stops at is about as good as the best
one the run produced. So the summary sets the stop against the best saved checkpoint on the
*clean* test set (held out and never noisy, unlike the training labels), which the monitor
never sees: it is the honest judge of the stop, not an input to it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from monitor.demo.trainer import accuracy, build_mlp, split_digits
from monitor.stopping.trainer import read_stop
from monitor.store.store import Store, StoredDecision, StoredEvaluation, StoreError


class Progress:
    """Prints one line per evaluated checkpoint, read from the store (read-only)."""

    def __init__(self, store_path: Path, run: str, steps_in_epoch: int) -> None:
        self.store_path = store_path
        self.run = run
        self.steps_in_epoch = steps_in_epoch
        self.shown: set[int] = set()
        self.seen_at: dict[int, float] = {}

    def poll(self) -> int:
        """Print what is new; returns how many evaluations the store holds."""
        try:
            with Store(self.store_path, readonly=True) as store:
                evaluations = store.evaluations(self.run)
                for item in evaluations:
                    if item.id not in self.shown:
                        self._maybe_show(store, item)
                return len(evaluations)
        except StoreError:
            return 0  # not created yet: the daemon sets it up on start

    def _maybe_show(self, store: Store, item: StoredEvaluation) -> None:
        decisions = store.decisions(self.run, item.id)
        first_seen = self.seen_at.setdefault(item.id, time.monotonic())
        if not decisions and time.monotonic() - first_seen < 3.0:
            return  # the rules' verdicts land just after the result
        self.shown.add(item.id)
        print(self.line(item, decisions), flush=True)

    def line(self, item: StoredEvaluation, decisions: list[StoredDecision]) -> str:
        result = item.result
        cosine = result.get("cosine") or {}
        stops = [d.rule for d in decisions if d.stop]
        if stops:
            state = f"STOP ({stops[0]})"
        elif decisions:
            state = "go on: " + decisions[0].reason.split(".")[0][:60]
        else:
            state = "no verdict"
        epoch = (item.step or 0) // self.steps_in_epoch
        return (
            f"epoch {epoch:3d}  within-class {_num(cosine.get('within'))}  "
            f"between {_num(cosine.get('between'))}  probe loss {_num(result.get('probe_loss'))}"
            f"  accuracy {_num(result.get('probe_accuracy'))}  rules: {state}"
        )


def _num(value: Any) -> str:
    return "  n/a " if value is None else f"{float(value):6.3f}"


@dataclass(frozen=True)
class CheckpointScore:
    """One evaluated checkpoint, with its epoch and its clean test accuracy."""

    step: int
    epoch: int
    probe_accuracy: float | None
    test_accuracy: float


def score_checkpoints(store_path: Path, run: str) -> list[CheckpointScore]:
    """Every evaluated checkpoint of ``run`` that still exists, in step order."""
    data = split_digits()
    model = build_mlp()
    scores = []
    with Store(store_path, readonly=True) as store:
        evaluations = store.evaluations(run)
    for item in evaluations:
        path = Path(item.path)
        if item.step is None or not path.is_file():
            continue
        payload = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(payload["model_state_dict"])
        model.eval()
        scores.append(
            CheckpointScore(
                step=item.step,
                epoch=int(payload.get("epoch", 0)),
                probe_accuracy=item.probe_accuracy,
                test_accuracy=accuracy(model, data.test_inputs, data.test_targets),
            )
        )
    return scores


def _accuracy(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def summarise(
    store_path: Path, run: str, stop_file: Path, report: Path, epochs: int, trainer_saw_stop: bool
) -> str:
    """The summary lines: stop (or plainly no stop), accuracy there vs the best, the report.

    ``trainer_saw_stop``: the trainer said it ended because of the stop file (its log).
    """
    scores = score_checkpoints(store_path, run)
    with Store(store_path, readonly=True) as store:
        stop = store.stop_for(run)
    lines = ["", "summary"]
    trained = max((score.epoch for score in scores), default=0)
    if stop is None:
        lines.append(
            f"  the rules did NOT stop this run: it trained {trained} of {epochs} epochs and no "
            "stop file was written (try more --epochs, more --noise or a larger --lr)"
        )
    else:
        step = int(stop.payload.get("step") or 0)
        at = next((score for score in scores if score.step == step), None)
        epoch = "?" if at is None else str(at.epoch)
        lines.append(f"  stopped at epoch {epoch} (step {step}) by rule {stop.rule}")
        lines.append(f"    why: {stop.reason}")
        written = "" if read_stop(stop_file) is not None else " (now missing)"
        seen = "found" if trainer_saw_stop else "did NOT act on"
        lines.append(
            f"  the trainer {seen} the stop file {stop_file}{written} and ended after epoch "
            f"{trained} of {epochs}: {epochs - trained} epochs saved"
        )
        if at is not None:
            lines.append(
                f"  at the stop:      probe accuracy {_accuracy(at.probe_accuracy)}, "
                f"clean test accuracy {at.test_accuracy:.3f}"
            )
    if scores:
        best = max(scores, key=lambda score: (score.test_accuracy, -score.step))
        lines.append(
            f"  best checkpoint:  probe accuracy {_accuracy(best.probe_accuracy)}, clean test "
            f"accuracy {best.test_accuracy:.3f} (epoch {best.epoch}, of {len(scores)} saved)"
        )
    lines.append(f"  report: {report}")
    return "\n".join(lines)
