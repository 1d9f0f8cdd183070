"""Precision of per-pair cosine stiffness under the sequence loss (causal_lm) vs float64.

Tiny GPT-2 and Llama architectures (examples/language/model.py): random; trained (Adam on
other sequences of the probe's three token patterns); and memorised (Adam on the probe's own
sequences until nearly every token is fitted, p ≈ 1: where torch's fp32 cross-entropy
gradient loses its digits). The probe: right-padded sequences with an attention mask.
Prints the markdown rows of docs/precision.md's sequence-loss table: the largest per-pair
|Δcos| against the float64 computation, and the share of pairs whose sign agrees, for fp32,
bf16, and fp32 with torch's cross-entropy in place of the engine's stable one (what the
stable loss buys).

    python bench/sequence_precision.py [--device cuda] [--n 48] [--steps 300]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from monitor.stiffness import loss as loss_module
from monitor.stiffness.backends import gradient_provider
from monitor.stiffness.gradients import dot64
from monitor.stiffness.outputs import Objective
from monitor.stiffness.parameters import select_parameters

VOCAB, T = 32, 16
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "language" / "model.py"


def factories() -> dict[str, nn.Module]:
    spec = importlib.util.spec_from_file_location("language_models", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    return {
        "GPT-2 (2 layers, d=32)": module.build_gpt2(VOCAB, n_embd=32),
        "Llama (2 layers, d=32)": module.build_llama(VOCAB, hidden_size=32, intermediate_size=64),
    }


def sequences(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids (n, T), class (n,), attention mask (n, T): class c counts up in steps of
    c + 1 from a random start, modulo the vocabulary (minus the padding id 0)."""
    generator = torch.Generator().manual_seed(seed)
    classes = torch.arange(n) % 3
    start = torch.randint(0, VOCAB - 1, (n, 1), generator=generator)
    ids = (start + torch.arange(T) * (classes.unsqueeze(1) + 1)) % (VOCAB - 1) + 1
    lengths = torch.randint(T // 2, T + 1, (n, 1), generator=generator)
    mask = (torch.arange(T) < lengths).long()
    return ids * mask, classes, mask


def train(model: nn.Module, steps: int, probe: int | None = None) -> nn.Module:
    """Adam on fresh sequences at every step, or on the probe's own ``probe`` sequences."""
    model = copy.deepcopy(model).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3 if probe is None else 1e-2)
    for step in range(steps):
        ids, _, mask = sequences(64, 1000 + step) if probe is None else sequences(probe, 7)
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(ids, attention_mask=mask, labels=labels).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


@contextlib.contextmanager
def torch_loss() -> Iterator[None]:
    """The engine's per-token loss swapped for torch's cross-entropy."""
    stable = loss_module.cross_entropy

    def plain(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        flat = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               reduction="none")  # fmt: skip
        return flat.reshape(targets.shape)

    loss_module.cross_entropy = plain  # type: ignore[assignment]
    try:
        yield
    finally:
        loss_module.cross_entropy = stable


def cosines(
    model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, precision: str, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, N) cosine and Gram of per-example causal_lm gradients from the engine's backend."""
    model = model.to(device).eval()
    labels = ids.masked_fill(mask == 0, -100)
    objective = Objective("causal_lm", mask)
    provider = gradient_provider(
        model, select_parameters(model), ids, labels, device, precision, objective=objective
    )
    rows = provider(0, ids.shape[0]).grads
    gram = dot64(rows, rows)
    norms = gram.diagonal().sqrt()
    return gram / norms.unsqueeze(1) / norms.unsqueeze(0), gram


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=int, default=48)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    device = torch.device(args.device)
    ids, _, mask = sequences(args.n, 7)
    off = ~torch.eye(args.n, dtype=torch.bool)
    print("| model | weights | probe loss | precision | max abs Δcos vs float64 | sign agreement |")
    print("|---|---|---|---|---|---|")
    for name, model in factories().items():
        for weights, m in (
            ("random", model),
            ("trained", train(model, args.steps)),
            ("memorised", train(model, args.steps, probe=args.n)),
        ):
            with torch.no_grad():
                labels = ids.masked_fill(mask == 0, -100)
                probe_loss = float(m(ids, attention_mask=mask, labels=labels).loss)
            exact, gram64 = cosines(copy.deepcopy(m).double(), ids, mask, "fp32", device)
            for label, precision, swap in (
                ("fp32", "fp32", False),
                ("bf16", "bf16", False),
                ("fp32, torch's loss", "fp32", True),
            ):
                with torch_loss() if swap else contextlib.nullcontext():
                    cos, gram = cosines(copy.deepcopy(m), ids, mask, precision, device)
                delta = float((cos - exact)[off].abs().max())
                agree = float((torch.sign(gram) == torch.sign(gram64))[off].double().mean())
                print(
                    f"| {name} | {weights} | {probe_loss:.3f} | {label} | {delta:.1e} "
                    f"| {agree:.4f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
