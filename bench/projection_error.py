"""Projection mode's error against exact class mode, as a function of k (docs/precision.md).

Three models on which exact class mode fits: the digits MLP (examples/digits, the real 8×8
digits), a ResNet-18 (bench/resnet.py, width 64, 32×32 random inputs) and a reduced-width
GPT-2 (examples/language: n_embd 128, 4 layers, vocabulary 512, causal_lm on random token
sequences of length 32; GPT-2 small itself does not fit this CPU's time). Each model is
evaluated once exactly and once per kind, k and seed; the table gives, per kind and k, the
largest |Δ| over seeds of any class-matrix entry and of the within-class stiffness (class
mode, N=40 in 4 classes, so 90 pairs per within-class entry), and the seconds per projected
evaluation (2 shared CPU cores: indicative only).

    python bench/projection_error.py [--ks 256,1024,4096,16384] [--seeds 3] [--n 40]
        [--kinds tensor_sketch,khatri_rao,kronecker] [--models digits,resnet,gpt2]
        [--gpt2 128,4,512,32] [--total-dims none,4096,16384,65536]

Rows are folded to the default ``total_dim`` (2^17) unless ``--total-dims`` gives the widths
to try (``none``: not folded); the table then gains the unfolded width K and the fold's.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.resnet import ResNet18  # noqa: E402
from monitor.stiffness import EngineOptions, ProbeSet, compute_stiffness  # noqa: E402
from monitor.stiffness.inputs import DEFAULT_PROJECTION_TOTAL_DIM, Projection  # noqa: E402
from monitor.stiffness.projection.projector import unfolded_width  # noqa: E402


def _load(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _probe(inputs: torch.Tensor, targets: torch.Tensor, tokens: Any = None) -> ProbeSet:
    classes = tuple(sorted(set(targets.tolist())))
    return ProbeSet(inputs=inputs, targets=targets, classes=classes, token_targets=tokens)


def digits(n: int) -> tuple[nn.Module, ProbeSet, str]:
    torch.manual_seed(0)
    model = _load(ROOT / "examples/digits/model.py", "digits_model").build_mlp()
    x, y = _load(ROOT / "examples/digits/digits_data.py", "digits_data").probe()
    keep = torch.cat([(y == c).nonzero().squeeze(1)[: n // 4] for c in range(4)])
    return model, _probe(x[keep].float(), y[keep]), "cross_entropy"


def resnet(n: int) -> tuple[nn.Module, ProbeSet, str]:
    torch.manual_seed(0)
    y = torch.arange(n) % 4
    return ResNet18(classes=4), _probe(torch.randn(n, 3, 32, 32), y), "cross_entropy"


#: The GPT-2's shape: (n_embd, layers, vocabulary, T); ``--gpt2 768,12,50257,32`` is GPT-2
#: small's (124M) at T = 32.
GPT2_SHAPE = [128, 4, 512, 32]


def gpt2(n: int) -> tuple[nn.Module, ProbeSet, str]:
    torch.manual_seed(0)
    build = _load(ROOT / "examples/language/model.py", "language_models").build_gpt2
    embd, layers, vocab, t = GPT2_SHAPE
    model = build(vocab_size=vocab, n_embd=embd, n_layer=layers, n_head=4, n_positions=t)
    tokens = torch.randint(0, vocab, (n, t))
    y = torch.arange(n) % 4
    return model, _probe(tokens, y, tokens.clone()), "causal_lm"


def errors(exact: Any, approx: Any) -> tuple[float, float]:
    """(max |Δ| over class-matrix entries, |Δ| of within-class stiffness)."""
    cells = [
        abs(a - b)
        for row_a, row_b in zip(exact.cosine.matrix, approx.cosine.matrix, strict=True)
        for a, b in zip(row_a, row_b, strict=True)
        if a is not None and b is not None
    ]
    return max(cells), abs(exact.cosine.within - approx.cosine.within)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ks", default="256,1024,4096,16384")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--models", default="digits,resnet,gpt2")
    parser.add_argument("--kinds", default="tensor_sketch,khatri_rao,kronecker")
    parser.add_argument("--gpt2", default=",".join(map(str, GPT2_SHAPE)),
                        help="the GPT-2's n_embd,layers,vocabulary,T")
    parser.add_argument("--total-dims", default=None,
                        help="fold widths to try, comma-separated; 'none' for no fold")
    args = parser.parse_args()
    folds: list[int | None] = (
        [DEFAULT_PROJECTION_TOTAL_DIM]
        if args.total_dims is None
        else [None if v == "none" else int(v) for v in args.total_dims.split(",")]
    )
    GPT2_SHAPE[:] = [int(v) for v in args.gpt2.split(",")]
    ks = [int(k) for k in args.ks.split(",")]
    builders = {"digits": digits, "resnet": resnet, "gpt2": gpt2}
    torch.set_num_threads(2)
    extra, rule = ("K | total_dim | ", "---:|---:|") if args.total_dims else ("", "")
    print(f"| model | P | kind | k | {extra}max \\|Δ\\| class matrix | max \\|Δ\\| within "
          "| seconds |")
    print(f"|---|---:|---|---:|{rule}---:|---:|---:|")
    for name in args.models.split(","):
        model, probe, loss = builders[name](args.n)
        count = sum(p.numel() for p in model.parameters())
        exact = compute_stiffness(model, probe, EngineOptions(loss=loss, batch_size=16))
        assert exact.cosine.within is not None
        shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
        runs = [(kind, k, fold) for kind in args.kinds.split(",") for k in ks for fold in folds]
        for kind, k, fold in runs:
            began, worst = time.perf_counter(), (0.0, 0.0)
            for seed in range(args.seeds):
                projection = Projection(k, seed, kind, fold)
                options = EngineOptions(loss=loss, batch_size=16, projection=projection)
                cell, within = errors(exact, compute_stiffness(model, probe, options))
                worst = (max(worst[0], cell), max(worst[1], within))
            seconds = (time.perf_counter() - began) / args.seeds
            if args.total_dims:
                width = unfolded_width(k, kind, shapes)
                extra = f"{width:,} | {'none' if fold is None else f'{fold:,}'} | "
            print(
                f"| {name} | {count:,} | {kind} | {k} | {extra}{worst[0]:.4f} | {worst[1]:.4f} "
                f"| {seconds:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
