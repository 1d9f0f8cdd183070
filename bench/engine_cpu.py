"""Engine cost against the floor, measured in one run (absolute times here are noisy).

The floor is one batched forward+backward over the probe set (the cheapest thing that touches
every example's gradient). Ratios against it, and against the obvious alternative (one
backward per example), are what this prints; BENCHMARKS.md records them with date and machine.

    python bench/engine_cpu.py [--n 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from monitor.stiffness import EngineOptions, ProbeSet, compute_stiffness


def best_of(repeats: int, work: Callable[[], object]) -> float:
    work()  # warm-up (vmap tracing, allocator)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512, help="probe examples")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(784, args.hidden), nn.ReLU(), nn.Linear(args.hidden, args.hidden), nn.ReLU(),
        nn.Linear(args.hidden, args.classes),
    )  # fmt: skip
    inputs = torch.randn(args.n, 784)
    targets = torch.arange(args.n) % args.classes
    probe = ProbeSet(inputs, targets)

    def floor() -> None:
        model.zero_grad()
        F.cross_entropy(model(inputs), targets, reduction="sum").backward()

    def per_example_loop() -> None:
        params = list(model.parameters())
        for i in range(args.n):
            torch.autograd.grad(
                F.cross_entropy(model(inputs[i : i + 1]), targets[i : i + 1]), params
            )

    cases = {
        "floor: one batched fwd+bwd": floor,
        "baseline: one backward per example": per_example_loop,
        "class mode": lambda: compute_stiffness(model, probe, EngineOptions(batch_size=128)),
        "class mode + uncertainty": lambda: compute_stiffness(
            model, probe, EngineOptions(batch_size=128, uncertainty=True)
        ),
        "pair mode": lambda: compute_stiffness(
            model, probe, EngineOptions(mode="pair", batch_size=128)
        ),
    }
    seconds = {name: best_of(args.repeats, work) for name, work in cases.items()}
    base = seconds["floor: one batched fwd+bwd"]
    loop = seconds["baseline: one backward per example"]
    params = sum(p.numel() for p in model.parameters())
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; MLP 784-{args.hidden}-{args.hidden}-{args.classes} "
          f"({params:,} weights), N={args.n}, fp32, best of {args.repeats}")  # fmt: skip
    print("| case | seconds | × floor | × per-example loop |")
    print("|---|---|---|---|")
    for name, value in seconds.items():
        print(f"| {name} | {value:.4f} | {value / base:.1f} | {value / loop:.2f} |")
    print(f"(median of all cases: {statistics.median(seconds.values()):.4f} s)")


if __name__ == "__main__":
    main()
