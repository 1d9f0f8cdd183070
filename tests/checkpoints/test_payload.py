"""Finding the weights in a loaded payload (``payload.flatten``, ``select_weights``) when
the payload is shaped to hurt: nested past Python's recursion limit, holding itself, or
sharing one dict level after level (2**40 paths in a few hundred bytes of pickle)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from monitor.checkpoints.payload import as_int, flatten, select_weights, step_and_epoch
from monitor.errors import CheckpointError


def test_nesting_deeper_than_the_recursion_limit_is_walked() -> None:
    tree: dict[str, Any] = {"weight": torch.zeros(1)}
    for _ in range(5000):
        tree = {"a": tree}
    assert list(flatten(tree, torch.Tensor)) == ["a." * 5000 + "weight"]


def test_a_dict_holding_itself_is_walked_once() -> None:
    tree: dict[str, Any] = {"weight": torch.zeros(1)}
    tree["self"] = tree
    tree["child"] = {"bias": torch.ones(1), "parent": tree}
    assert list(flatten(tree, torch.Tensor)) == ["weight", "child.bias"]


def test_shared_dicts_are_walked_as_often_as_they_occur_up_to_a_bound() -> None:
    """Sharing is real (Lightning saves one dict under three loops): walked per occurrence.
    Forty levels of it is not: a ``CheckpointError`` once the walk passes its bound."""
    shared = {"weight": torch.zeros(1)}
    assert list(flatten({"a": shared, "b": shared}, torch.Tensor)) == ["a.weight", "b.weight"]
    tree: dict[str, Any] = {}
    for _ in range(40):
        tree = {"a": tree, "b": tree}
    with pytest.raises(CheckpointError, match="nested values of over") as info:
        select_weights(tree, None, torch.Tensor, Path("x.pt"))
    assert info.value.reason == "corrupt" and str(info.value).startswith("x.pt: ")


def test_order_is_the_order_of_the_file() -> None:
    tree = {"b": {"y": torch.zeros(1), "x": torch.zeros(1)}, "a": torch.zeros(1)}
    assert list(flatten(tree, torch.Tensor)) == ["b.y", "b.x", "a"]


def test_a_step_that_is_not_text_is_no_step() -> None:
    """Found by fuzzing: a TorchScript ``extra/step`` file of bytes that are not UTF-8
    raised UnicodeDecodeError while reading the step."""
    assert step_and_epoch({"step": b"\xbc0", "epoch": b"3"}) == (3, 3)
    assert as_int(b"42") == 42 and as_int(b"\xff") is None
