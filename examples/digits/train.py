"""Train the example MLP on digits and write a checkpoint every epoch, as trainers do.

Each checkpoint is a ``torch.save`` dict with ``model_state_dict``, ``global_step`` and
``epoch``, written to a temporary file and renamed into place so a watcher never sees half
of it. Optional label noise makes the model overfit, which is what stiffness should reveal.
After every epoch it checks the stop file the monitor writes (``STOP`` in the output folder
by default) and ends training when it appears.

    python examples/digits/train.py --epochs 20 --out examples/digits/checkpoints
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

from monitor.stopping.trainer import should_stop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from digits_data import training_data
from model import build_mlp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument(
        "--noise", type=float, default=0.0, help="share of training labels replaced at random"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "checkpoints")
    parser.add_argument("--stop-file", type=Path, help="stop file to poll (default: OUT/STOP)")
    parser.add_argument(
        "--epoch-pause", type=float, default=0.0, help="seconds to wait after each epoch"
    )
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    inputs, targets = training_data()
    noisy = torch.rand(len(targets)) < args.noise
    targets = torch.where(noisy, torch.randint(0, 10, targets.shape), targets)
    model = build_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    args.out.mkdir(parents=True, exist_ok=True)
    stop_file = args.stop_file or args.out / "STOP"
    started = time.time()  # a stop file older than this is an earlier run's: ignored
    step = 0
    for epoch in range(1, args.epochs + 1):
        order = torch.randperm(len(targets))
        for start in range(0, len(order), args.batch_size):
            batch = order[start : start + args.batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(inputs[batch]), targets[batch])
            loss.backward()
            optimizer.step()
            step += 1
        final = args.out / f"step_{step}.pt"
        temporary = final.with_suffix(".pt.tmp")
        torch.save(
            {"model_state_dict": model.state_dict(), "global_step": step, "epoch": epoch}, temporary
        )
        os.replace(temporary, final)
        print(f"epoch {epoch:3d}  step {step:5d}  loss {loss.item():.4f}  -> {final}", flush=True)
        time.sleep(args.epoch_pause)
        if should_stop(stop_file, since=started):
            print(f"stop file {stop_file} found: stopping after epoch {epoch}", flush=True)
            return


if __name__ == "__main__":
    main()
