"""Who computes what, without processes: spans, Gram rectangles, parameter shares, and how
torchrun's environment and ``stiffness.device`` are read."""

from __future__ import annotations

from fnmatch import fnmatchcase

import pytest
import torch

from monitor.distributed.launch import Launch, rank_device
from monitor.distributed.shares import (
    example_spans,
    gram_tasks,
    literal_pattern,
    parameter_shares,
)
from monitor.errors import ConfigError, EngineError


@pytest.mark.parametrize(("size", "world"), [(10, 1), (10, 3), (7, 7), (1000, 4)])
def test_example_spans_cover_the_probe_in_order(size: int, world: int) -> None:
    spans = example_spans(size, world)
    assert spans[0][0] == 0 and spans[-1][1] == size
    assert all(spans[r][1] == spans[r + 1][0] for r in range(world - 1))
    lengths = [b - a for a, b in spans]
    assert min(lengths) >= 1 and max(lengths) - min(lengths) <= 1


def test_fewer_examples_than_ranks_is_an_error() -> None:
    with pytest.raises(EngineError, match="3 examples, fewer than the 4 ranks"):
        example_spans(3, 4)


@pytest.mark.parametrize("world", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("size", [6, 13, 40])
def test_gram_tasks_cover_every_entry_exactly_once(size: int, world: int) -> None:
    if size < world:
        return
    spans = example_spans(size, world)
    times = torch.zeros(size, size, dtype=torch.int64)
    products = []
    for rank, (a, b) in enumerate(spans):
        mine = torch.zeros(size, size, dtype=torch.int64)
        mine[a:b, a:b] = torch.ones(b - a, b - a, dtype=torch.int64).triu()  # own triangle
        for (r0, r1), (c0, c1) in gram_tasks(rank, spans):
            assert a <= r0 <= r1 <= b, "rows are the rank's own examples"
            mine[r0:r1, c0:c1] += 1
        products.append(int(mine.sum()))
        times += mine + mine.T - torch.diag(mine.diagonal())  # with the mirror images
    assert bool((times == 1).all())
    # Balanced: ranks differ by at most the rounding of spans and halves.
    n = size // world + 1
    assert max(products) - min(products) <= 2 * n * world


def test_two_ranks_share_the_cross_block_evenly() -> None:
    spans = example_spans(8, 2)
    assert gram_tasks(0, spans) == [((0, 4), (4, 6))]  # all rows, first half of the columns
    assert gram_tasks(1, spans) == [((6, 8), (0, 4))]  # second half of the rows, all columns


def test_parameter_shares_are_balanced_whole_tensors_in_model_order() -> None:
    names = ["a", "b", "c", "d", "e"]
    sizes = [100, 10, 60, 50, 5]
    shares = parameter_shares(names, sizes, 2)
    assert sorted(name for share in shares for name in share) == names
    assert shares == [["a", "b", "e"], ["c", "d"]]  # 115 and 110: largest first, least loaded
    for share in shares:
        assert share == [n for n in names if n in share]


def test_more_ranks_than_parameter_tensors_is_an_error() -> None:
    with pytest.raises(EngineError, match="2 selected parameter tensors, fewer than the 3 ranks"):
        parameter_shares(["w", "b"], [4, 2], 3)


@pytest.mark.parametrize(
    ("name", "impostor"),
    [("layer.0.weight", "layer.0.weights"), ("x?", "xy"), ("a*", "abc"), ("odd[n]", "oddn")],
)
def test_literal_pattern_matches_only_its_name(name: str, impostor: str) -> None:
    pattern = literal_pattern(name)
    assert fnmatchcase(name, pattern)
    assert not fnmatchcase(impostor, pattern)


def test_launch_is_read_from_torchruns_environment() -> None:
    assert Launch.from_env({}) is None
    env = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}
    assert Launch.from_env(env) == Launch(rank=1, world_size=4, local_rank=1)


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "RANK"),
        ({"WORLD_SIZE": "2", "RANK": "x", "LOCAL_RANK": "0"}, "RANK"),
        ({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"}, "0 <= RANK < WORLD_SIZE"),
    ],
)
def test_a_broken_torchrun_environment_is_a_config_error(env: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        Launch.from_env(env)


def test_each_rank_gets_its_own_device_or_a_clear_error() -> None:
    launch = Launch(rank=1, world_size=2, local_rank=1)
    assert rank_device("cpu", launch) == torch.device("cpu")
    if not torch.cuda.is_available():
        assert rank_device("auto", launch) == torch.device("cpu")
        with pytest.raises(EngineError, match="no CUDA device"):
            rank_device("cuda", launch)
    with pytest.raises(ConfigError, match=r"stiffness\.device: expected auto, cuda or cpu"):
        rank_device("cuda:0", launch)
