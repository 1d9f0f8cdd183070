"""The CUDA path: the engine on a GPU against the float64 reference, and the CLI on cuda.

Skipped cleanly without CUDA; run on the device machine (``python -m pytest -m gpu``).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from monitor.stiffness import EngineOptions, compute_stiffness
from tests.conftest import EXAMPLE_CONFIG, run_cli
from tests.stiffness.test_engine import ARCHITECTURES, case, max_error

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize(
    ("precision", "tolerance"), [("fp32", 1e-5), ("tf32", 5e-3), ("bf16", 2e-2)]
)
@pytest.mark.parametrize("mode", ["class", "pair"])
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_cuda_engine_matches_float64_reference(
    arch: str, mode: Any, precision: Any, tolerance: float
) -> None:
    model, probe, ref = case(arch)
    result = compute_stiffness(
        copy.deepcopy(model), probe, EngineOptions(mode=mode, precision=precision), "cuda"
    )
    assert result.device.startswith("cuda")
    assert max_error(result.cosine, ref.cosine["val-val"]) < tolerance
    for name in ("train-val", "train-train"):
        assert max_error(result.pair_sets[name].cosine, ref.cosine[name]) < tolerance


@pytest.mark.parametrize("mode", ["class", "pair"])
def test_probe_on_the_device_as_the_evaluator_puts_it(mode: Any) -> None:
    """The Evaluator moves the probe (inputs, targets, splits) to the GPU once; class mode
    sorts it by split and class on the host."""
    model, probe, ref = case("cnn-batchnorm")
    on_gpu = type(probe)(
        probe.inputs.cuda(),
        probe.targets.cuda(),
        probe.is_train.cuda(),  # type: ignore[union-attr]
    )
    result = compute_stiffness(copy.deepcopy(model), on_gpu, EngineOptions(mode=mode), "cuda")
    assert max_error(result.cosine, ref.cosine["val-val"]) < 1e-5
    for name in ("train-val", "train-train"):
        assert max_error(result.pair_sets[name].cosine, ref.cosine[name]) < 1e-5


@pytest.mark.slow
def test_evaluate_on_cuda(example_checkpoints: list[Path]) -> None:
    done = run_cli(
        "evaluate", "-c", EXAMPLE_CONFIG, example_checkpoints[-1], "--json", "--device", "cuda"
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["device"].startswith("cuda")
    assert len(result["cosine"]["matrix"]) == 10


def test_memory_limit_caps_the_process_on_the_gpu() -> None:
    from monitor.evaluation.evaluator import cap_device_memory

    device = torch.device("cuda", torch.cuda.current_device())
    total = torch.cuda.get_device_properties(device).total_memory
    fraction = cap_device_memory(torch.device("cuda"), 2**30)  # no index, as `auto` gives
    assert fraction is not None and fraction == pytest.approx(2**30 / total)
    try:
        with pytest.raises(torch.cuda.OutOfMemoryError):
            torch.empty(2 * 2**30, dtype=torch.uint8, device=device)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        torch.cuda.empty_cache()


# --- the hook backend (issue 3) on CUDA ----------------------------------------------------


@pytest.mark.parametrize("layer", ["linear", "conv1d", "conv2d", "conv3d", "batchnorm2d",
                                   "layernorm", "groupnorm", "rmsnorm", "embedding"])  # fmt: skip
def test_cuda_layer_rules_match_reference(layer: str) -> None:
    from monitor.stiffness.hooks_backend import HookGradients
    from monitor.stiffness.layers import FactoredRows
    from tests.reference import example_gradients
    from tests.stiffness.test_layer_rules import RULE_CASES, hooks_for, probe_of

    for seed in range(3):
        model, x = RULE_CASES[layer](torch.Generator().manual_seed(seed))
        model = model.double().eval()
        probe = probe_of(x)
        want = torch.stack(example_gradients(model, probe)[0])
        provider = hooks_for(model.cuda(), probe, "cuda:0")
        assert isinstance(provider, HookGradients) and not provider.fallback_names
        rows = provider(0, probe.size).grads
        assert isinstance(rows, FactoredRows) and rows.device.type == "cuda"
        torch.testing.assert_close(rows.squared_norms64(), (want * want).sum(1))
        torch.testing.assert_close(rows.dot64(provider(0, 3).grads), want @ want[:3].T)  # type: ignore[arg-type]
        # Class sums, all slots in one product per layer (equal slots: batched).
        weights = torch.rand(probe.size, dtype=torch.float64)
        expected = torch.zeros(3, want.shape[1], dtype=torch.float64)
        expected.index_add_(0, probe.targets, want * weights.unsqueeze(1))
        sums = torch.zeros_like(expected, device="cuda")
        every = torch.arange(probe.size, device="cuda")
        rows.add_class_sums(sums, probe.targets.cuda(), every, weights.cuda())
        torch.testing.assert_close(sums.cpu(), expected)


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
@pytest.mark.parametrize("mode", ["class", "pair"])
def test_cuda_mixed_model_matches_reference(mode: Any, precision: Any) -> None:
    from tests.reference import reference_stiffness
    from tests.stiffness.test_layer_rules import mixed

    model, probe = mixed()
    ref = reference_stiffness(model, probe)
    result = compute_stiffness(
        copy.deepcopy(model), probe, EngineOptions(mode=mode, precision=precision), "cuda"
    )
    tolerance = {"fp32": 1e-5, "tf32": 5e-3, "bf16": 3e-2}[precision]
    assert max_error(result.cosine, ref.cosine["val-val"]) < tolerance


def test_cuda_class_mode_memory_is_flat_in_n() -> None:
    """Class mode keeps the class sums and one chunk: peak memory must not grow with N."""
    from tests.stiffness.test_layer_rules import mixed

    model, probe = mixed()
    peaks = []
    for n in (64, 512):
        torch.manual_seed(0)
        inputs = torch.randn(n, *probe.inputs.shape[1:])
        big = type(probe)(inputs, torch.arange(n) % 3)
        torch.cuda.reset_peak_memory_stats()
        compute_stiffness(copy.deepcopy(model), big, EngineOptions(batch_size=32), "cuda")
        peaks.append(torch.cuda.max_memory_allocated())
    assert peaks[1] < 1.25 * peaks[0] + 2**20
