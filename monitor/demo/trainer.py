"""The demo's trainer: a small MLP on scikit-learn's bundled digits, with label noise.

It runs as its own process (``python -m monitor.demo.trainer``) because that is how the monitor
meets trainers in real life: a separate job that writes ``step_N.pt`` every epoch (a temporary
file renamed into place) and polls the stop file. The same module is the demo config's model
factory (``build_mlp``) and probe factory (``probe``), so the monitor measures exactly the
model the trainer trains, on examples the trainer never sees.

Data (fixed split, seed 0): 1797 digits; 700 held out (half the probe pool, half the clean
test set), the rest for training. Label noise replaces a share of the *training* labels with
random classes, deterministically from the seed, so the probe's training split carries the
same noisy labels the model is fitted to. Held-out labels are always clean.

scikit-learn is the ``demo`` extra and is imported only when the data is first needed.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from torch import nn

from monitor.extras import ExtraMissingError, require_demo_extra
from monitor.stopping.trainer import should_stop

HELD_OUT = 700  # examples never trained on: the first half is the probe pool, the rest test
NUM_CLASSES = 10


@dataclass(frozen=True)
class DigitsSplit:
    """Training examples (labels possibly noisy), the probe pool and the clean test set."""

    train_inputs: torch.Tensor
    train_targets: torch.Tensor
    clean_train_targets: torch.Tensor
    probe_inputs: torch.Tensor
    probe_targets: torch.Tensor
    test_inputs: torch.Tensor
    test_targets: torch.Tensor


@cache
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    require_demo_extra("sklearn")
    from sklearn.datasets import load_digits

    digits = load_digits()
    inputs = torch.tensor(digits.data, dtype=torch.float32) / 16.0  # pixel values 0..16
    return inputs, torch.tensor(digits.target, dtype=torch.int64)


def noisy_labels(targets: torch.Tensor, noise: float, seed: int) -> torch.Tensor:
    """Replace a ``noise`` share of labels by uniformly random classes (reproducibly)."""
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"label noise must be in [0, 1], got {noise}")
    generator = torch.Generator().manual_seed(10_000 + seed)
    flip = torch.rand(len(targets), generator=generator) < noise
    random = torch.randint(0, NUM_CLASSES, targets.shape, generator=generator)
    return torch.where(flip, random, targets)


def split_digits(noise: float = 0.0, seed: int = 0) -> DigitsSplit:
    """The fixed split (independent of ``seed``) with ``noise`` applied to training labels."""
    inputs, targets = _digits()
    order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(0))
    pool, test, train = order[: HELD_OUT // 2], order[HELD_OUT // 2 : HELD_OUT], order[HELD_OUT:]
    return DigitsSplit(
        train_inputs=inputs[train],
        train_targets=noisy_labels(targets[train], noise, seed),
        clean_train_targets=targets[train],
        probe_inputs=inputs[pool],
        probe_targets=targets[pool],
        test_inputs=inputs[test],
        test_targets=targets[test],
    )


def build_mlp(hidden: int = 64, num_classes: int = NUM_CLASSES) -> nn.Module:
    """The demo's model factory: 64 -> hidden -> hidden -> classes, ReLU."""
    return nn.Sequential(
        nn.Linear(64, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


def probe(
    noise: float = 0.0, seed: int = 0, train_split: bool = True
) -> dict[str, torch.Tensor | list[str]]:
    """The demo config's probe factory: held-out digits, plus (optionally) training examples
    with the labels the trainer uses, so train-val stiffness can be measured."""
    data = split_digits(noise, seed)
    if not train_split:
        return {"inputs": data.probe_inputs, "targets": data.probe_targets}
    inputs = torch.cat([data.probe_inputs, data.train_inputs])
    targets = torch.cat([data.probe_targets, data.train_targets])
    split = ["val"] * len(data.probe_targets) + ["train"] * len(data.train_targets)
    return {"inputs": inputs, "targets": targets, "split": split}


def steps_per_epoch(batch_size: int) -> int:
    """Optimizer steps in one epoch (the checkpoint's step is epochs times this)."""
    return math.ceil((len(_digits()[1]) - HELD_OUT) / batch_size)


def accuracy(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(inputs).argmax(dim=1) == targets).float().mean())


def save_checkpoint(model: nn.Module, folder: Path, step: int, epoch: int) -> Path:
    """``step_N.pt`` the way careful trainers write it: a temporary file, then a rename."""
    final = folder / f"step_{step}.pt"
    temporary = folder / f".step_{step}.pt.tmp"
    state = {"model_state_dict": model.state_dict(), "global_step": step, "epoch": epoch}
    torch.save(state, temporary)
    os.replace(temporary, final)
    return final


def _wait_or_stop(stop_file: Path, seconds: float) -> bool:
    """Sleep ``seconds`` (the rest of a slow epoch), polling the stop file; True if it came."""
    deadline = time.monotonic() + seconds
    while True:
        if should_stop(stop_file):
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(0.05, left))


def train(args: argparse.Namespace) -> int:
    """Train, checkpoint every epoch, stop when the stop file appears. Returns epochs done."""
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # a tiny MLP gains nothing from threads; leave cores to the monitor
    data = split_digits(args.noise, args.seed)
    model = build_mlp(args.hidden)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    args.out.mkdir(parents=True, exist_ok=True)
    stop_file: Path = args.stop_file or args.out / "STOP"
    step, count = 0, len(data.train_targets)
    for epoch in range(1, args.epochs + 1):
        started = time.monotonic()
        model.train()
        for batch in torch.split(torch.randperm(count), args.batch_size):
            optimizer.zero_grad()
            loss_fn(model(data.train_inputs[batch]), data.train_targets[batch]).backward()
            optimizer.step()
            step += 1
        model.eval()
        path = save_checkpoint(model, args.out, step, epoch)
        fit = accuracy(model, data.train_inputs, data.train_targets)
        test = accuracy(model, data.test_inputs, data.test_targets)
        print(f"epoch {epoch} step {step} train_acc {fit:.4f} test_acc {test:.4f} {path}")
        sys.stdout.flush()
        rest = args.epoch_seconds - (time.monotonic() - started)
        if _wait_or_stop(stop_file, max(0.0, rest)):
            print(f"stop file {stop_file} found: stopping after epoch {epoch}", flush=True)
            return epoch
    print(f"finished all {args.epochs} epochs without a stop", flush=True)
    return int(args.epochs)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m monitor.demo.trainer",
        description="Train the demo MLP on digits, checkpoint every epoch, obey the stop file.",
    )
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--noise", type=float, default=0.4, help="share of noisy train labels")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stop-file", type=Path, help="stop file to poll (default: OUT/STOP)")
    parser.add_argument(
        "--epoch-seconds",
        type=float,
        default=0.0,
        help="pad each epoch to at least this long (stands in for a slower real job)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        train(args)
    except ExtraMissingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
