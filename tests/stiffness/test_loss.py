"""The stable per-example cross-entropy (monitor/stiffness/loss.py): equal to torch's where
torch is accurate, accurate where torch's fp32 gradient rounds away (fitted examples),
differentiable under vmap, and NaN for non-finite logits (the divergence guard reads that)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import grad, vmap

from monitor.stiffness.loss import cross_entropy, labelled_examples, sequence_cross_entropy


def gradient(logits: torch.Tensor, targets: torch.Tensor, stable: bool) -> torch.Tensor:
    z = logits.clone().requires_grad_(True)
    loss = cross_entropy(z, targets) if stable else F.cross_entropy(z, targets, reduction="none")
    (g,) = torch.autograd.grad(loss.sum(), z)
    return g


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 6),
    classes=st.integers(2, 12),
    scale=st.floats(0.01, 30.0),
    seed=st.integers(0, 10_000),
)
def test_equals_torch_in_float64(rows: int, classes: int, scale: float, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(rows, classes, dtype=torch.float64, generator=generator) * scale
    y = torch.randint(0, classes, (rows,), generator=generator)
    want = F.cross_entropy(z, y, reduction="none")
    assert torch.allclose(cross_entropy(z, y), want, rtol=1e-12, atol=1e-12)
    assert torch.allclose(gradient(z, y, True), gradient(z, y, False), rtol=1e-10, atol=1e-14)


def fitted_logits() -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose target leads by 14-22: p_y = 1 − r with r between ~1e-10 and ~1e-6."""
    generator = torch.Generator().manual_seed(3)
    z = torch.randn(32, 10, dtype=torch.float64, generator=generator)
    y = torch.arange(32) % 10
    z[torch.arange(32), y] += torch.linspace(14.0, 22.0, 32, dtype=torch.float64)
    return z, y


def direction_error(got: torch.Tensor, exact: torch.Tensor) -> float:
    """Largest relative error of a row (its direction and size) against the float64 row."""
    return float(((got.double() - exact).norm(dim=1) / exact.norm(dim=1)).max())


def test_fitted_examples_keep_their_gradient_in_fp32() -> None:
    z, y = fitted_logits()
    exact = gradient(z, y, stable=False)  # float64: accurate to ~1e-16/r
    torch_fp32 = gradient(z.float(), y, stable=False)
    ours = gradient(z.float(), y, stable=True)
    assert direction_error(torch_fp32, exact) > 0.5  # the failure this module exists for
    assert direction_error(ours, exact) < 1e-5
    # The losses: torch's fp32 ones round to 0 for many rows; ours keep their digits.
    want = F.cross_entropy(z, y, reduction="none")
    assert float((F.cross_entropy(z.float(), y, reduction="none") == 0).double().mean()) > 0.3
    assert torch.allclose(cross_entropy(z.float(), y).double(), want, rtol=1e-5, atol=0)


def test_an_example_whose_target_is_not_the_top_class() -> None:
    z = torch.tensor([[30.0, 0.0, -5.0]])
    y = torch.tensor([1])
    assert float(cross_entropy(z, y)) == pytest.approx(30.0, rel=1e-6)
    assert gradient(z, y, True)[0].tolist() == pytest.approx([1.0, -1.0, 0.0], abs=1e-12)


