"""The stiffness engine against the slow reference (tests/reference.py), mode against mode,
and its edge cases: self-pairs, zero and non-finite gradients, parameter globs, the blocked
pair-mode path, precision settings, bad models and out-of-memory handling."""

from __future__ import annotations

import copy
import itertools
import json
import math
import warnings
import weakref
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from monitor.config.schema import parse_config
from monitor.demo.trainer import build_mlp
from monitor.errors import EngineError
from monitor.evaluation.evaluator import Evaluator
from monitor.probe.sampling import load_probe
from monitor.stiffness import ClassStiffness, EngineOptions, ProbeSet, compute_stiffness
from monitor.stiffness.backends import gradient_provider
from monitor.stiffness.distance import critical_length
from monitor.stiffness.engine import class_ordered
from monitor.stiffness.func_backend import FuncGradients
from monitor.stiffness.gradients import ChunkStream, ExampleStats, GradientChunk, dot64
from monitor.stiffness.loop_backend import LoopGradients
from monitor.stiffness.parameters import select_parameters
from monitor.stiffness.result import StiffnessResult
from monitor.stiffness.setup_cache import SETUP_CACHE
from tests.reference import Reference, RefMatrix, reference_stiffness
from tests.reference import example_gradients as reference_example_gradients

N, CLASSES = 40, 4


