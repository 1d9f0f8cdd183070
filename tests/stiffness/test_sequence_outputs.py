"""Sequence losses read their (B, T, V) logits where ``OutputSpec`` says, like classifiers.

A Hugging Face causal LM wrapped so that its forward returns the logits in the shapes people
write (a dict under another key, a tuple behind a hidden state, a named tuple a function
picks, a plain ``{"logits": ...}`` dict): every backend, in float64, must give the numbers
of the slow reference on the bare model (tests/reference.py, one backward per example).
``check`` reads them the same way and names ``model.output`` when it cannot.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch
from torch import nn

from monitor.daemon.checks import run_checks
from monitor.errors import EngineError
from monitor.stiffness import EngineOptions, OutputSpec, ProbeSet, compute_stiffness
from tests.evaluation.test_language_models import setup_run
from tests.reference import Reference, reference_stiffness
from tests.stiffness.test_engine import max_error
from tests.stiffness.test_sequences import llama, padded_probe

pytest.importorskip("transformers")


class Heads(NamedTuple):
    hidden: torch.Tensor
    scores: torch.Tensor


def pick_scores(output: Heads) -> torch.Tensor:
    return output.scores


SHAPES: dict[str, tuple[Callable[[torch.Tensor], Any], OutputSpec]] = {
    "dict-logits": (lambda t: {"logits": t, "hidden": t[..., 0]}, OutputSpec()),
    "dict-field": (lambda t: {"hidden": t[..., 0], "scores": t}, OutputSpec(field="scores")),
    "tuple-index": (lambda t: (t[..., 0], t), OutputSpec(field=1)),
    "function": (lambda t: Heads(t[..., 0], t), OutputSpec(function=pick_scores)),
}


class Wrapped(nn.Module):
    """The LM's logits, wrapped by ``wrap``; the attention mask passed through."""

    def __init__(self, lm: nn.Module, wrap: Callable[[torch.Tensor], Any]) -> None:
        super().__init__()
        self.lm, self.wrap = lm, wrap

    def forward(self, input_ids: torch.Tensor, attention_mask: Any = None) -> Any:
        return self.wrap(self.lm(input_ids, attention_mask=attention_mask).logits)


@cache
def reference(masked: bool) -> tuple[nn.Module, ProbeSet, Reference]:
    model, probe = llama().double(), padded_probe()
    if not masked:  # vmap runs the model only without a mask (HF's mask code is data-dependent)
        probe = ProbeSet(probe.inputs, probe.targets, probe.is_train,
                         token_targets=probe.token_targets)  # fmt: skip
    return model, probe, reference_stiffness(model, probe, loss="causal_lm")


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")  # vmap, sdpa
@pytest.mark.parametrize("backend", ["hooks", "vmap", "loop"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_shape_gives_the_reference_numbers(shape: str, backend: Any, caplog: Any) -> None:
    model, probe, ref = reference(masked=backend != "vmap")
    wrap, spec = SHAPES[shape]
    wrapped = Wrapped(copy.deepcopy(model), wrap)
    options = EngineOptions(mode="pair", batch_size=5, loss="causal_lm", backend=backend)
    with caplog.at_level(logging.WARNING):
        got = compute_stiffness(wrapped, probe, options, output=spec)
    assert "one example at a time" not in caplog.text  # vmap ran: no fallback to the loop
    assert max_error(got.cosine, ref.cosine["val-val"]) < 1e-9
    assert max_error(got.pair_sets["train-val"].cosine, ref.cosine["train-val"]) < 1e-9
    assert got.sign is not None and max_error(got.sign, ref.sign["val-val"]) < 1e-9
    assert [v or 0.0 for v in got.gradient_norms] == pytest.approx(ref.norms, rel=1e-9)
    assert got.probe_loss == pytest.approx(ref.probe_loss, rel=1e-9)
    assert got.probe_accuracy == pytest.approx(ref.probe_accuracy)


def test_logits_the_default_cannot_find_are_an_error_naming_the_keys() -> None:
    model, probe, _ = reference(masked=True)
    wrapped = Wrapped(model, SHAPES["dict-field"][0])
    options = EngineOptions(loss="causal_lm")
    with pytest.raises(
        EngineError, match=r"type dict holds no logits tensor .* 'hidden', 'scores'"
    ):
        compute_stiffness(wrapped, probe, options)
    with pytest.raises(EngineError, match=r"\(batch, positions, vocabulary\) logits \(model"):
        compute_stiffness(wrapped, probe, options, output=OutputSpec(field="hidden"))


FACTORY = """
from lm_models import build_llama
import torch


class Scores(torch.nn.Module):
    def __init__(self, vocab_size):
        super().__init__()
        self.lm = build_llama(vocab_size=vocab_size)

    def forward(self, input_ids, attention_mask=None):
        out = self.lm(input_ids, attention_mask=attention_mask)
        return {"loss": out.logits.sum(), "scores": out.logits}
"""


@pytest.mark.filterwarnings("ignore::monitor.probe.sampling.ProbeWarning")
def test_check_reads_token_logits_where_model_output_says(tmp_path: Path) -> None:
    config = setup_run(tmp_path, "llama")  # its folder holds examples/language/model.py
    (tmp_path / "scores_model.py").write_text(FACTORY)
    text = config.read_text().replace("lm_models:build_llama", "scores_model:Scores")
    config.write_text(text)
    (problem,) = run_checks(config).problems
    assert problem == (
        f"{config}: model.output: model output of type dict holds no logits tensor (it has "
        "keys 'loss', 'scores'); set model.output to the key, attribute or index that holds "
        "the logits, or model.output_fn to a function that picks them (stiffness.loss: "
        "causal_lm)"
    )
    config.write_text(text.replace("model:\n", "model:\n  output: scores\n"))
    assert run_checks(config).problems == []
