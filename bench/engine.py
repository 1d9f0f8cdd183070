"""The per-layer engine against the floor and the torch.func baseline (issue 3, DESIGN §3).

For each case: the floor (one batched forward+backward over the probe, summed loss, same
precision), the ``torch.func`` vmap baseline (class mode, ``backend="vmap"``), our class
mode and pair mode (``backend="auto"``: layer hooks), the ratios, the largest |Δcos| of the
class matrix against the float64 one-backward-per-example reference (tests/reference.py)
on a subset of ``--check`` examples, and peak GPU memory per measurement (CUDA only).

    python bench/engine.py --small                 # CPU sizes, a few minutes on 2 cores
    python bench/engine.py --device cuda           # full sizes (DESIGN §3 targets)
    python bench/engine.py --device cuda --precision tf32 --cases resnet18-c10
    python bench/engine.py --small --statistics    # the training split's statistics (issue 15)

``--statistics`` puts every other example in the probe's training split and measures, against
the same floor, hooks class and pair mode without and with ``statistics``, class mode with
the sums alone (disparity: Σ_A g, Σ_B g, no Σg² and no second pass), and class mode with
``uncertainty`` (its second pass is the one the opposing share needs; with both, one pass).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resnet import Encoder, ResNet18, mlp

from monitor.stiffness import EngineOptions, ProbeSet, compute_stiffness
from monitor.stiffness import modes as modes_module
from monitor.stiffness.statistics import StatisticsTracker
from tests.reference import reference_stiffness

Case = tuple[Callable[[], nn.Module], Callable[[int], torch.Tensor], int, int]


def cases(small: bool) -> dict[str, Case]:
    """name -> (model, inputs of N examples, N, classes)."""
    if small:
        return {
            "mlp": (lambda: mlp(256), lambda n: torch.randn(n, 784), 512, 10),
            "resnet18-c10": (lambda: ResNet18(10, width=16), _images, 64, 10),
            "resnet18-c100": (lambda: ResNet18(100, width=16), _images, 200, 100),
            "encoder": (lambda: Encoder(d=64, seq=32), _tokens(32), 64, 10),
        }
    return {
        "mlp": (lambda: mlp(1024), lambda n: torch.randn(n, 784), 2048, 10),
        "resnet18-c10": (lambda: ResNet18(10), _images, 1000, 10),
        "resnet18-c100": (lambda: ResNet18(100), _images, 5000, 100),
        "encoder": (lambda: Encoder(), _tokens(128), 1000, 10),
    }


def _images(n: int) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32)


def _tokens(seq: int) -> Callable[[int], torch.Tensor]:
    return lambda n: torch.randint(0, 1000, (n, seq))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def once(device: torch.device, work: Callable[[], object]) -> tuple[float, float]:
    """One wall time, and the peak GPU GiB during it (nan on the CPU)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    started = time.perf_counter()
    work()
    _sync(device)
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else math.nan
    return seconds, peak


def timed(
    device: torch.device, works: dict[str, Callable[[], object]], repeats: int
) -> dict[str, tuple[float, float, float]]:
    """Per measurement: (first call, median of ``repeats`` later calls, peak GPU GiB).

    The first call pays one-time work (vmap tracing, the hook backend's setup check, which
    later calls of the same model reuse, as the daemon does from checkpoint to checkpoint).
    Repeats are interleaved (one round of every measurement, then the next), so that load
    from other processes on a shared machine hits every measurement alike.
    """
    first = {name: once(device, work) for name, work in works.items()}
    times: dict[str, list[float]] = {name: [] for name in works}
    peaks = {name: first[name][1] for name in works}
    for _ in range(repeats):
        for name, work in works.items():
            seconds, peak = once(device, work)
            times[name].append(seconds)
            peaks[name] = max(peaks[name], peak)
    return {n: (first[n][0], statistics.median(times[n]), peaks[n]) for n in works}