class TokenModel(nn.Module):
    """Embedding + LayerNorm + Linear on integer tokens, mean-pooled over the sequence."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(16, 6)
        self.norm = nn.LayerNorm(6)
        self.head = nn.Linear(6, CLASSES)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.norm(self.embed(tokens)).mean(dim=1))
        return logits  # (B, T, 6) -> (B, 6) -> (B, C)


def mlp() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, CLASSES))
    return model, torch.randn(N, 6)


def cnn() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, CLASSES),
    )
    model.train()
    with torch.no_grad():  # non-trivial running statistics
        for _ in range(3):
            model(torch.randn(16, 1, 8, 8) * 2.0 + 0.5)
    return model.eval(), torch.randn(N, 1, 8, 8)


def tokens() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(2)
    return TokenModel(), torch.randint(0, 16, (N, 5))


ARCHITECTURES: dict[str, Callable[[], tuple[nn.Module, torch.Tensor]]] = {
    "mlp": mlp,
    "cnn-batchnorm": cnn,
    "embedding-layernorm": tokens,
}


def probe_for(inputs: torch.Tensor, splits: bool = True) -> ProbeSet:
    targets = torch.arange(inputs.shape[0]) % CLASSES
    is_train = (torch.arange(inputs.shape[0]) % 3 == 0) if splits else None
    return ProbeSet(inputs=inputs, targets=targets, is_train=is_train)


@cache
def case(arch: str) -> tuple[nn.Module, ProbeSet, Reference]:
    model, inputs = ARCHITECTURES[arch]()
    probe = probe_for(inputs)
    return model, probe, reference_stiffness(model, probe)


def float64(model: nn.Module, probe: ProbeSet) -> tuple[nn.Module, ProbeSet]:
    inputs = probe.inputs.double() if probe.inputs.is_floating_point() else probe.inputs
    return copy.deepcopy(model).double(), ProbeSet(inputs, probe.targets, probe.is_train)


def close(a: float | None, b: float | None, tol: float) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and abs(a - b) <= tol)


def assert_matches(got: ClassStiffness, want: RefMatrix, tol: float) -> None:
    assert [list(row) for row in got.pair_counts] == want.counts
    for row_got, row_want in zip(got.matrix, want.matrix, strict=True):
        for a, b in zip(row_got, row_want, strict=True):
            assert close(a, b, tol), (a, b)
    for name in ("within", "between", "within_pooled", "between_pooled"):
        assert close(getattr(got, name), getattr(want, name), tol), name


def max_error(got: ClassStiffness, want: RefMatrix) -> float:
    return max(
        abs(a - b)
        for ra, rb in zip(got.matrix, want.matrix, strict=True)
        for a, b in zip(ra, rb, strict=True)
        if a is not None and b is not None
    )


@pytest.mark.parametrize("mode", ["class", "pair"])
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_float64_engine_matches_reference(arch: str, mode: Any) -> None:
    model, probe, ref = case(arch)
    model64, probe64 = float64(model, probe)
    result = compute_stiffness(model64, probe64, EngineOptions(mode=mode, batch_size=16))
    assert result.counts.parameters == ref.parameters
    assert result.counts.train_examples == 14
    assert_matches(result.cosine, ref.cosine["val-val"], 1e-9)
    for name in ("train-val", "train-train"):
        assert_matches(result.pair_sets[name].cosine, ref.cosine[name], 1e-9)
    norms = [v for v in result.gradient_norms if v is not None]
    assert norms == pytest.approx(ref.norms, rel=1e-9)
    assert result.probe_loss == pytest.approx(ref.probe_loss, rel=1e-9)
    assert result.probe_accuracy == pytest.approx(ref.probe_accuracy)
    assert result.train_probe_loss == pytest.approx(ref.train_probe_loss, rel=1e-9)
    assert result.train_probe_accuracy == pytest.approx(ref.train_probe_accuracy)
    if mode == "class":
        assert result.sign is None and result.distance is None
        return
    assert result.sign is not None and result.distance is not None
    assert_matches(result.sign, ref.sign["val-val"], 1e-9)
    for name in ("train-val", "train-train"):
        sign = result.pair_sets[name].sign
        assert sign is not None
        assert_matches(sign, ref.sign[name], 1e-9)
    assert ref.distance is not None
    profile = result.distance.to_dict()
    for key in ("within_pairs", "between_pairs"):
        assert profile[key] == ref.distance[key]
    for key in ("edges", "within", "between"):
        assert all(close(a, b, 1e-9) for a, b in zip(profile[key], ref.distance[key], strict=True))
    assert close(profile["critical_length"], ref.distance["critical_length"], 1e-9)


@pytest.mark.parametrize("mode", ["class", "pair"])
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_fp32_engine_close_to_float64_reference(arch: str, mode: Any) -> None:
    model, probe, ref = case(arch)
    result = compute_stiffness(model, probe, EngineOptions(mode=mode, batch_size=16))
    # Measured: at most 7e-8 on these models; ~1e-4 is the contract.
    assert max_error(result.cosine, ref.cosine["val-val"]) < 1e-5
    for name in ("train-val", "train-train"):
        assert max_error(result.pair_sets[name].cosine, ref.cosine[name]) < 1e-5
    assert result.counts.zero_gradient == 0


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_class_mode_equals_pair_mode(arch: str) -> None:
    model, probe, _ = case(arch)
    model64, probe64 = float64(model, probe)
    by_class = compute_stiffness(model64, probe64, EngineOptions(mode="class", batch_size=7))
    by_pair = compute_stiffness(model64, probe64, EngineOptions(mode="pair", batch_size=9))
    for name in ("train-val", "train-train", None):
        a = by_class.pair_sets[name].cosine if name else by_class.cosine
        b = by_pair.pair_sets[name].cosine if name else by_pair.cosine
        assert a.pair_counts == b.pair_counts
        for row_a, row_b in zip(a.matrix, b.matrix, strict=True):
            assert all(close(x, y, 1e-10) for x, y in zip(row_a, row_b, strict=True))


def linear_probe(inputs: list[list[float]], targets: list[int]) -> tuple[nn.Module, ProbeSet]:
    """Identity-weight linear model: logits = x, so gradients are easy to reason about."""
    model = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3))
    probe = ProbeSet(torch.tensor(inputs), torch.tensor(targets))
    return model, probe


@pytest.mark.parametrize("mode", ["class", "pair"])
def test_self_pairs_are_excluded(mode: Any) -> None:
    model, probe = linear_probe([[0.3, -0.2, 0.5], [-0.4, 0.1, 0.2], [0.0, 1.0, 0.0]], [0, 0, 1])
    model64, probe64 = float64(model, probe)
    grads = []
    for i in range(2):
        loss = F.cross_entropy(model64(probe64.inputs[i : i + 1]), probe64.targets[i : i + 1])
        grads.append(torch.autograd.grad(loss, list(model64.parameters()))[0].reshape(-1))
    cos = float(F.cosine_similarity(grads[0], grads[1], dim=0))
    result = compute_stiffness(model64, probe64, EngineOptions(mode=mode))
    diagonal = result.cosine.matrix[0][0]
    assert diagonal == pytest.approx(cos, abs=1e-12)
    assert diagonal != pytest.approx((2.0 + 2.0 * cos) / 4.0)  # mean including self-pairs
    assert result.cosine.matrix[1][1] is None  # one example: no pair
    assert result.cosine.pair_counts == ((2, 2), (2, 0))


@pytest.mark.parametrize("precision", ["float32", "float64"])
@pytest.mark.parametrize("mode", ["class", "pair"])
def test_zero_gradient_examples_are_counted_and_excluded(mode: Any, precision: str) -> None:
    # Logit margin 1000: softmax is exactly one-hot, so the gradient is exactly zero.
    rows = [[1000.0, 0, 0], [0.3, -0.2, 0.5], [-0.4, 0.1, 0.2], [0, 0, 1000.0], [0.1, 0.1, 0.7]]
    rows += [[0.2, 0.9, -0.3], [0.5, 0.4, 0.1]]
    model, probe = linear_probe(rows, [0, 0, 0, 2, 2, 1, 1])
    if precision == "float64":
        model, probe = float64(model, probe)
    result = compute_stiffness(model, probe, EngineOptions(mode=mode))
    assert result.counts.zero_gradient == 2
    assert result.gradient_norms[0] == 0.0 and result.gradient_norms[3] == 0.0
    assert result.cosine.pair_counts[0][0] == 2  # 2 usable examples, 2 ordered pairs
    assert result.cosine.matrix[2][2] is None  # class 2 keeps a single usable example
    assert result.cosine.pair_counts[2][0] == 2
    ref = reference_stiffness(model, probe)
    assert_matches(result.cosine, ref.cosine["val-val"], 1e-6)
    json.dumps(result.to_dict(), allow_nan=False)


@pytest.mark.parametrize("mode", ["class", "pair"])
def test_non_finite_gradients_are_treated_like_zero_ones(mode: Any) -> None:
    model, inputs = mlp()
    inputs[5, 0] = math.nan
    result = compute_stiffness(model, probe_for(inputs), EngineOptions(mode=mode))
    assert result.counts.zero_gradient == 1
    assert result.gradient_norms[5] is None
    assert result.probe_loss is None  # a NaN loss is undefined, never NaN
    json.dumps(result.to_dict(), allow_nan=False)
    assert sum(map(sum, result.cosine.pair_counts)) == 25 * 24  # 26 held out, one unusable


@pytest.mark.parametrize(
    ("include", "exclude", "count"),
    [
        (("2.*",), (), 10 * 4 + 4),
        ((), ("*.bias",), 6 * 10 + 10 * 4),
        (("0.weight", "2.bias"), (), 64),
    ],
    ids=["last-layer", "no-biases", "named"],
)
@pytest.mark.parametrize("mode", ["class", "pair"])
def test_parameter_globs(
    mode: Any, include: tuple[str, ...], exclude: tuple[str, ...], count: int
) -> None:
    model, probe, _ = case("mlp")
    model64, probe64 = float64(model, probe)
    ref = reference_stiffness(model, probe, include=include, exclude=exclude)
    options = EngineOptions(mode=mode, include=include, exclude=exclude)
    result = compute_stiffness(model64, probe64, options)
    assert result.counts.parameters == ref.parameters == count
    assert_matches(result.cosine, ref.cosine["val-val"], 1e-9)
    assert_matches(result.pair_sets["train-val"].cosine, ref.cosine["train-val"], 1e-9)


def test_blocked_pair_mode_equals_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    model, probe, _ = case("cnn-batchnorm")
    calls: list[int] = []
    original = FuncGradients.__call__

    def counting(self: FuncGradients, start: int, stop: int) -> GradientChunk:
        calls.append(stop - start)
        return original(self, start, stop)

    monkeypatch.setattr(FuncGradients, "__call__", counting)
    options = EngineOptions(mode="pair", batch_size=7, backend="vmap")
    cached = compute_stiffness(model, probe, options)
    cached_calls = len(calls)
    calls.clear()
    options = EngineOptions(mode="pair", batch_size=7, memory_limit=1, backend="vmap")
    blocked = compute_stiffness(model, probe, options)
    assert cached_calls == 6 and len(calls) > 6  # the blocked path recomputed chunks
    for a, b in ((cached.cosine, blocked.cosine), (cached.sign, blocked.sign)):
        assert a is not None and b is not None
        assert a.pair_counts == b.pair_counts
        for ra, rb in zip(a.matrix, b.matrix, strict=True):
            assert all(close(x, y, 1e-6) for x, y in zip(ra, rb, strict=True))
    assert cached.distance is not None and blocked.distance is not None
    assert cached.distance.within_pairs == blocked.distance.within_pairs
    assert all(
        close(x, y, 1e-6)
        for x, y in zip(cached.distance.within, blocked.distance.within, strict=True)
    )


def test_class_mode_keeps_one_chunk_of_gradients_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    model, probe, _ = case("mlp")
    earlier: list[weakref.ref[torch.Tensor]] = []
    original = FuncGradients.__call__

    def checking(self: FuncGradients, start: int, stop: int) -> GradientChunk:
        assert all(ref() is None for ref in earlier), "an earlier chunk is still alive"
        chunk = original(self, start, stop)
        earlier.append(weakref.ref(chunk.grads))
        return chunk

    monkeypatch.setattr(FuncGradients, "__call__", checking)
    compute_stiffness(model, probe, EngineOptions(batch_size=8, backend="vmap"))
    assert len(earlier) == 5


def test_target_out_of_range_is_an_engine_error() -> None:
    model, inputs = mlp()
    probe = ProbeSet(inputs, torch.arange(N) % 13)
    with pytest.raises(EngineError, match="probe target 12 but the model has 4 outputs"):
        compute_stiffness(model, probe)


class Unflattened(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(1) * self.scale

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))


def test_bad_output_shape_is_an_engine_error() -> None:
    with pytest.raises(EngineError, match=r"\(batch, classes\) logits"):
        compute_stiffness(Unflattened(), probe_for(torch.randn(N, 4)))


class DataDependent(nn.Linear):
    """Branches on a tensor's value: fine in eager mode, impossible under vmap."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = super().forward(x)
        return out if x.sum().item() > 0 else -out


