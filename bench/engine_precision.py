"""Precision of the hook engine: fp32, tf32 and bf16 against float64 (docs/precision.md).

For random and for trained weights (an MLP and a small CNN trained briefly on sklearn's
digits, which ship with scikit-learn: nothing is downloaded), the per-pair cosine stiffness
from the exact N×N Gram at each precision is compared with the float64 one: max |Δcos| and
the fraction of pairs whose sign(g_i·g_j) agrees. tf32 only changes CUDA matmuls: on the CPU
it equals fp32.

    python bench/engine_precision.py [--device cuda]
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from monitor.stiffness.backends import gradient_provider
from monitor.stiffness.gradients import dot64
from monitor.stiffness.parameters import select_parameters


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_digits(return_X_y=True)
    return torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)


def models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    cnn = nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16),
        nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
        nn.LayerNorm(512), nn.Linear(512, 10),
    )  # fmt: skip
    mlp = nn.Sequential(
        nn.Linear(64, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 10)
    )
    return {"mlp": mlp, "cnn": cnn}


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 30) -> nn.Module:
    trained = copy.deepcopy(model).train()
    optimiser = torch.optim.Adam(trained.parameters(), lr=1e-3)
    for _ in range(epochs):
        for start in range(0, x.shape[0], 64):
            loss = F.cross_entropy(trained(x[start : start + 64]), y[start : start + 64])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return trained.eval()


def cosines(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, N) cosine and Gram from the hook backend at ``precision``."""
    model = model.to(device).eval()
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    x = x.to(next(model.parameters()).dtype)
    provider = gradient_provider(model, select_parameters(model), x, y, device, precision)
    rows = provider(0, x.shape[0]).grads
    gram = dot64(rows, rows)
    norms = gram.diagonal().sqrt()
    return gram / norms.unsqueeze(1) / norms.unsqueeze(0), gram


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args()
    device = torch.device(args.device)
    x, y = digits()
    probe_x, probe_y = x[-args.n :], y[-args.n :]
    print("| model | weights | precision | max abs Δcos vs float64 | sign agreement |")
    print("|---|---|---|---|---|")
    for name, model in models().items():
        for weights, m in (
            ("random", model),
            ("trained", train(model, x[: -args.n], y[: -args.n])),
        ):
            exact, gram64 = cosines(copy.deepcopy(m).double(), probe_x, probe_y, "fp32", device)
            off = ~torch.eye(args.n, dtype=torch.bool)
            for precision in ("fp32", "tf32", "bf16"):
                cos, gram = cosines(copy.deepcopy(m), probe_x, probe_y, precision, device)
                delta = float((cos - exact)[off].abs().max())
                agree = float((torch.sign(gram) == torch.sign(gram64))[off].double().mean())
                print(
                    f"| {name} | {weights} | {precision} | {delta:.1e} | {agree:.4f} |", flush=True
                )


if __name__ == "__main__":
    main()
