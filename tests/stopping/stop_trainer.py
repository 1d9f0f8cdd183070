"""A plain PyTorch training loop that polls a stop file every step (a test fixture, a script).

It is what a user of ``monitor.stopping.trainer`` writes: a tiny model trained on fixed random data,
``StopFilePoller`` called after every optimizer step. It prints ``step N`` after each step and,
when the stop file appears, one JSON line ``{"stopped_at": N, "stop": {...}}`` and exits 0.
Without a stop it exits 3 after ``--max-steps``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from monitor.stopping.trainer import StopFilePoller


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stop-file", required=True)
    parser.add_argument("--max-steps", type=int, default=100_000)
    parser.add_argument("--step-seconds", type=float, default=0.05)
    parser.add_argument("--interval", type=float, default=0.0)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    inputs = torch.randn(64, 8)
    targets = (inputs[:, 0] > 0).long()
    stop = StopFilePoller(args.stop_file, interval=args.interval)
    for step in range(1, args.max_steps + 1):
        loss = torch.nn.functional.cross_entropy(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"step {step} loss {loss.item():.4f}", flush=True)
        if stop():
            print(json.dumps({"stopped_at": step, "stop": stop.info}), flush=True)
            return 0
        time.sleep(args.step_seconds)
    print("finished without a stop", flush=True)
    return 3


if __name__ == "__main__":
    raise SystemExit(main())
