"""Train one scenario, write its checkpoints as a trainer does, and evaluate each one with the
product's ``Evaluator`` (config, model factory, checkpoint loader, probe loader, engine).

The probe has a held-out half and a training half (``data``), and the gradient statistics
are on, so every checkpoint records val-val, train-val and train-train stiffness, the loss and
accuracy of each split, gradient disparity, GSNR and the opposing share. The history keeps
the part of the ``evaluate --json`` object that rules can read (class matrices dropped, the
per-example gradient norms summarised per split and class, the suspect-label list reduced to
how many of its entries are truly mislabelled) plus the accuracy on the clean test split,
which no rule sees.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.signal_quality import data
from bench.signal_quality.scenarios import Scenario
from monitor.config.schema import parse_config
from monitor.evaluation.evaluator import Evaluator
from monitor.probe.sampling import load_probe

#: Fields of the stored evaluation that the benchmark keeps (all a rule can read, see
#: ``monitor.rules.readings``), minus the bulky ones inside ``cosine``.
KEPT = ("step", "mode", "classes", "probe_loss", "probe_accuracy", "train_probe_loss",
        "train_probe_accuracy", "uncertainty", "counts")  # fmt: skip
COSINE_KEPT = ("within", "between", "within_pooled", "between_pooled", "per_class")
STATISTICS_KEPT = ("gradient_disparity", "gsnr", "gsnr_median", "gsnr_parameters",
                   "opposing_share", "examples", "halves")  # fmt: skip
#: Probe examples per class and split that the evaluator samples (``probe.per_class``).
PER_CLASS = 40
FACTORIES = {
    "mlp": "bench.signal_quality.models:build_mlp",
    "cnn": "bench.signal_quality.models:build_cnn",
}


def load_task(scenario: Scenario) -> data.Splits:
    loader = data.digits if scenario.task == "digits" else data.overlap
    return loader(scenario.noise, scenario.seed, scenario.noise_kind)


def model_kwargs(scenario: Scenario, splits: data.Splits) -> dict[str, Any]:
    if scenario.arch == "cnn":
        return {"classes": splits.classes}
    kwargs = {"inputs": int(splits.train_x.shape[1]), "classes": splits.classes}
    return kwargs | ({"hidden": 256} if scenario.task == "overlap" else {})


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def norm_summary(
    evaluation: dict[str, Any], splits: data.Splits, source: tuple[int, ...]
) -> dict[str, Any]:
    """Mean per-example gradient norm per split and per class, and of the training half's
    mislabelled and correctly labelled examples apart (the benchmark knows which is which).

    ``source``: the probe-file position of each sampled example, in the order the result's
    ``gradient_norms`` follow (the sample's order: split, class, file position)."""
    norms = evaluation.get("gradient_norms") or []
    labels = [int(splits.probe_y[i]) for i in source]
    is_train = [bool(splits.probe_is_train[i]) for i in source]
    wrong = [bool(splits.probe_mislabelled[i]) for i in source]

    def pick(keep: Any) -> list[float]:
        return [n for i, n in enumerate(norms) if n is not None and keep(i)]

    summary: dict[str, Any] = {}
    for name, flag in (("train", True), ("val", False)):
        summary[name] = _mean(pick(lambda i, f=flag: is_train[i] == f))
        summary[f"{name}_per_class"] = [
            _mean(pick(lambda i, f=flag, c=c: is_train[i] == f and labels[i] == c))
            for c in range(splits.classes)
        ]
    summary["train_mislabelled"] = _mean(pick(lambda i: wrong[i]))
    summary["train_clean"] = _mean(pick(lambda i: is_train[i] and not wrong[i]))
    return summary


def trim(
    evaluation: dict[str, Any], splits: data.Splits, source: tuple[int, ...]
) -> dict[str, Any]:
    """The rule-readable part of an ``evaluate --json`` object, plus the norm summary."""
    kept = {key: evaluation.get(key) for key in KEPT}
    kept["cosine"] = {key: evaluation["cosine"].get(key) for key in COSINE_KEPT}
    kept["pair_sets"] = {
        name: {"cosine": {key: node["cosine"].get(key) for key in COSINE_KEPT}}
        for name, node in (evaluation.get("pair_sets") or {}).items()
    }
    statistics = evaluation.get("statistics")
    if statistics is not None:
        kept["statistics"] = {key: statistics.get(key) for key in STATISTICS_KEPT}
        suspects = [int(s["index"]) for s in statistics.get("suspect_labels") or []]
        wrong = splits.probe_mislabelled.tolist()
        kept["statistics"]["suspects"] = len(suspects)
        kept["statistics"]["suspects_mislabelled"] = sum(wrong[i] for i in suspects)
    kept["gradient_norms"] = norm_summary(evaluation, splits, source)
    return kept


def _evaluator(scenario: Scenario, splits: data.Splits, folder: Path) -> Evaluator:
    probe = folder / "probe.pt"
    torch.save(
        {"inputs": splits.probe_x, "targets": splits.probe_y, "is_train": splits.probe_is_train},
        probe,
    )
    # 40 per class and split: all of the held-out half, and a seeded sample of the training
    # half's 100 (overlap) or 75 (digits) per label. The cached round-two histories were
    # made so; a larger training half is untried.
    per_class = PER_CLASS
    raw = {
        "model": {"factory": FACTORIES[scenario.arch], "kwargs": model_kwargs(scenario, splits)},
        "probe": {"path": "probe.pt", "per_class": per_class, "seed": 0},
        "stiffness": {"mode": "class", "device": "cpu", "batch_size": 256, "uncertainty": True,
                      "statistics": True},
    }  # fmt: skip
    return Evaluator(parse_config(raw, folder / "config.yaml"), torch.device("cpu"))


def _save(model: nn.Module, step: int, epoch: int, folder: Path) -> Path:
    """Temporary file, then rename: how the example trainer (and careful trainers) write."""
    final = folder / f"step_{step}.pt"
    temporary = final.with_suffix(".pt.tmp")
    torch.save(
        {"model_state_dict": model.state_dict(), "global_step": step, "epoch": epoch}, temporary
    )
    os.replace(temporary, final)
    return final


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = (model(x).argmax(dim=1) == y).float().mean()
    model.train()
    return float(correct)


def run_scenario(scenario: Scenario, epochs: int | None = None) -> dict[str, Any]:
    """Train ``scenario`` (for ``epochs``, default its own), evaluating every epoch's checkpoint."""
    from bench.signal_quality import models

    started = time.perf_counter()
    splits = load_task(scenario)
    torch.manual_seed(scenario.seed)
    build = models.build_cnn if scenario.arch == "cnn" else models.build_mlp
    model = build(**model_kwargs(scenario, splits))
    if scenario.optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(
            model.parameters(), lr=scenario.lr, momentum=0.9
        )
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=scenario.lr)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(scenario.seed)
    checkpoints: list[dict[str, Any]] = []
    evaluating = 0.0
    with tempfile.TemporaryDirectory(prefix="signal-quality-") as tmp:
        folder = Path(tmp)
        evaluator = _evaluator(scenario, splits, folder)
        # The result's per-example values follow the probe as sampled (split, class, file
        # position), not the class-sorted copy the Evaluator keeps for class mode.
        source = load_probe(evaluator.config.probe).source_indices
        step = 0
        for epoch in range(1, (epochs or scenario.epochs) + 1):
            order = torch.randperm(len(splits.train_y), generator=generator)
            total, batches = 0.0, 0
            for start in range(0, len(order), scenario.batch_size):
                batch = order[start : start + scenario.batch_size]
                optimizer.zero_grad()
                loss = loss_fn(model(splits.train_x[batch]), splits.train_y[batch])
                loss.backward()
                optimizer.step()
                total, batches, step = total + loss.item(), batches + 1, step + 1
            path = _save(model, step, epoch, folder)
            tick = time.perf_counter()
            evaluation = evaluator.evaluate(path, run=scenario.name).to_dict()
            evaluating += time.perf_counter() - tick
            path.unlink()
            checkpoints.append({
                "step": step,
                "epoch": epoch,
                "train_loss": total / batches,
                "train_accuracy": accuracy(model, splits.train_x, splits.train_y),
                "test_accuracy": accuracy(model, splits.test_x, splits.test_y),
                "evaluation": trim(evaluation, splits, source),
            })  # fmt: skip
    return {
        "scenario": scenario.to_dict(),
        "noisy_labels": splits.noisy,
        "probe_mislabelled": int(splits.probe_mislabelled.sum()),
        "train_size": len(splits.train_y),
        "seconds": {"total": time.perf_counter() - started, "evaluation": evaluating},
        "checkpoints": checkpoints,
    }


def cache_path(cache: Path, scenario: Scenario) -> Path:
    return cache / f"{scenario.name}.json"


def write_history(path: Path, history: dict[str, Any]) -> None:
    """Atomic, and refuses to write through a symlink (a cache is still a file we own)."""
    if path.is_symlink():
        raise OSError(f"{path}: refusing to write through a symlink")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(history, indent=None, allow_nan=False) + "\n")
    os.replace(temporary, path)
