"""Speed-up of ``evaluate`` from 1 to 2 to 4 ranks at a fixed probe (issue 17, item 6).

Writes a ResNet-18 (``bench/resnet.py``, width ``--width``) checkpoint with random weights, a
random probe of ``--n`` CIFAR-shaped images and a config into a temporary folder, then runs,
for each mode, ``python -m monitor evaluate --json`` (one process: the baseline) and
``torchrun --standalone --nproc_per_node R -m monitor evaluate --json`` for each R. Every rank
has one thread (``OMP_NUM_THREADS=1``), so R ranks use R cores and the ratios measure how the
work divides; one more baseline row runs one process with every core's thread. Reported
per run: the engine seconds rank 0 measured (``timings.engine``: the provider's setup checks,
which every process pays once, the gradients, sums and collectives; not loading nor starting
Python), of them the per-example gradient seconds (``timings.gradients``: the part split
across ranks), the wall seconds of the whole command, and the
largest difference of any class-matrix entry from the one-process result. Medians of
``--repeats`` interleaved rounds.

    python bench/distributed_speedup.py [--n 500] [--width 16] [--ranks 1 2 4] [--repeats 3]
    python bench/distributed_speedup.py --device cuda --n 5000 --width 64 --ranks 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from resnet import ResNet18  # noqa: E402

CONFIG = """
model:
  factory: resnet:ResNet18
  kwargs: {{classes: 10, width: {width}}}
checkpoint:
  format: state_dict
probe:
  path: probe.pt
  per_class: {per_class}
stiffness:
  mode: {mode}
  device: {device}
  batch_size: 64
runs:
  - name: bench
    path: checkpoints
"""


def prepare(folder: Path, n: int, width: int, device: str) -> Path:
    torch.manual_seed(0)
    shutil.copy(BENCH / "resnet.py", folder / "resnet.py")
    model = ResNet18(classes=10, width=width)
    (folder / "checkpoints").mkdir()
    checkpoint = folder / "checkpoints" / "step_1.pt"
    torch.save(model.state_dict(), checkpoint)
    targets = torch.arange(10).repeat_interleave(n // 10)
    inputs = torch.randn(targets.shape[0], 3, 32, 32)
    torch.save({"inputs": inputs, "targets": targets}, folder / "probe.pt")
    for mode in ("class", "pair"):
        text = CONFIG.format(width=width, per_class=n // 10, mode=mode, device=device)
        (folder / f"{mode}.yaml").write_text(text)
    return checkpoint


def run(
    ranks: int, threads: int, config: Path, checkpoint: Path
) -> tuple[float, float, dict[str, Any]]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "monitor", "evaluate", "-c", str(config), str(checkpoint)]
    if ranks > 1:
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
        command = [sys.executable, *launcher, *command[1:]]
    began = time.perf_counter()
    done = subprocess.run(
        [*command, "--json"], capture_output=True, text=True, env=env, timeout=1800, check=False
    )
    wall = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout)
    return float(result["timings"]["engine"]), wall, result


def largest_difference(a: dict[str, Any], b: dict[str, Any]) -> float:
    rows = zip(a["cosine"]["matrix"], b["cosine"]["matrix"], strict=True)
    return max(abs(x - y) for ra, rb in rows for x, y in zip(ra, rb, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=512, help="probe examples (10 classes)")
    parser.add_argument("--width", type=int, default=16, help="ResNet-18 width (64: the paper)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=["class", "pair"])
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cpu", help="cuda: one GPU per rank (NCCL)"
    )
    args = parser.parse_args()
    print(f"cores {os.cpu_count()}, torch {torch.__version__}, load {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = prepare(Path(folder), args.n, args.width, args.device)
        for mode in args.modes:
            config = Path(folder) / f"{mode}.yaml"
            cores = os.cpu_count() or 1
            runs = [(1, cores), *((r, 1) for r in args.ranks)]  # (ranks, threads per rank)
            engine: dict[tuple[int, int], list[float]] = {run: [] for run in runs}
            wall: dict[tuple[int, int], list[float]] = {run: [] for run in runs}
            grads: dict[tuple[int, int], list[float]] = {run: [] for run in runs}
            differences = dict.fromkeys(runs, 0.0)
            baseline: dict[str, Any] | None = None
            for _ in range(args.repeats):
                for ranks, threads in runs:
                    seconds, total, result = run(ranks, threads, config, checkpoint)
                    engine[ranks, threads].append(seconds)
                    wall[ranks, threads].append(total)
                    grads[ranks, threads].append(float(result["timings"]["gradients"]))
                    baseline = baseline or result
                    difference = largest_difference(result, baseline)
                    differences[ranks, threads] = max(differences[ranks, threads], difference)
            one = statistics.median(engine[1, 1])
            load = tuple(round(x, 2) for x in os.getloadavg())
            print(f"\n{mode} mode, ResNet-18 width {args.width}, N={args.n}, load {load}")
            print("| ranks × threads | engine s | vs 1 × 1 | gradients s | wall s | max abs Δ |")
            print("|---|---|---|---|---|---|")
            for ranks, threads in runs:
                median = statistics.median(engine[ranks, threads])
                print(
                    f"| {ranks} × {threads} | {median:.3f} | {one / median:.2f} | "
                    f"{statistics.median(grads[ranks, threads]):.3f} | "
                    f"{statistics.median(wall[ranks, threads]):.1f} | "
                    f"{differences[ranks, threads]:.1e} |"
                )


if __name__ == "__main__":
    main()
