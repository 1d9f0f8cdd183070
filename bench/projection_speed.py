"""Projection mode's cost against the floor and exact class mode on a GPT-2-shaped model.

Three measurements on one model and probe, each in its own process so that its peak resident
memory (``ru_maxrss``) is its own:

- ``floor``: one batched forward and backward of the summed per-example loss (what training
  pays per batch; no per-example gradients);
- ``exact``: ``compute_stiffness`` in class mode (hook backend, float64 class sums of P);
- ``projected``: the same with ``stiffness.projection`` at the default k, each kind.

The issue's case is GPT-2 small (124M, T=128, N=256, 4 classes); on this 2-core CPU the
default is a reduced GPT-2 (n_embd 256, 4 layers, vocabulary 4096, T=64, N=64) with the
same layer types. Seconds are the median of ``--repeats`` runs after one warm-up.

    python bench/projection_speed.py [--embd 256] [--layers 4] [--vocab 4096] [--t 64] [--n 64]
        [--measure floor,exact,tensor_sketch,khatri_rao,kronecker]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from monitor.stiffness import EngineOptions, ProbeSet, compute_stiffness  # noqa: E402
from monitor.stiffness.inputs import DEFAULT_PROJECTION_DIM, Projection  # noqa: E402
from monitor.stiffness.loss import sequence_cross_entropy  # noqa: E402

MEASUREMENTS = ("floor", "exact", "tensor_sketch", "khatri_rao", "kronecker")


def build(args: argparse.Namespace) -> tuple[torch.nn.Module, ProbeSet]:
    spec = importlib.util.spec_from_file_location("lm", ROOT / "examples/language/model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    model = module.build_gpt2(
        vocab_size=args.vocab, n_embd=args.embd, n_layer=args.layers, n_head=args.heads,
        n_positions=args.t,
    )  # fmt: skip
    tokens = torch.randint(0, args.vocab, (args.n, args.t))
    targets = torch.arange(args.n) % 4
    probe = ProbeSet(inputs=tokens, targets=targets, classes=(0, 1, 2, 3),
                     token_targets=tokens.clone())  # fmt: skip
    return model, probe


def measure(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    model, probe = build(args)
    count = sum(p.numel() for p in model.parameters())

    def floor() -> None:
        model.zero_grad()
        logits = model(probe.inputs).logits
        sequence_cross_entropy(logits, probe.inputs, shift=True)[0].sum().backward()

    def evaluate(projection: Projection | None) -> None:
        options = EngineOptions(loss="causal_lm", batch_size=args.batch, projection=projection)
        compute_stiffness(model, probe, options)

    what = args.one
    if what == "floor":
        run = floor
    elif what == "exact":
        run = lambda: evaluate(None)  # noqa: E731
    else:
        run = lambda: evaluate(Projection(args.k, 0, what))  # noqa: E731
    run()  # warm-up
    seconds = []
    for _ in range(args.repeats):
        began = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - began)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB -> MiB
    return {"what": what, "seconds": statistics.median(seconds), "peak_mib": peak, "P": count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name, default in (("embd", 256), ("layers", 4), ("vocab", 4096), ("t", 64), ("n", 64)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--k", type=int, default=DEFAULT_PROJECTION_DIM)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--measure", default=",".join(MEASUREMENTS),
                        help="which of %(default)s, in order; the first is the ratios' base")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args)))
        return
    rows = []
    for what in args.measure.split(","):
        command = [sys.executable, __file__, *sys.argv[1:], "--one", what]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    base = rows[0]["seconds"]
    shape = f"n_embd {args.embd}, {args.layers} layers, vocab {args.vocab}, T={args.t}, N={args.n}"
    print(f"GPT-2-shaped, {shape}, P={rows[0]['P']:,}, k={args.k}, {args.threads} threads")
    print("| measurement | seconds | × floor | peak RSS MiB |")
    print("|---|---:|---:|---:|")
    for row in rows:
        label = row["what"] if row["what"] in ("floor", "exact") else f"projected ({row['what']})"
        print(f"| {label} | {row['seconds']:.2f} | {row['seconds'] / base:.1f} "
              f"| {row['peak_mib']:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