class SquareFunction(torch.autograd.Function):
    """x², written the pre-torch.func way: no setup_context, so vmap refuses it."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return 2 * x * grad


class CustomFunction(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = SquareFunction.apply(super().forward(x))
        return out


VMAP_HOSTILE: dict[str, Callable[[], nn.Module]] = {
    "item-control-flow": lambda: DataDependent(4, CLASSES),
    "autograd-function": lambda: CustomFunction(4, CLASSES),
}


@pytest.mark.parametrize("mode", ["class", "pair"])
@pytest.mark.parametrize("kind", list(VMAP_HOSTILE))
def test_forward_that_vmap_cannot_run_falls_back_to_the_loop(
    kind: str, mode: Any, caplog: pytest.LogCaptureFixture
) -> None:
    torch.manual_seed(3)
    model, probe = VMAP_HOSTILE[kind](), probe_for(torch.randn(N, 4))
    ref = reference_stiffness(model, probe)
    model64, probe64 = float64(model, probe)
    with caplog.at_level("WARNING", logger="monitor.stiffness.backends"):
        result = compute_stiffness(model64, probe64, EngineOptions(mode=mode, batch_size=16))
    assert "one example at a time" in caplog.text
    assert_matches(result.cosine, ref.cosine["val-val"], 1e-9)
    for name in ("train-val", "train-train"):
        assert_matches(result.pair_sets[name].cosine, ref.cosine[name], 1e-9)
    assert [v for v in result.gradient_norms if v is not None] == pytest.approx(ref.norms)
    assert result.probe_loss == pytest.approx(ref.probe_loss, rel=1e-9)


class NeedsABatch(nn.Linear):
    """Fails on any single example: vmap and the loop both see batches of one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] < 2:
            raise RuntimeError("this model needs at least two examples")
        out: torch.Tensor = super().forward(x)
        return out