def test_vmap_of_grad_matches_the_batched_backward() -> None:
    z, y = fitted_logits()
    z32 = z.float()

    def one(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(logits.unsqueeze(0), target.unsqueeze(0))[0]

    per_example = vmap(grad(one))(z32, y)
    torch.testing.assert_close(per_example, gradient(z32, y, stable=True), rtol=1e-6, atol=0)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_logits_give_a_nan_loss(bad: float) -> None:
    z = torch.tensor([[0.5, bad, 1.0], [0.5, 0.2, 1.0]])
    loss = cross_entropy(z, torch.tensor([0, 0]))
    if bad == -math.inf:  # a class with zero probability is a finite, valid input
        assert torch.isfinite(loss).all()
        assert torch.allclose(loss, F.cross_entropy(z, torch.tensor([0, 0]), reduction="none"))
    else:
        assert math.isnan(float(loss[0]))
        assert math.isfinite(float(loss[1]))


# --- sequence losses ----------------------------------------------------------------------


def hf_sequence_loss(logits: torch.Tensor, labels: torch.Tensor, shift: bool) -> torch.Tensor:
    """Hugging Face's causal-LM loss, one sequence at a time: ``F.cross_entropy`` with its
    default ``ignore_index=-100``, mean over the labelled tokens (NaN when there are none)."""
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    return torch.stack([F.cross_entropy(logits[i], labels[i]) for i in range(logits.shape[0])])


def sequence_case(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(5, 6, 9, dtype=torch.float64, generator=generator) * 3.0
    labels = torch.randint(0, 9, (5, 6), generator=generator)
    labels[1, 4:] = -100  # padding
    labels[2, :3] = -100  # a prompt without loss
    labels[3, 1:] = -100  # causal_lm: nothing to predict; token_cross_entropy: one token
    labels[4, :] = -100  # no label at all
    return z, labels


@pytest.mark.parametrize("shift", [True, False], ids=["causal_lm", "token_cross_entropy"])
def test_sequence_loss_equals_hugging_face(shift: bool) -> None:
    z, labels = sequence_case()
    losses, hits = sequence_cross_entropy(z, labels, shift)
    want = hf_sequence_loss(z, labels, shift)
    labelled = labelled_examples(labels, shift)
    assert labelled.tolist() == [True, True, True, not shift, False]
    assert torch.allclose(losses[labelled], want[labelled], rtol=1e-12, atol=1e-12)
    assert torch.isnan(want[~labelled]).all()  # torch: 0/0; ours: 0, with a zero gradient
    assert losses[~labelled].tolist() == [0.0] * int((~labelled).sum())
    z_grad = z.clone().requires_grad_(True)
    (ours,) = torch.autograd.grad(sequence_cross_entropy(z_grad, labels, shift)[0].sum(), z_grad)
    z_ref = z.clone().requires_grad_(True)
    (theirs,) = torch.autograd.grad(hf_sequence_loss(z_ref, labels, shift)[labelled].sum(), z_ref)
    assert torch.allclose(ours, theirs, rtol=1e-10, atol=1e-14)
    assert not ours[~labelled].any()  # no labelled token: exactly zero
    shifted = (z[:, :-1], labels[:, 1:]) if shift else (z, labels)
    right = (shifted[0].argmax(-1) == shifted[1]) & (shifted[1] != -100)
    share = right.double().sum(1) / (shifted[1] != -100).double().sum(1).clamp(min=1)
    assert torch.equal(hits, share)


def test_sequence_loss_keeps_fitted_tokens_in_fp32() -> None:
    """Tokens the model fits (target leads by 14-22) keep their gradient in fp32, as one
    example's cross-entropy does: the per-token loss is the stable one."""
    z, y = fitted_logits()  # (32, 10): one sequence of 32 tokens
    labels = y.unsqueeze(0)
    z64 = z.unsqueeze(0).clone().requires_grad_(True)
    (exact,) = torch.autograd.grad(sequence_cross_entropy(z64, labels, False)[0].sum(), z64)
    z32 = z.unsqueeze(0).float().requires_grad_(True)
    (ours,) = torch.autograd.grad(sequence_cross_entropy(z32, labels, False)[0].sum(), z32)
    t32 = z.unsqueeze(0).float().requires_grad_(True)
    (torch32,) = torch.autograd.grad(F.cross_entropy(t32[0], y), t32)
    assert direction_error(ours[0], exact[0]) < 1e-5
    assert direction_error(torch32[0], exact[0]) > 1e-2  # what the stable form avoids


def test_sequence_loss_under_vmap() -> None:
    z, labels = sequence_case(1)

    def one(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return sequence_cross_entropy(logits.unsqueeze(0), label.unsqueeze(0), True)[0][0]

    batched = vmap(grad(one))(z, labels)
    z_loop = z.clone().requires_grad_(True)
    (looped,) = torch.autograd.grad(sequence_cross_entropy(z_loop, labels, True)[0].sum(), z_loop)
    assert torch.allclose(batched, looped, rtol=1e-12, atol=1e-15)
