"""``torchrun -m monitor evaluate`` on 2 and 4 CPU processes (gloo), as a user runs it.

Each distributed result is compared with the one-process result of the same config and
checkpoint (float64: every number to 1e-10) and with the slow float64 reference
(``tests.reference``: one backward per example, explicit loops over pairs). The rank-failure
tests make rank 1 raise, exit or hang, and check that the evaluation ends with a clear
error, in bounded time, with no process left waiting on a collective.
"""

from __future__ import annotations

import json
import math
import time
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch

from monitor.config.factory import build_model
from monitor.config.schema import load_config
from monitor.evaluation.evaluator import Evaluator
from monitor.probe.sampling import load_probe
from tests.distributed.project import Project, make_project, torchrun
from tests.reference import Reference, reference_stiffness

pytestmark = pytest.mark.slow

SKIPPED = {"timings"}  # seconds differ from run to run; everything else must not


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    return make_project(tmp_path_factory.mktemp("tiny"))


@cache
def one_process(config: Path, checkpoint: Path) -> dict[str, Any]:
    return Evaluator(load_config(config)).evaluate(checkpoint).to_dict()


@cache
def reference(config: Path, checkpoint: Path) -> Reference:
    loaded = load_config(config)
    model = build_model(loaded.model.factory or "", loaded.model.kwargs)
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    return reference_stiffness(model, load_probe(loaded.probe))


def assert_same(got: Any, want: Any, where: str = "") -> None:
    """Equal structure, equal strings and integers, floats within 1e-10."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), where
        for key in want:
            if key not in SKIPPED:
                assert_same(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for index, (a, b) in enumerate(zip(got, want, strict=True)):
            assert_same(a, b, f"{where}[{index}]")
    elif isinstance(want, float) and not isinstance(got, bool):
        assert isinstance(got, float) and math.isclose(got, want, rel_tol=0, abs_tol=1e-10), (
            where,
            got,
            want,
        )
    else:
        assert got == want, (where, got, want)


def assert_reference(got: dict[str, Any], ref: Reference) -> None:
    """The distributed class matrices against the slow float64 reference."""
    sets = {"val-val": got["cosine"], **{k: v["cosine"] for k, v in got["pair_sets"].items()}}
    assert set(sets) == set(ref.cosine)
    for name, matrix in sets.items():
        want = ref.cosine[name]
        assert matrix["pair_counts"] == want.counts, name
        for row_got, row_want in zip(matrix["matrix"], want.matrix, strict=True):
            assert row_got == pytest.approx(row_want, abs=1e-10), name
        assert matrix["within"] == pytest.approx(want.within, abs=1e-10), name
    if got["sign"] is not None:
        assert got["sign"]["within"] == pytest.approx(ref.sign["val-val"].within, abs=1e-10)
    assert got["counts"]["parameters"] == ref.parameters


def evaluate(
    project: Project,
    ranks: int,
    mode: str,
    *flags: str,
    device: str = "cpu",
    projection: str = "null",
) -> dict[str, Any]:
    """torchrun's JSON, checked equal to one process and, when exact, to the reference."""
    config = project.config(mode, device=device, projection=projection)
    ran = torchrun(ranks, "evaluate", "-c", config, project.checkpoint, "--json", *flags)
    assert ran.returncode == 0, ran.stderr[-3000:]
    lines = ran.stdout.strip().splitlines()
    assert len(lines) == 1, f"rank 0 alone prints one JSON document: {ran.stdout[:500]}"
    got = json.loads(lines[0])
    want = dict(one_process(config, project.checkpoint))
    if device != "cpu":  # rank 0 names its GPU (cuda:0), one process the device asked for
        want["device"] = got["device"]
    assert_same(got, want)
    if projection == "null":
        assert_reference(got, reference(config, project.checkpoint))
    return got


@pytest.mark.parametrize(("mode", "ranks"), [("class", 2), ("class", 4), ("pair", 2), ("pair", 4)])
def test_examples_split_equals_one_process(project: Project, mode: str, ranks: int) -> None:
    got = evaluate(project, ranks, mode)
    assert got["uncertainty"]["within_class"] is not None


@pytest.mark.parametrize(("mode", "ranks"), [("class", 2), ("class", 4), ("pair", 2)])
def test_parameter_split_equals_one_process(project: Project, mode: str, ranks: int) -> None:
    got = evaluate(project, ranks, mode, "--split", "parameters")
    assert got["counts"]["parameters"] == 3 * 9 + 3 + 48 * 8 + 8 + 8 * 3 + 3


#: K = 16 + 3 + 16 + 8 + 16 + 3 = 62 projected values folded into 24: a fold mixes every
#: parameter, so the parameter split must sum its ranks' folded rows to equal one process.
FOLDED = "{dim: 16, seed: 3, total_dim: 24}"


@pytest.mark.parametrize(
    ("split", "mode"),
    [("examples", "class"), ("parameters", "class"), ("parameters", "pair"), ("fsdp", "class")],
)
def test_folded_projection_equals_one_process(project: Project, split: str, mode: str) -> None:
    got = evaluate(project, 2, mode, "--split", split, projection=FOLDED)
    exact = one_process(project.config(mode), project.checkpoint)
    assert got["cosine"]["matrix"] != exact["cosine"]["matrix"]  # it did project


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs two CUDA devices")
@pytest.mark.parametrize("mode", ["class", "pair"])
def test_nccl_on_two_gpus_equals_one_process(project: Project, mode: str) -> None:
    got = evaluate(project, 2, mode, device="cuda")
    assert got["device"].startswith("cuda")


def test_text_output_is_printed_once(project: Project) -> None:
    ran = torchrun(2, "evaluate", "-c", project.config("class"), project.checkpoint)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert ran.stdout.count("class stiffness matrix") == 1, ran.stdout


@pytest.mark.parametrize(
    ("fault", "says"),
    [
        ("raise", "error: rank 1 of 2: 'tiny_model:build': calling it with {} raised"),
        ("exit", "rank 1 exits now"),
        ("hang", "did not answer within the 5 s timeout"),
    ],
)
def test_a_failing_rank_ends_the_evaluation_with_an_error(
    project: Project, fault: str, says: str
) -> None:
    began = time.monotonic()
    ran = torchrun(
        2,
        "evaluate",
        "-c",
        project.config("class"),
        project.checkpoint,
        "--json",
        "--timeout",
        "5",
        env={"TEST_RANK_FAULT": fault},
        timeout=90,
    )
    assert ran.returncode != 0
    assert time.monotonic() - began < 60
    assert says in ran.stderr, ran.stderr[-3000:]
    assert ran.stdout.strip() == ""  # no half result