class RandomInEval(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(super().forward(x), 0.5, training=True)


class CountsCalls(nn.Linear):
    """Writes to a buffer in eval mode: each example would see a different model."""

    def __init__(self, *args: int) -> None:
        super().__init__(*args)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out: torch.Tensor = super().forward(x)
        return out


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (NeedsABatch(4, CLASSES), "needs at least two examples"),
        (RandomInEval(4, CLASSES), "random in eval mode"),
        (CountsCalls(4, CLASSES), r"writes to its own tensors in eval mode \(calls\)"),
    ],
    ids=["fails-per-example", "random", "writes-buffers"],
)
def test_models_the_loop_cannot_measure_either_are_engine_errors(
    model: nn.Module, message: str
) -> None:
    with pytest.raises(EngineError, match=r"torch\.func could not compute") as caught:
        compute_stiffness(model, probe_for(torch.randn(N, 4)))
    assert caught.match(f"one example at a time failed too: .*{message}")


# --- TorchScript: the loop backend ------------------------------------------------------------


def scripted(model: nn.Module, inputs: torch.Tensor | None = None) -> torch.jit.ScriptModule:
    """``torch.jit.script(model)``, or ``torch.jit.trace`` on ``inputs`` when given."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated
        module = torch.jit.script(model) if inputs is None else torch.jit.trace(model, inputs)
    assert isinstance(module, torch.jit.ScriptModule)
    return module


def assert_same_result(got: StiffnessResult, want: StiffnessResult, tol: float) -> None:
    pairs = [(got.cosine, want.cosine), (got.sign, want.sign)]
    for name in want.pair_sets:
        pairs += [(got.pair_sets[name].cosine, want.pair_sets[name].cosine)]
        pairs += [(got.pair_sets[name].sign, want.pair_sets[name].sign)]
    for a, b in pairs:
        assert (a is None) == (b is None)
        if a is None or b is None:
            continue
        assert a.pair_counts == b.pair_counts
        for ra, rb in zip(a.matrix, b.matrix, strict=True):
            assert all(close(x, y, tol) for x, y in zip(ra, rb, strict=True)), (ra, rb)
        for name in ("within", "between"):
            assert close(getattr(a, name), getattr(b, name), tol), name
    assert got.counts == want.counts
    for x, y in zip(got.gradient_norms, want.gradient_norms, strict=True):
        assert x is not None and y is not None and x == pytest.approx(y, rel=tol)
    assert close(got.probe_loss, want.probe_loss, tol)
    assert got.probe_accuracy == want.probe_accuracy


@pytest.mark.parametrize("mode", ["class", "pair"])
@pytest.mark.parametrize("kind", ["script", "trace"])
@pytest.mark.parametrize("arch", ["mlp", "cnn-batchnorm"])
def test_torchscript_model_matches_the_eager_one(
    arch: str, kind: str, mode: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, probe, _ = case(arch)
    module = scripted(model, probe.inputs[:2] if kind == "trace" else None)
    training = module.training
    options = EngineOptions(mode=mode, batch_size=16)
    eager = compute_stiffness(model, probe, options)

    def no_vmap(self: FuncGradients, start: int, stop: int) -> GradientChunk:
        raise AssertionError("TorchScript must not reach torch.func")

    monkeypatch.setattr(FuncGradients, "__call__", no_vmap)
    result = compute_stiffness(module, probe, options)
    assert_same_result(result, eager, 1e-6)
    assert module.training == training


def test_torchscript_flags_restored_and_parameters_selected_by_name() -> None:
    model, probe, _ = case("cnn-batchnorm")
    module = scripted(copy.deepcopy(model))
    module.train()
    options = EngineOptions(include=("5.*",), mode="pair")
    result = compute_stiffness(module, probe, options)
    assert module.training and all(m.training for m in module.modules())
    assert result.counts.parameters == 3 * 4 * 4 * CLASSES + CLASSES
    assert_same_result(result, compute_stiffness(model, probe, options), 1e-6)
    assert all(p.grad is None for p in module.parameters())  # autograd.grad, never .grad


def test_loop_backend_equals_vmap_chunk_by_chunk() -> None:
    model, probe, _ = case("embedding-layernorm")
    selection = select_parameters(model, exclude=("norm.*",))
    args = (model, selection, probe.inputs, probe.targets, torch.device("cpu"))
    by_vmap, by_loop = FuncGradients(*args)(3, 17), LoopGradients(*args)(3, 17)
    assert by_loop.grads.shape == by_vmap.grads.shape == (14, selection.numel)
    assert torch.allclose(by_loop.grads, by_vmap.grads, atol=1e-6)
    assert torch.allclose(by_loop.losses, by_vmap.losses, atol=1e-6)
    assert torch.equal(by_loop.correct, by_vmap.correct)


def test_torchscript_in_bf16() -> None:
    model, probe, ref = case("cnn-batchnorm")
    module = scripted(model)
    result = compute_stiffness(module, probe, EngineOptions(precision="bf16"))
    assert max_error(result.cosine, ref.cosine["val-val"]) < 1e-2  # bf16 forward, fp32 grads


def test_torchscript_with_wrong_outputs_is_an_engine_error() -> None:
    with pytest.raises(EngineError, match=r"\(batch, classes\) logits"):
        compute_stiffness(scripted(Unflattened()), probe_for(torch.randn(N, 4)))
    model, _ = mlp()
    with pytest.raises(EngineError, match="the model fails on probe inputs"):
        compute_stiffness(scripted(model), probe_for(torch.randn(N, 5)))


def test_no_selected_parameter_and_unknown_loss() -> None:
    model, probe, _ = case("mlp")
    with pytest.raises(EngineError, match="no parameter selected"):
        compute_stiffness(model, probe, EngineOptions(include=("nothing.*",)))
    with pytest.raises(ValueError, match="cross_entropy"):
        compute_stiffness(model, probe, loss="mse")


class Wrapped(nn.Module):
    """Returns its inner model's logits wrapped as a tuple or in an object with .logits."""

    def __init__(self, inner: nn.Module, kind: str) -> None:
        super().__init__()
        self.inner, self.kind = inner, kind

    def forward(self, x: torch.Tensor) -> Any:
        logits = self.inner(x)
        if self.kind == "tuple":
            return (logits, x)
        return type("Output", (), {"logits": logits})()