def floor(
    model: nn.Module, probe: ProbeSet, device: torch.device, precision: str, batch: int
) -> None:
    """One batched forward+backward over the probe (in chunks of ``batch``), summed loss."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    for start in range(0, probe.size, batch):
        x = probe.inputs[start : start + batch].to(device)
        y = probe.targets[start : start + batch].to(device)
        with torch.autocast(device.type, dtype=dtype, enabled=precision == "bf16"):
            loss = F.cross_entropy(model(x).float(), y, reduction="sum")
        torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])


def max_cos_error(
    result_matrix: Sequence[Sequence[float | None]], ref_matrix: Sequence[Sequence[float | None]]
) -> float:
    return max(
        abs(a - b)
        for ra, rb in zip(result_matrix, ref_matrix, strict=True)
        for a, b in zip(ra, rb, strict=True)
        if a is not None and b is not None
    )


class SumsOnly(StatisticsTracker):
    """The tracker without Σg² and without the classmate pass: what disparity alone costs."""

    def observe(self, chunk: object, usable: torch.Tensor) -> None:
        grads = chunk.grads  # type: ignore[attr-defined]
        keep = ((self.half[chunk.start : chunk.stop] >= 0) & usable).nonzero().squeeze(1)  # type: ignore[attr-defined]
        if self.sums is None:
            self.sums = torch.zeros(2, grads.shape[1], dtype=torch.float64, device=grads.device)
            self.squares = torch.zeros(1, dtype=torch.float64)
        if keep.numel():
            ones = torch.ones(keep.numel(), dtype=grads.dtype, device=grads.device)
            where = self.half[chunk.start : chunk.stop][keep]  # type: ignore[attr-defined]
            grads.add_class_sums(self.sums, where, keep, ones)

    def members(self, usable: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(usable)  # no training example needs the second pass


def statistics_works(
    model: nn.Module, probe: ProbeSet, args: argparse.Namespace, device: torch.device
) -> dict[str, Callable[[], object]]:
    """The ``--statistics`` measurements (see the module docstring)."""
    batch, precision = args.batch_size, args.precision

    def run(mode: str, **extra: bool) -> Callable[[], object]:
        options = EngineOptions(mode=mode, batch_size=batch, precision=precision, **extra)  # type: ignore[arg-type]
        return lambda: compute_stiffness(model, probe, options, device)

    def sums_only() -> object:
        modes_module.StatisticsTracker = SumsOnly  # type: ignore[misc]
        try:
            return run("class", statistics=True)()
        finally:
            modes_module.StatisticsTracker = StatisticsTracker  # type: ignore[misc]

    return {
        "floor": lambda: floor(model, probe, device, precision, batch),
        "hooks class": run("class"),
        "class + disparity sums only": sums_only,
        "class + statistics": run("class", statistics=True),
        "class + uncertainty": run("class", uncertainty=True),
        "class + statistics + uncertainty": run("class", statistics=True, uncertainty=True),
        "hooks pair": run("pair"),
        "pair + statistics": run("pair", statistics=True),
    }


def run_case(name: str, case: Case, args: argparse.Namespace, device: torch.device) -> list[str]:
    build, make_inputs, n, classes = case
    n = args.n or n
    torch.manual_seed(0)
    model = build().to(device).eval()
    split = torch.arange(n) % 2 == 0 if args.statistics else None
    probe = ProbeSet(make_inputs(n), torch.arange(n) % classes, split)
    batch, precision = args.batch_size, args.precision
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32

    def engine(mode: str, backend: str) -> Callable[[], object]:
        options = EngineOptions(mode=mode, batch_size=batch, precision=precision, backend=backend)  # type: ignore[arg-type]
        return lambda: compute_stiffness(model, probe, options, device)

    works: dict[str, Callable[[], object]] = {
        "floor": lambda: floor(model, probe, device, precision, batch)
    }
    if not args.skip_vmap:
        works["vmap class"] = engine("class", "vmap")
    works["hooks class"] = engine("class", "auto")
    works["hooks pair"] = engine("pair", "auto")
    if args.statistics:
        works = statistics_works(model, probe, args, device)
    load = os.getloadavg()[0]
    rows = timed(device, works, args.repeats)
    load = max(load, os.getloadavg()[0])
    # Accuracy on a subset: our engine at this precision against the float64 reference.
    m = min(args.check, n)
    subset = ProbeSet(probe.inputs[:m], probe.targets[:m] % min(classes, 4))
    ref = reference_stiffness(copy.deepcopy(model).cpu(), subset)
    errors = []
    for mode in ("class", "pair"):
        got = compute_stiffness(
            model,
            subset,
            EngineOptions(mode=mode, batch_size=batch, precision=precision),
            device,
        )
        errors.append(max_cos_error(got.cosine.matrix, ref.cosine["val-val"].matrix))
    base = rows["floor"][1]
    vmap = rows.get("vmap class", (math.nan, math.nan, 0.0))[1]
    lines = []
    for label, (first, seconds, peak) in rows.items():
        lines.append(
            f"| {name} N={n} | {label} | {first:.4f} | {seconds:.4f} | {seconds / base:.2f} | "
            f"{vmap / seconds:.2f} | {peak:.2f} | {load:.1f} |"
        )
    check = f"class {errors[0]:.1e}, pair {errors[1]:.1e}"
    lines.append(f"| {name} | max abs Δcos vs float64 (N={m}) | {check} | | | | | |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="CPU sizes")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n", type=int, default=0, help="override N for every case")
    parser.add_argument("--check", type=int, default=24, help="examples for the accuracy check")
    parser.add_argument("--cases", nargs="*", default=None)
    parser.add_argument("--skip-vmap", action="store_true")
    parser.add_argument("--statistics", action="store_true", help="the statistics' costs")
    args = parser.parse_args()
    device = torch.device(args.device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU"
    print(
        f"{platform.machine()}, {gpu}, torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads, {args.precision}, batch {args.batch_size}, median of {args.repeats} "
        f"interleaved repeats, load average before: {os.getloadavg()}\n"
    )
    print(
        "| case | measurement | first call s | median s | × floor | vmap ÷ this | "
        "peak GPU GiB | load (1 min) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, case in cases(args.small).items():
        if args.cases and name not in args.cases:
            continue
        for line in run_case(name, case, args, device):
            print(line, flush=True)


if __name__ == "__main__":
    main()
