"""The engine under pressure: out-of-memory anywhere in a mode, half-precision weights, and
the TF32 switches it sets and restores.

A CUDA out-of-memory error cannot be produced on the CPU, so the tests that need one raise
``torch.cuda.OutOfMemoryError`` from inside the engine's own per-chunk work (after part of a
chunk has been added to the class sums, or in the middle of a Gram block): the error is what
torch raises there on a full GPU, and everything else is the real engine on a real model.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from monitor.errors import EngineError
from monitor.stiffness import EngineOptions, compute_stiffness
from monitor.stiffness.hooks_backend import HookGradients
from monitor.stiffness.layers.rows import ParamBlock
from monitor.stiffness.precision import tf32_only_for
from monitor.stiffness.result import StiffnessResult
from tests.stiffness.test_engine import case


def same_result(got: StiffnessResult, want: StiffnessResult) -> None:
    assert got.cosine.pair_counts == want.cosine.pair_counts
    for row_got, row_want in zip(got.cosine.matrix, want.cosine.matrix, strict=True):
        assert row_got == pytest.approx(row_want, abs=1e-12)
    for name, pairs in want.pair_sets.items():
        for a, b in zip(got.pair_sets[name].cosine.matrix, pairs.cosine.matrix, strict=True):
            assert a == pytest.approx(b, abs=1e-12)
    assert got.gradient_norms == pytest.approx(want.gradient_norms, rel=1e-12)
    assert got.probe_loss == pytest.approx(want.probe_loss, rel=1e-12)
    assert got.counts == want.counts


class FullDevice:
    """Makes one ParamBlock method raise out-of-memory for chunks over ``fits`` examples,
    from its second call on, so part of the chunk's work has already been done."""

    def __init__(self, method: str, fits: int) -> None:
        self.method, self.fits = method, fits
        self.original = getattr(ParamBlock, method)
        self.batches: list[int] = []
        self.raised = 0

    def __call__(self, block: ParamBlock, *args: Any) -> Any:
        self.batches.append(block.batch)
        if block.batch > self.fits and len(self.batches) > 1:
            self.raised += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate (test)")
        return self.original(block, *args)


