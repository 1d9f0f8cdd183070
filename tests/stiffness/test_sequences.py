"""Sequence losses (``causal_lm``, ``token_cross_entropy``) on real ``transformers`` models.

GPT-2 style (``Conv1D``, LayerNorm, learned positions, tied head) and Llama style (RMSNorm,
rotary, SwiGLU, grouped-query attention, tied embeddings), built from tiny configs with
random weights, nothing downloaded. Every number is checked against the slow float64
reference (tests/reference.py: ``F.cross_entropy`` over the labelled tokens, one backward
per example), in class and pair mode, on a probe with right padding, sequences of different
lengths, one sequence with no labelled token and train/val splits.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from functools import cache
from typing import Any

import pytest
import torch
from torch import nn

from monitor.errors import EngineError
from monitor.stiffness import EngineOptions, ProbeSet, compute_stiffness
from monitor.stiffness.backends import gradient_provider
from monitor.stiffness.hooks_backend import HookGradients
from monitor.stiffness.outputs import Objective
from monitor.stiffness.parameters import select_parameters
from tests.reference import Reference, reference_stiffness
from tests.stiffness.test_engine import assert_matches, max_error

transformers = pytest.importorskip("transformers")

VOCAB, N, T, CLASSES = 24, 12, 7, 3
LENGTHS = [7, 5, 3, 7, 6, 2, 7, 4, 7, 1, 5, 7]  # example 9 has one token: nothing to predict


def gpt2() -> nn.Module:
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=16, n_embd=8, n_layer=2, n_head=2,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).eval()


def llama() -> nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16,
        tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(1)
    return transformers.LlamaForCausalLM(config).eval()


MODELS: dict[str, Callable[[], nn.Module]] = {"gpt2": gpt2, "llama": llama}


def padded_probe(lengths: list[int] = LENGTHS, splits: bool = True) -> ProbeSet:
    """Token ids padded on the right with 0, labels -100 on the padding (what HF's
    DataCollatorForLanguageModeling writes), every third example in the train split."""
    torch.manual_seed(2)
    n = len(lengths)
    ids = torch.randint(1, VOCAB, (n, T))
    mask = (torch.arange(T) < torch.tensor(lengths).unsqueeze(1)).long()  # (N, T)
    ids = ids * mask
    labels = torch.where(mask.bool(), ids, -100)
    is_train = (torch.arange(n) % 3 == 0) if splits else None
    return ProbeSet(ids, torch.arange(n) % CLASSES, is_train, token_targets=labels,
                    attention_mask=mask)  # fmt: skip


@cache
def case(arch: str, loss: str) -> tuple[nn.Module, ProbeSet, Reference]:
    model, probe = MODELS[arch](), padded_probe()
    return model, probe, reference_stiffness(model, probe, loss=loss)


CASES = [(a, loss) for a in MODELS for loss in ("causal_lm", "token_cross_entropy")]


@pytest.mark.parametrize("mode", ["class", "pair"])
@pytest.mark.parametrize(("arch", "loss"), CASES)
def test_float64_engine_matches_reference(arch: str, loss: str, mode: Any) -> None:
    model, probe, ref = case(arch, loss)
    options = EngineOptions(mode=mode, batch_size=5, loss=loss)  # type: ignore[arg-type]
    result = compute_stiffness(copy.deepcopy(model).double(), probe, options)
    assert result.counts.parameters == ref.parameters
    assert_matches(result.cosine, ref.cosine["val-val"], 1e-9)
    for name in ("train-val", "train-train"):
        assert_matches(result.pair_sets[name].cosine, ref.cosine[name], 1e-9)
    assert [v or 0.0 for v in result.gradient_norms] == pytest.approx(ref.norms, rel=1e-9)
    assert result.probe_loss == pytest.approx(ref.probe_loss, rel=1e-9)
    assert result.probe_accuracy == pytest.approx(ref.probe_accuracy)
    assert result.train_probe_loss == pytest.approx(ref.train_probe_loss, rel=1e-9)
    assert result.train_probe_accuracy == pytest.approx(ref.train_probe_accuracy)
    if mode == "pair":
        assert result.sign is not None
        assert_matches(result.sign, ref.sign["val-val"], 1e-9)


@pytest.mark.parametrize(("arch", "loss"), CASES)
def test_fp32_engine_close_to_float64_reference(arch: str, loss: str) -> None:
    model, probe, ref = case(arch, loss)
    options = EngineOptions(mode="class", batch_size=5, loss=loss)  # type: ignore[arg-type]
    result = compute_stiffness(model, probe, options)
    assert max_error(result.cosine, ref.cosine["val-val"]) < 1e-5
    for name in ("train-val", "train-train"):
        assert max_error(result.pair_sets[name].cosine, ref.cosine[name]) < 1e-5


def test_unlabelled_sequence_is_left_out_like_a_zero_gradient() -> None:
    """causal_lm: example 9 (one token, nothing after it) has no loss and no direction; it
    counts in zero_gradient and is out of every pair and of the probe loss. Without the
    shift (token_cross_entropy) its one token is labelled and it counts."""
    model, probe, ref = case("llama", "causal_lm")
    result = compute_stiffness(model, probe, EngineOptions(loss="causal_lm"))
    assert result.counts.zero_gradient == 1 and result.gradient_norms[9] == 0.0
    assert ref.usable == [i != 9 for i in range(N)]
    assert result.probe_loss == pytest.approx(ref.probe_loss, rel=1e-5)
    tokens = compute_stiffness(model, probe, EngineOptions(loss="token_cross_entropy"))
    assert tokens.counts.zero_gradient == 0


@pytest.mark.parametrize("arch", list(MODELS))
def test_padding_changes_nothing(arch: str) -> None:
    """Each padded sequence's gradient equals that of the same tokens alone, unpadded and
    without a mask (the reference, one sequence at a time)."""
    model = MODELS[arch]().double()
    probe = padded_probe()
    result = compute_stiffness(model, probe, EngineOptions(loss="causal_lm", batch_size=4))
    for i, length in enumerate(LENGTHS):
        alone = ProbeSet(
            probe.inputs[i : i + 1, :length], probe.targets[i : i + 1],
            token_targets=probe.inputs[i : i + 1, :length].clone(),
        )  # fmt: skip
        want = reference_stiffness(model, alone, loss="causal_lm").norms[0]
        assert (result.gradient_norms[i] or 0.0) == pytest.approx(want, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize(
    ("arch", "exclude", "fallback"),
    [
        ("gpt2", (), ["transformer.wpe.weight"]),
        ("gpt2", ("transformer.wpe.weight",), []),
        ("llama", (), []),
    ],
)
def test_hooks_cover_conv1d_and_rms_norm(
    arch: str, exclude: tuple[str, ...], fallback: list[str]
) -> None:
    """GPT-2's Conv1D and Llama's RMSNorm have layer rules (checked against autograd at
    setup); only GPT-2's position embedding, looked up once for the whole batch, is left
    to the fallback, unless it is excluded (README: the fast path)."""
    model, probe = MODELS[arch](), padded_probe()
    assert probe.token_targets is not None
    objective = Objective("causal_lm", probe.attention_mask)
    selection = select_parameters(model, exclude=exclude)
    provider = gradient_provider(
        model, selection, probe.inputs, probe.token_targets, torch.device("cpu"),
        objective=objective,
    )  # fmt: skip
    assert isinstance(provider, HookGradients)
    assert provider.fallback_names == fallback


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")  # vmap, sdpa
@pytest.mark.parametrize("backend", ["vmap", "loop", "hooks"])
def test_every_backend_gives_the_same_stiffness(backend: str, caplog: Any) -> None:
    """vmap runs the model while no attention mask is passed; with one, HF's mask code is
    data-dependent and the loop takes over (a warning says so). Same numbers either way."""
    model, probe, ref = case("llama", "causal_lm")
    unmasked = ProbeSet(probe.inputs, probe.targets, probe.is_train,
                        token_targets=probe.token_targets)  # fmt: skip
    options = EngineOptions(loss="causal_lm", backend=backend, batch_size=5)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING):
        masked = compute_stiffness(model, probe, options)
    assert max_error(masked.cosine, ref.cosine["val-val"]) < 1e-5
    if backend == "vmap":
        assert "one example at a time" in caplog.text
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            plain = compute_stiffness(model, unmasked, options)
        assert "one example at a time" not in caplog.text
        # Right padding under causal attention: no real token sees the padding, so without
        # the mask the gradients are the same.
        assert max_error(plain.cosine, ref.cosine["val-val"]) < 1e-5


def test_sequence_loss_needs_token_targets() -> None:
    model, probe = llama(), padded_probe()
    plain = ProbeSet(probe.inputs, probe.targets)
    with pytest.raises(EngineError, match=r"causal_lm needs per-token labels.*token_targets"):
        compute_stiffness(model, plain, EngineOptions(loss="causal_lm"))
    with pytest.raises(EngineError, match=r"\(batch, classes\) logits"):
        compute_stiffness(model, probe)  # cross_entropy on (B, T, V) logits


def test_token_target_outside_the_vocabulary_is_an_error() -> None:
    probe = padded_probe()
    assert probe.token_targets is not None
    labels = probe.token_targets.clone()
    labels[3, 2] = VOCAB
    bad = ProbeSet(probe.inputs, probe.targets, token_targets=labels)
    with pytest.raises(EngineError, match=f"token target {VOCAB} but the model has {VOCAB}"):
        compute_stiffness(gpt2(), bad, EngineOptions(loss="causal_lm"))


def test_token_targets_of_other_positions_are_an_error() -> None:
    probe = padded_probe()
    assert probe.token_targets is not None
    short = ProbeSet(probe.inputs, probe.targets, token_targets=probe.token_targets[:, :5])
    with pytest.raises(EngineError, match="token_targets of 5 positions"):
        compute_stiffness(llama(), short, EngineOptions(loss="token_cross_entropy"))
