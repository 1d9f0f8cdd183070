"""Peak memory of the engine as N grows (issue 3: class mode flat in N, pair mode N×N).

Each measurement runs in a fresh child process, so one peak cannot hide another: the child
builds the model and a probe of N examples, runs the measurement twice (the second call is
the daemon's steady state: the setup check is cached), and exits. The parent reads the
child's own peak resident set from ``os.wait4`` (CPU), and the child reports
``torch.cuda.max_memory_allocated`` (CUDA). Columns: the floor (one batched forward+backward
over the probe), the ``torch.func`` vmap baseline in class mode, our class mode, and our
pair mode with and without a ``memory_limit``. "over floor" subtracts the floor's peak, so it
is what the measurement itself adds; the probe tensor, which grows with N in every column,
cancels there.

    python bench/engine_memory.py                       # CPU, a few minutes on 2 cores
    python bench/engine_memory.py --device cuda --full  # ResNet-18 width 64, N up to 5000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resnet import ResNet18

from monitor.stiffness import EngineOptions, ProbeSet, compute_stiffness

MEASUREMENTS = ("floor", "vmap class", "hooks class", "hooks pair", "hooks pair capped")
PAIR_CAP = 256 * 2**20  # bytes: pair mode's panel cache and chunk budget when capped


def child(args: argparse.Namespace) -> None:
    """Run one measurement; print the CUDA peak (bytes) as JSON."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = ResNet18(args.classes, width=args.width).to(device).eval()
    n = args.n
    probe = ProbeSet(torch.randn(n, 3, 32, 32), torch.arange(n) % args.classes)

    def run() -> None:
        if args.measure == "floor":
            params = [p for p in model.parameters() if p.requires_grad]
            for start in range(0, n, args.batch_size):
                x = probe.inputs[start : start + args.batch_size].to(device)
                y = probe.targets[start : start + args.batch_size].to(device)
                loss = F.cross_entropy(model(x), y, reduction="sum")
                torch.autograd.grad(loss, params)
            return
        mode, backend = ("class", "vmap") if args.measure == "vmap class" else (None, "auto")
        mode = mode or ("class" if args.measure == "hooks class" else "pair")
        cap = PAIR_CAP if args.measure == "hooks pair capped" else None
        options = EngineOptions(
            mode=mode,  # type: ignore[arg-type]
            batch_size=args.batch_size,
            backend=backend,  # type: ignore[arg-type]
            memory_limit=cap,
        )
        compute_stiffness(model, probe, options, device)

    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    run()
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    print(json.dumps({"cuda_peak": peak}))


def measure(args: argparse.Namespace, what: str, n: int) -> tuple[float, float]:
    """(peak RSS MiB, peak CUDA MiB) of one child process."""
    command = [
        sys.executable, __file__, "--child", what, "--n", str(n), "--device", args.device,
        "--classes", str(args.classes), "--width", str(args.width),
        "--batch-size", str(args.batch_size),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{what} at N={n} failed with exit code {process.returncode}")
    cuda = json.loads(output.strip().splitlines()[-1])["cuda_peak"] / 2**20
    return usage.ru_maxrss / 1024, cuda  # ru_maxrss is KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--full", action="store_true", help="width 64 and N up to 5000")
    parser.add_argument("--ns", type=int, nargs="*", default=None)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--child", choices=MEASUREMENTS, dest="measure", default=None)
    parser.add_argument("--n", type=int, default=0)
    parser.add_argument(
        "--only", nargs="*", choices=MEASUREMENTS, default=None,
        help="these measurements only (the capped pair mode recomputes chunks: slow at large N)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.measure:
        child(args)
        return
    if args.full:
        args.width = 64
    ns = args.ns or ([500, 1000, 2000, 5000] if args.full else [128, 256, 512, 1024])
    cuda = args.device.startswith("cuda")
    gpu = torch.cuda.get_device_name(torch.device(args.device)) if cuda else "no GPU"
    print(
        f"{platform.machine()}, {gpu}, torch {torch.__version__}, ResNet-18 width "
        f"{args.width}, {args.classes} classes, batch {args.batch_size}, pair cap "
        f"{PAIR_CAP / 2**20:.0f} MiB; peak {'CUDA allocated' if cuda else 'RSS'} MiB per "
        f"child process\n"
    )
    chosen = [m for m in MEASUREMENTS if not args.only or m in args.only or m == "floor"]
    print("| N | " + " | ".join(f"{m} (over floor)" for m in chosen) + " |")
    print("|---" * (len(chosen) + 1) + "|")
    for n in ns:
        peaks = {}
        for what in chosen:
            rss, gpu_peak = measure(args, what, n)
            peaks[what] = gpu_peak if cuda else rss
        cells = [f"{peaks['floor']:.0f}"] + [
            f"{peaks[w]:.0f} ({peaks[w] - peaks['floor']:+.0f})" for w in chosen[1:]
        ]
        print(f"| {n} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