@pytest.mark.parametrize(("mode", "method"), [("class", "class_sums"), ("pair", "dot")])
def test_out_of_memory_in_a_mode_retries_with_half_the_chunk(
    mode: Any, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, probe, _ = case("cnn-batchnorm")
    options = EngineOptions(mode=mode, batch_size=16)
    # What the retry ends at: chunks of 4 from the start (the same sums in the same order).
    want = compute_stiffness(copy.deepcopy(model), probe, EngineOptions(mode=mode, batch_size=4))
    full = FullDevice(method, fits=4)
    monkeypatch.setattr(ParamBlock, method, lambda block, *args: full(block, *args))
    got = compute_stiffness(copy.deepcopy(model), probe, options)
    assert full.raised >= 2  # 16 failed, then 8, then 4 fits
    assert max(full.batches[-10:]) <= 4
    # Nothing counted twice: the class sums of the failed attempts were thrown away.
    same_result(got, want)


def test_out_of_memory_at_one_example_is_a_clear_engine_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, probe, _ = case("mlp")
    full = FullDevice("class_sums", fits=0)
    monkeypatch.setattr(ParamBlock, "class_sums", lambda block, *args: full(block, *args))
    with pytest.raises(
        EngineError, match="class mode even with batch size 1 \\(configured batch_size 8"
    ):
        compute_stiffness(copy.deepcopy(model), probe, EngineOptions(batch_size=8))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_weights_are_widened_to_float32(dtype: torch.dtype) -> None:
    model, probe, _ = case("cnn-batchnorm")
    half = copy.deepcopy(model).to(dtype)
    widened = copy.deepcopy(half).float()  # the same weights, exactly, in float32
    got = compute_stiffness(half, probe, EngineOptions(mode="pair"))
    want = compute_stiffness(widened, probe, EngineOptions(mode="pair"))
    assert all(p.dtype == torch.float32 for p in half.parameters())
    same_result(got, want)


def tf32_state() -> tuple[str, str, str]:
    return (
        torch.backends.cuda.matmul.fp32_precision,
        torch.backends.cudnn.conv.fp32_precision,
        torch.get_float32_matmul_precision(),
    )


def every_setting() -> dict[str, Any]:
    """Every TF32-related setting, each read on its own (a read that raises is recorded)."""
    reads = {
        "global": torch.get_float32_matmul_precision,
        "cuda matmul legacy": lambda: torch.backends.cuda.matmul.allow_tf32,
        "cudnn legacy": lambda: torch.backends.cudnn.allow_tf32,
        "cuda matmul": lambda: torch.backends.cuda.matmul.fp32_precision,
        "mkldnn matmul": lambda: torch.backends.mkldnn.matmul.fp32_precision,
        "cudnn conv": lambda: torch.backends.cudnn.conv.fp32_precision,
        "cudnn rnn": lambda: torch.backends.cudnn.rnn.fp32_precision,
    }
    found: dict[str, Any] = {}
    for name, read in reads.items():
        try:
            found[name] = read()
        except RuntimeError:
            found[name] = "raises"
    return found


@pytest.mark.parametrize("user", ["highest", "high", "medium"])
def test_tf32_only_for_tf32_and_the_callers_settings_restored(user: str) -> None:
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(user)
    try:
        outside = tf32_state()
        with tf32_only_for("fp32"):
            # cuDNN allows TF32 convolutions by default: fp32 must switch it off.
            assert tf32_state() == ("ieee", "ieee", "highest")
        assert tf32_state() == outside
        with tf32_only_for("tf32"):
            assert tf32_state() == ("tf32", "tf32", "high")
        with tf32_only_for("bf16"):
            assert tf32_state() == ("ieee", "ieee", "highest")
        assert tf32_state() == outside  # and reading it back does not raise
    finally:
        torch.set_float32_matmul_precision(before)


def test_class_sums_that_do_not_fit_name_their_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not retried with smaller chunks (they would not help): the error says what is needed."""
    model, probe, ref = case("mlp")
    real = torch.zeros

    def zeros(*size: Any, **kwargs: Any) -> torch.Tensor:
        if size == (8, ref.parameters) and kwargs.get("dtype") == torch.float64:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate (test)")
        return real(*size, **kwargs)

    monkeypatch.setattr(torch, "zeros", zeros)
    message = "class sums: 8 sums of 114 parameters in torch.float64 need 0.00 GiB on cpu"
    with pytest.raises(EngineError, match=message):
        compute_stiffness(copy.deepcopy(model), probe, EngineOptions(batch_size=8))


@pytest.mark.parametrize("precision", ["fp32", "tf32"])
def test_a_caller_whose_settings_disagree_gets_them_back(precision: str) -> None:
    """Per-backend fields that disagree with the global setting (torch then raises on
    reading the global one): the engine leaves every setting as it found it."""
    before = every_setting()
    torch.set_float32_matmul_precision("high")
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    torch.backends.cudnn.rnn.fp32_precision = "tf32"
    try:
        mixed = every_setting()
        assert mixed["global"] == "raises"
        with tf32_only_for(precision):
            assert torch.backends.cudnn.rnn.fp32_precision == (
                "tf32" if precision == "tf32" else "ieee"
            )
            assert torch.backends.cuda.matmul.fp32_precision == (
                "tf32" if precision == "tf32" else "ieee"
            )
        assert every_setting() == mixed
    finally:
        torch.set_float32_matmul_precision(before["global"])
        torch.backends.cuda.matmul.fp32_precision = before["cuda matmul"]
        torch.backends.mkldnn.matmul.fp32_precision = before["mkldnn matmul"]
        torch.backends.cudnn.rnn.fp32_precision = before["cudnn rnn"]
    assert every_setting() == before


def test_out_of_memory_in_the_setup_check_is_an_engine_error_not_a_verdict(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An OOM while the rules are compared with autograd says nothing about the rules: it
    must not move every layer to the slow fallback, it must be reported."""
    model, probe, _ = case("cnn-batchnorm")
    real = HookGradients._uses

    def full(self: HookGradients, calls: Any) -> Any:
        if calls and calls[0].inputs[0].shape[0] <= 2:  # the check's two examples
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate (test)")
        return real(self, calls)

    monkeypatch.setattr(HookGradients, "_uses", full)
    with pytest.raises(EngineError, match="out of memory preparing the evaluation") as caught:
        compute_stiffness(copy.deepcopy(model), probe, EngineOptions(backend="hooks"))
    assert isinstance(caught.value.__cause__, torch.cuda.OutOfMemoryError)


def test_a_retried_evaluation_times_each_part_once(monkeypatch: pytest.MonkeyPatch) -> None:
    model, probe, _ = case("cnn-batchnorm")
    full = FullDevice("class_sums", fits=4)
    monkeypatch.setattr(ParamBlock, "class_sums", lambda block, *args: full(block, *args))
    result = compute_stiffness(copy.deepcopy(model), probe, EngineOptions(batch_size=16))
    assert full.raised >= 2
    timings = result.timings
    assert timings["gradients"] + timings["stiffness"] == pytest.approx(timings["total"])