@pytest.mark.parametrize("kind", ["tuple", "logits-attribute"])
def test_wrapped_outputs(kind: str) -> None:
    model, probe, ref = case("mlp")
    result = compute_stiffness(Wrapped(model, kind), probe)
    assert max_error(result.cosine, ref.cosine["val-val"]) < 1e-4


def test_training_flags_restored_even_on_error() -> None:
    model, probe, _ = case("cnn-batchnorm")
    assert isinstance(model, nn.Sequential)
    model.train()
    model[1].eval()  # a frozen BatchNorm inside a training model
    try:
        compute_stiffness(model, probe)
        assert model.training and not model[1].training and model[0].training
        with pytest.raises(EngineError):
            compute_stiffness(model, ProbeSet(probe.inputs, probe.targets + 10))
        assert model.training and not model[1].training
    finally:
        model.eval()


def test_precision_settings() -> None:
    model, probe, ref = case("cnn-batchnorm")
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    tf32 = compute_stiffness(model, probe, EngineOptions(precision="tf32"))
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
    assert tf32.precision == "tf32"
    bf16 = compute_stiffness(model, probe, EngineOptions(precision="bf16", mode="pair"))
    assert bf16.precision == "bf16"
    assert max_error(bf16.cosine, ref.cosine["val-val"]) < 1e-2  # bf16 forward, fp32 grads


