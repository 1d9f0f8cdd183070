"""``evaluate(model, probe)`` in-process (issue 14 item 7): the daemon's numbers, from a live
model, checked against the slow float64 reference."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from monitor.errors import ConfigError
from monitor.evaluation.notebook import evaluate
from monitor.stiffness.inputs import ProbeSet
from tests.reference import reference_stiffness


def model_and_probe() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3)).double()
    inputs = torch.randn(36, 6, dtype=torch.float64)
    targets = torch.arange(36) % 3
    is_train = torch.arange(36) < 12
    return model, inputs, targets, is_train


@pytest.mark.parametrize("mode", ["class", "pair"])
def test_a_live_model_gives_the_references_numbers(mode: str) -> None:
    model, inputs, targets, is_train = model_and_probe()
    result = evaluate(model, (inputs, targets, is_train), mode=mode, device="cpu")
    reference = reference_stiffness(model, ProbeSet(inputs, targets, is_train))
    assert result.cosine.within == pytest.approx(reference.cosine["val-val"].within, abs=1e-10)
    assert result.cosine.between == pytest.approx(reference.cosine["val-val"].between, abs=1e-10)
    assert result.probe_loss == pytest.approx(reference.probe_loss, abs=1e-10)
    assert list(result.gradient_norms) == pytest.approx(reference.norms, abs=1e-10)  # probe order
    train_val = result.pair_sets["train-val"].cosine.within
    assert train_val == pytest.approx(reference.cosine["train-val"].within, abs=1e-10)


def test_the_output_option_and_a_misspelt_option() -> None:
    model, inputs, targets, _ = model_and_probe()

    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"scores": self.net(x)}

    plain = evaluate(model, (inputs, targets), device="cpu")
    by_key = evaluate(Wrapped(), (inputs, targets), device="cpu", output="scores")
    by_function = evaluate(Wrapped(), (inputs, targets), device="cpu",
                           output=lambda out: out["scores"])  # fmt: skip
    assert by_key.cosine.within == pytest.approx(plain.cosine.within, abs=1e-12)
    assert by_function.cosine.within == pytest.approx(plain.cosine.within, abs=1e-12)
    with pytest.raises(ConfigError, match=r"mdoe: unknown key \(did you mean 'mode'\?\)"):
        evaluate(model, (inputs, targets), mdoe="pair")
    with pytest.raises(ValueError, match="expected a ProbeSet or"):
        evaluate(model, (inputs,))
