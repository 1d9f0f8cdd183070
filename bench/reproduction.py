"""Regenerate the figures of docs/reproduction.md: Fort et al. 2019 on scikit-learn's digits.

    python bench/reproduction.py [--out docs/figures] [--seeds 3] [--quick]

CPU only, under a minute on two cores (25 s measured 2026-11-24). Trains the demo MLP
(monitor.demo.trainer: 64-64-64-10, SGD with momentum 0.9, batch 32) in this process and
measures stiffness with the package's engine after every epoch, in pair mode, on a fixed
probe: 20 held-out examples per class (clean labels) and 20 training examples per class
(with the labels the model is trained on).
Prints the numbers the document quotes and writes them to OUT/reproduction.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
import yaml
from torch import nn

from monitor.config.schema import load_config
from monitor.demo.trainer import build_mlp, split_digits
from monitor.evaluation.evaluator import Evaluator
from monitor.stiffness import compute_stiffness

DPI = 80
Record = dict[str, Any]


def evaluator(noise: float, folder: Path, per_class: int = 20) -> Evaluator:
    """The engine set up as the daemon would be, from a config the way a user writes it."""
    config = {
        "model": {"factory": "monitor.demo.trainer:build_mlp"},
        "probe": {
            "factory": "monitor.demo.trainer:probe",
            "kwargs": {"noise": noise},
            "per_class": per_class,
        },
        "stiffness": {"mode": "pair", "device": "cpu", "batch_size": 256, "distance_bins": 12},
    }
    path = folder / f"config-{noise}.yaml"
    path.write_text(yaml.safe_dump(config))
    return Evaluator(load_config(path))


def train(
    noise: float, lr: float, epochs: int, seed: int, measure: Evaluator, every: int = 1
) -> list[Record]:
    """Train and measure every ``every`` epochs, at initialisation (epoch 0) and at the end."""
    torch.manual_seed(seed)
    data = split_digits(noise, seed)
    model = build_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    records = []
    for epoch in range(epochs + 1):
        if epoch:
            model.train()
            for batch in torch.split(torch.randperm(len(data.train_targets)), 32):
                optimizer.zero_grad()
                loss_fn(model(data.train_inputs[batch]), data.train_targets[batch]).backward()
                optimizer.step()
        if epoch % every and epoch != epochs:
            continue
        result = compute_stiffness(model, measure.probe, measure.options).to_dict()
        with torch.no_grad():
            model.eval()
            logits = model(data.test_inputs)
            fit = model(data.train_inputs).argmax(1) == data.train_targets
        records.append(
            {
                "epoch": epoch,
                "result": result,
                "test_loss": float(loss_fn(logits, data.test_targets)),
                "test_accuracy": float((logits.argmax(1) == data.test_targets).float().mean()),
                "train_accuracy": float(fit.float().mean()),
            }
        )
    return records


def series(runs: list[list[Record]], pick: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation over seeds of ``pick(record)`` per measured epoch."""
    values = np.array([[np.nan if (v := pick(r)) is None else v for r in run] for run in runs])
    return values.mean(0), values.std(0)


def epochs_of(runs: list[list[Record]]) -> np.ndarray:
    return np.array([record["epoch"] for record in runs[0]])


def half_length(distance: dict[str, Any]) -> float | None:
    """Where within-class stiffness has fallen to half its value in the nearest bin: a
    stand-in for the critical length when stiffness never reaches zero (see the doc)."""
    edges = np.array(distance["edges"])
    centres = (edges[:-1] + edges[1:]) / 2
    curve = np.array([np.nan if v is None else v for v in distance["within"]])
    keep = np.isfinite(curve)
    centres, curve = centres[keep], curve[keep]
    below = np.nonzero(curve < curve[0] / 2)[0]
    if len(below) == 0:
        return None
    i = int(below[0])
    x0, x1, y0, y1 = centres[i - 1], centres[i], curve[i - 1], curve[i]
    return float(x0 + (curve[0] / 2 - y0) * (x1 - x0) / (y1 - y0))