def test_result_metadata_without_splits() -> None:
    model, inputs = mlp()
    result = compute_stiffness(model, probe_for(inputs, splits=False), EngineOptions(mode="pair"))
    assert result.pair_sets == {} and result.train_probe_loss is None
    assert result.counts.per_class == (10, 10, 10, 10) and result.counts.train_examples == 0
    assert set(result.timings) >= {"total", "gradients", "stiffness"}
    assert result.device == "cpu" and result.mode == "pair" and result.classes == (0, 1, 2, 3)


class FakeProvider:
    """Raises CUDA out-of-memory for chunks larger than ``fits`` examples."""

    device = torch.device("cpu")

    def __init__(self, fits: int) -> None:
        self.fits = fits

    def __call__(self, start: int, stop: int) -> GradientChunk:
        if stop - start > self.fits:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (fake)")
        rows = stop - start
        return GradientChunk(start, stop, torch.ones(rows, 2), torch.zeros(rows), torch.ones(rows))


def test_out_of_memory_halves_the_chunk() -> None:
    stream = ChunkStream(FakeProvider(fits=3), batch_size=16)
    ranges = [(c.start, c.stop) for c in stream.chunks(0, 20)]
    assert ranges[0] == (0, 2) and ranges[-1][1] == 20
    assert all(b == c for (_, b), (c, _) in itertools.pairwise(ranges))
    assert stream.batch_size == 2
    with pytest.raises(EngineError, match="batch size 1 \\(configured batch_size 16"):
        list(ChunkStream(FakeProvider(fits=0), batch_size=16).chunks(0, 4))


