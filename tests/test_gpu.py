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
from tests.test_engine import ARCHITECTURES, case, max_error

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
    from monitor.evaluation import cap_device_memory

    device = torch.device("cuda")
    total = torch.cuda.get_device_properties(device).total_memory
    fraction = cap_device_memory(device, 2**30)
    assert fraction is not None and fraction == pytest.approx(2**30 / total)
    try:
        with pytest.raises(torch.cuda.OutOfMemoryError):
            torch.empty(2 * 2**30, dtype=torch.uint8, device=device)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        torch.cuda.empty_cache()
