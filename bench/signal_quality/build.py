"""Build (or load) the cached histories: one JSON file per scenario under bench/cache/.

Runs are independent, so ``jobs`` worker processes train them side by side, each held to one
thread (two busy workers on a 2-core machine, not two workers fighting over four threads).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from bench.signal_quality.scenarios import Scenario
from bench.signal_quality.training import cache_path, run_scenario, write_history

CACHE = Path(__file__).resolve().parent.parent / "cache" / "signal_quality"


def _work(scenario: Scenario, cache: Path) -> tuple[str, float]:
    import torch

    torch.set_num_threads(1)
    history = run_scenario(scenario)
    write_history(cache_path(cache, scenario), history)
    return scenario.name, float(history["seconds"]["total"])


def build(
    scenarios: list[Scenario],
    cache: Path = CACHE,
    rebuild: bool = False,
    jobs: int = 2,
    log: Callable[[str], None] = print,
) -> float:
    """Train every scenario without a cached history (all of them with ``rebuild``).

    Returns the wall-clock seconds spent training.
    """
    todo = [s for s in scenarios if rebuild or not cache_path(cache, s).exists()]
    if not todo:
        return 0.0
    started = time.perf_counter()
    log(f"training {len(todo)} scenario(s) with {jobs} worker(s)")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_work, scenario, cache) for scenario in todo]
        for done, future in enumerate(futures, start=1):
            name, seconds = future.result()
            log(f"[{done}/{len(todo)}] {name}: {seconds:.1f} s")
    return time.perf_counter() - started


def load_histories(scenarios: list[Scenario], cache: Path = CACHE) -> list[dict[str, Any]]:
    """The cached history of every scenario, in the suite's order; a missing one is an error."""
    histories = []
    for scenario in scenarios:
        path = cache_path(cache, scenario)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no cached history; run with --rebuild")
        histories.append(json.loads(path.read_text()))
    return histories