def test_critical_length_interpolates_between_bin_centres() -> None:
    centres = [0.1, 0.3, 0.5, 0.7]
    assert critical_length(centres, [0.4, None, 0.2, -0.2], [5, 0, 5, 5]) == pytest.approx(0.6)
    assert critical_length(centres, [-0.1, 0.2, 0.0, 0.1], [1, 1, 1, 1]) == pytest.approx(0.5)
    assert critical_length(centres, [0.4, 0.3, 0.2, 0.1], [1, 1, 1, 1]) is None


@settings(max_examples=12, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 5), min_size=2, max_size=4),
    batch=st.integers(1, 8),
    seed=st.integers(0, 2**16),
)
def test_modes_agree_on_random_probes(sizes: list[int], batch: int, seed: int) -> None:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, len(sizes))).double()
    targets = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    probe = ProbeSet(torch.randn(len(targets), 3, dtype=torch.float64), targets)
    by_class = compute_stiffness(model, probe, EngineOptions(batch_size=batch))
    by_pair = compute_stiffness(model, probe, EngineOptions(mode="pair", batch_size=batch))
    assert by_class.cosine.pair_counts == by_pair.cosine.pair_counts
    for ra, rb in zip(by_class.cosine.matrix, by_pair.cosine.matrix, strict=True):
        assert all(close(x, y, 1e-10) for x, y in zip(ra, rb, strict=True))


def test_evaluator_checks_the_model_once_across_checkpoints(tmp_path: Path) -> None:
    """The daemon's path: one Evaluator, the factory's model built once, state dicts
    written by a trainer at three steps. The hook backend's setup check runs at the first
    checkpoint only, and every evaluation equals a fresh engine call on those weights."""
    config = parse_config(
        {
            "model": {"factory": "monitor.demo.trainer:build_mlp", "kwargs": {"hidden": 16}},
            "probe": {"factory": "monitor.demo.trainer:probe", "per_class": 10},
            "stiffness": {"device": "cpu", "mode": "class"},
        },
        source=tmp_path / "config.yaml",
    )
    evaluator = Evaluator(config)
    weights = []
    for step in (1, 2, 3):
        torch.manual_seed(step)
        weights.append(build_mlp(16).state_dict())
        torch.save(weights[-1], tmp_path / f"step-{step}.pt")
    checks, hits = SETUP_CACHE.checks, SETUP_CACHE.hits
    results = [evaluator.evaluate(tmp_path / f"step-{step}.pt").result for step in (1, 2, 3)]
    assert (SETUP_CACHE.checks, SETUP_CACHE.hits) == (checks + 1, hits + 2)
    # The Evaluator holds its probe class-sorted (no copy per evaluation); per-example
    # results come back in the probe source's order.
    source = load_probe(config.probe)
    ordered, order = class_ordered(source)
    assert evaluator.probe.targets.tolist() == ordered.targets.tolist()
    assert not torch.equal(order, torch.arange(source.size))  # it was not sorted before
    for state, result in zip(weights, results, strict=True):
        fresh = build_mlp(16)
        fresh.load_state_dict(state)
        want = compute_stiffness(fresh, source, evaluator.options)
        got = [v for row in result.cosine.matrix for v in row]
        assert got == pytest.approx([v for row in want.cosine.matrix for v in row], abs=1e-6)
        assert result.gradient_norms == pytest.approx(want.gradient_norms, rel=1e-5)
        assert len(set(result.gradient_norms)) > 1  # distinct values: an order mix-up shows