def band(axes: Any, runs: list[list[Record]], pick: Any, label: str, colour: str) -> None:
    mean, spread = series(runs, pick)
    epochs = epochs_of(runs)
    axes.plot(epochs, mean, color=colour, label=label)
    axes.fill_between(epochs, mean - spread, mean + spread, color=colour, alpha=0.2)


def within(record: Record, *keys: str) -> float | None:
    value: Any = record["result"]
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def heatmaps(records: list[Record], epochs: list[int], keys: tuple[str, ...], path: Path) -> None:
    by_epoch = {record["epoch"]: record for record in records}
    figure, axes_row = plt.subplots(1, len(epochs), figsize=(3 * len(epochs) + 1, 3.2),
                                    layout="constrained")  # fmt: skip
    for axes, epoch in zip(axes_row, epochs, strict=True):
        matrix = within(by_epoch[epoch], *keys, "matrix")
        image = axes.imshow(np.array(matrix, dtype=float), cmap="RdBu_r", vmin=-1, vmax=1)
        axes.set(title=f"epoch {epoch}", xlabel="class of x2", ylabel="class of x1")
    figure.colorbar(image, ax=list(axes_row), shrink=0.8, label="cosine stiffness")
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/figures"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one seed, fewer epochs")
    args = parser.parse_args()
    seeds = range(1 if args.quick else args.seeds)
    scale = 0.3 if args.quick else 1.0
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    numbers: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        clean, noisy, shuffled = (evaluator(n, Path(folder)) for n in (0.0, 0.4, 1.0))

        # 1. Within- above between-class stiffness, clean labels.
        epochs = int(30 * scale)
        runs = [train(0.0, 0.05, epochs, seed, clean) for seed in seeds]
        figure, axes = plt.subplots(figsize=(6, 3.6), layout="constrained")
        band(axes, runs, lambda r: within(r, "cosine", "within"), "within-class", "tab:blue")
        band(axes, runs, lambda r: within(r, "cosine", "between"), "between-class", "tab:orange")
        axes.axhline(0, color="grey", linewidth=0.8)
        axes.set(title="clean labels, lr 0.05 (val-val pairs)", xlabel="epoch",
                 ylabel="cosine stiffness")  # fmt: skip
        axes.legend()
        figure.savefig(args.out / "within-between.png", dpi=DPI)
        plt.close(figure)
        heatmaps(runs[0], [0, 1, epochs // 3, epochs], ("cosine",), args.out / "classes.png")
        numbers["clean"] = {
            "epochs": [0, 1, epochs],
            "within": series(runs, lambda r: within(r, "cosine", "within"))[0][[0, 1, -1]],
            "between": series(runs, lambda r: within(r, "cosine", "between"))[0][[0, 1, -1]],
            "test_accuracy": series(runs, lambda r: r["test_accuracy"])[0][-1],
        }

        # 2. Random labels: measured on training pairs with the labels the model is fitted to.
        epochs = int(60 * scale)
        runs = [train(1.0, 0.05, epochs, seed, shuffled, every=3) for seed in seeds]
        tt = ("pair_sets", "train-train", "cosine")
        figure, axes = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
        band(axes[0], runs, lambda r: within(r, *tt, "within"), "within-class", "tab:blue")
        band(axes[0], runs, lambda r: within(r, *tt, "between"), "between-class", "tab:orange")
        axes[0].axhline(0, color="grey", linewidth=0.8)
        axes[0].set(title="random labels (train-train pairs, random classes)", xlabel="epoch",
                    ylabel="cosine stiffness")  # fmt: skip
        axes[0].legend()
        band(axes[1], runs, lambda r: r["train_accuracy"], "training accuracy (random labels)",
             "tab:green")  # fmt: skip
        axes[1].set(title="memorisation", xlabel="epoch", ylabel="accuracy")
        axes[1].legend()
        figure.savefig(args.out / "random-labels.png", dpi=DPI)
        plt.close(figure)
        heatmaps(runs[0], [0, epochs], tt, args.out / "random-labels-classes.png")
        numbers["random"] = {
            "epochs": [0, epochs],
            "between": series(runs, lambda r: within(r, *tt, "between"))[0][[0, -1]],
            "within": series(runs, lambda r: within(r, *tt, "within"))[0][[0, -1]],
            "train_accuracy": series(runs, lambda r: r["train_accuracy"])[0][-1],
        }

        # 3. Learning rate and the critical length (clean labels, fixed number of epochs).
        epochs = int(20 * scale)
        figure, axes = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
        numbers["critical_length"] = {}
        for lr, colour in zip((0.005, 0.02, 0.05, 0.2), ("C0", "C1", "C2", "C3"), strict=True):
            runs = [train(0.0, lr, epochs, seed, clean, every=4) for seed in seeds]
            last = [run[-1]["result"]["distance"] for run in runs]
            edges = np.array(last[0]["edges"])
            centres = (edges[:-1] + edges[1:]) / 2
            curve = np.nanmean([[np.nan if v is None else v for v in d["within"]] for d in last], 0)
            axes[0].plot(centres, curve, color=colour, marker="o", markersize=3, label=f"lr {lr}")
            band(axes[1], runs, lambda r: half_length(r["result"]["distance"]), f"lr {lr}", colour)
            numbers["critical_length"][str(lr)] = {
                "critical_length_at_end": [d["critical_length"] for d in last],
                "half_length_at_end": [half_length(d) for d in last],
                "within_far": float(curve[np.isfinite(curve)][-1]),
                "test_accuracy": series(runs, lambda r: r["test_accuracy"])[0][-1],
            }
        axes[0].axhline(0, color="grey", linewidth=0.8)
        axes[0].set(title=f"within-class stiffness vs distance, epoch {epochs}",
                    xlabel="input distance 1 − cos(x1, x2)", ylabel="cosine stiffness")  # fmt: skip
        axes[0].legend()
        axes[1].set(title="half length: within-class falls to half",
                    xlabel="epoch", ylabel="input distance")  # fmt: skip
        axes[1].legend()
        figure.savefig(args.out / "critical-length.png", dpi=DPI)
        plt.close(figure)

        # 4. Around the onset of overfitting (40% label noise), a high and a low learning rate.
        figure, axes = plt.subplots(2, 2, figsize=(10, 6.4), layout="constrained", sharex="col")
        numbers["overfitting"] = {}
        for column, (lr, base, every) in enumerate(((0.1, 30, 1), (0.005, 90, 3))):
            epochs = int(base * scale)
            runs = [train(0.4, lr, epochs, seed, noisy, every) for seed in seeds]
            top, bottom = axes[0][column], axes[1][column]
            band(top, runs, lambda r: within(r, "cosine", "within"), "within (val-val)", "C0")
            band(top, runs, lambda r: within(r, "pair_sets", "train-val", "cosine", "within"),
                 "within (train-val)", "C4")  # fmt: skip
            band(bottom, runs, lambda r: r["test_loss"], "clean test loss", "C3")
            band(bottom, runs, lambda r: r["train_accuracy"], "train accuracy (noisy)", "C2")
            measured = epochs_of(runs)
            onset = int(measured[np.nanargmin(series(runs, lambda r: r["test_loss"])[0])])
            for ax in (top, bottom):
                ax.axvline(onset, color="grey", linestyle="--", label="test-loss minimum")
                ax.legend(fontsize="small")
            top.set(title=f"40% label noise, lr {lr}", ylabel="cosine stiffness")
            bottom.set(xlabel="epoch", ylabel="loss / accuracy")
            w = series(runs, lambda r: within(r, "cosine", "within"))[0]
            numbers["overfitting"][str(lr)] = {
                "onset_epoch": onset,
                "peak_within_epoch": int(measured[np.nanargmax(w)]),
                "within_at_onset": float(w[list(measured).index(onset)]),
                "within_peak": float(np.nanmax(w)),
                "within_end": float(w[-1]),
                "within_start": float(w[0]),
            }
        figure.savefig(args.out / "overfitting.png", dpi=DPI)
        plt.close(figure)
    text = json.dumps(numbers, indent=2, default=lambda v: np.asarray(v).tolist())
    (args.out / "reproduction.json").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
