"""Held writes land in order, once, and survive a store that refuses them."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.daemon.held_writes import HeldWrites
from monitor.store.store import Store, StoreError


def test_a_failing_write_stays_at_the_head_with_everything_after_it(tmp_path: Path) -> None:
    landed: list[str] = []
    fail = {"b": 1}

    def write(name: str):  # type: ignore[no-untyped-def]
        def run(store: Store) -> None:
            if fail.get(name, 0) > 0:
                fail[name] -= 1
                raise StoreError("disk full")
            landed.append(name)

        return run

    held = HeldWrites()
    for name in "abc":
        held.add(write(name))
    with Store(tmp_path / "s.db") as store:
        with pytest.raises(StoreError):
            held.flush(store)
        assert landed == ["a"] and len(held) == 2
        assert held.flush(store) is True
        assert held.flush(store) is False
    assert landed == ["a", "b", "c"]


def test_a_follow_up_runs_right_after_its_write(tmp_path: Path) -> None:
    landed: list[str] = []
    held = HeldWrites()

    def first(store: Store) -> None:
        landed.append("first")
        held.add_next(lambda store: landed.append("follow-up"))

    held.add(first)
    held.add(lambda store: landed.append("later"))
    with Store(tmp_path / "s.db") as store:
        held.flush(store)
    assert landed == ["first", "follow-up", "later"]


def test_a_running_write_can_be_replaced_before_it_raises(tmp_path: Path) -> None:
    landed: list[str] = []
    held = HeldWrites()

    def half(store: Store) -> None:
        held.replace_running(lambda store: landed.append("repair"))
        raise StoreError("failed half way")

    held.add(half)
    with Store(tmp_path / "s.db") as store:
        with pytest.raises(StoreError):
            held.flush(store)
        held.flush(store)
    assert landed == ["repair"]