def fitted_mlp() -> tuple[nn.Module, ProbeSet]:
    """An MLP that fits its probe with margins of 10-18 logits (p_y = 1 − r, r from ~1e-8 to
    ~1e-4), where torch's fp32 cross-entropy backward rounds the target component away: the
    head is solved by least squares to give exactly those logits. Inputs and width exceed N,
    so the features are well conditioned and the fp32 forward itself stays accurate."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, CLASSES))
    inputs = torch.randn(N, 64)
    targets = torch.arange(N) % CLASSES
    wanted = torch.randn(N, CLASSES, dtype=torch.float64) * 0.5
    wanted[torch.arange(N), targets] += torch.linspace(10.0, 18.0, N, dtype=torch.float64)
    with torch.no_grad():
        hidden = model[1](model[0](inputs)).double()  # (N, 128)
        features = torch.cat([hidden, torch.ones(N, 1, dtype=torch.float64)], dim=1)
        solved = torch.linalg.lstsq(features, wanted).solution  # (65, C)
        model[2].weight.copy_(solved[:-1].T)
        model[2].bias.copy_(solved[-1])
    return model.eval(), ProbeSet(inputs, targets)


def pair_cosines(rows: torch.Tensor) -> torch.Tensor:
    return cosines_of(rows.double() @ rows.double().T)


def cosines_of(gram: torch.Tensor) -> torch.Tensor:
    norms = gram.diagonal().sqrt()
    return gram / norms.unsqueeze(1) / norms.unsqueeze(0)


@pytest.mark.parametrize("backend", ["hooks", "vmap", "loop"])
def test_fp32_gradients_of_fitted_examples_match_float64(backend: str) -> None:
    """Per-pair cosines of a model that fits its probe, fp32 against the float64 reference,
    for every backend: within 1e-5 (DESIGN target), where torch's own loss gave ~1e-1."""
    model, probe = fitted_mlp()
    grads, losses, _ = reference_example_gradients(model, probe)
    exact = pair_cosines(torch.stack(grads))
    assert min(losses) < 1e-6  # the probe really is fitted: the hard case
    selection = select_parameters(model)
    provider = gradient_provider(
        model, selection, probe.inputs, probe.targets, torch.device("cpu"), backend=backend
    )
    chunk = provider(0, probe.size)
    got = cosines_of(dot64(chunk.grads, chunk.grads))
    assert float((got - exact).abs().max()) < 1e-5
    assert chunk.losses.tolist() == pytest.approx(losses, rel=1e-4, abs=1e-12)
    # What torch's fp32 cross-entropy gives on the same model: the test's case is a hard one.
    z = model(probe.inputs).detach().requires_grad_(True)
    (plain,) = torch.autograd.grad(F.cross_entropy(z, probe.targets, reduction="sum"), z)
    z64 = model.double()(probe.inputs.double()).detach().requires_grad_(True)
    (exact_z,) = torch.autograd.grad(F.cross_entropy(z64, probe.targets, reduction="sum"), z64)
    assert float((pair_cosines(plain) - pair_cosines(exact_z)).abs().max()) > 1e-2


class RowsProvider:
    """Hands class mode fixed float32 rows, as the vmap and loop backends do."""

    device = torch.device("cpu")

    def __init__(self, rows: torch.Tensor) -> None:
        self.rows = rows

    def __call__(self, start: int, stop: int) -> GradientChunk:
        n = stop - start
        return GradientChunk(start, stop, self.rows[start:stop].clone(), torch.zeros(n),
                             torch.ones(n, dtype=torch.bool))  # fmt: skip


def test_dense_rows_over_a_million_columns_keep_float64_accuracy() -> None:
    """Rows from the dense backends (float32, (b, P)): float64 class sums, and norms and
    products over blocks of columns summed in float64 (``products``). One float32 norm over
    these million columns was 1.2e-5 off, which put the class matrix 2.5e-5 off."""
    from monitor.stiffness.class_mode import class_mode
    from monitor.stiffness.layout import ProbeLayout

    torch.manual_seed(0)
    n, width = 12, 2**20
    shared = torch.randn(width, dtype=torch.float64)
    rows64 = shared + 0.3 * torch.randn(n, width, dtype=torch.float64)  # stiffness ≈ 0.9
    rows = rows64.float()
    probe = ProbeSet(torch.zeros(n, 1), torch.arange(n) % 2)
    layout = ProbeLayout.from_probe(probe)
    stats = ExampleStats(n, 0.0)
    got = class_mode(ChunkStream(RowsProvider(rows), 4), layout, stats).cosine
    unit = rows.double() / rows.double().norm(dim=1, keepdim=True)  # the same float32 rows
    cos = unit @ unit.T
    for a in range(2):
        members = [i for i in range(n) if i % 2 == a]
        want = sum(float(cos[i, j]) for i in members for j in members if i != j)
        want /= len(members) * (len(members) - 1)
        assert got.matrix[a][a] == pytest.approx(want, abs=1e-7)
