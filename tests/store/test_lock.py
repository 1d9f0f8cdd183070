"""One daemon per store: the lock beside it, across real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from monitor.store.lock import StoreLock, StoreLockedError, lock_path

HOLD = """
import sys, time
from pathlib import Path
from monitor.store.lock import StoreLock
lock = StoreLock(Path(sys.argv[1])).acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path: Path) -> None:
    store = tmp_path / "state" / "state.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLD), str(store)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreLockedError) as caught:
            StoreLock(store).acquire()
        assert str(caught.value).startswith(
            f"{store}: another daemon (PID {holder.pid}) is using this store"
        )
    finally:
        holder.kill()
        holder.wait(10)
    with StoreLock(store):  # a killed holder leaves no stale lock
        assert lock_path(store).read_text().strip() == str(os.getpid())


def test_the_lock_folder_is_private_and_a_planted_symlink_is_not_followed(tmp_path: Path) -> None:
    store = tmp_path / "new" / "state.db"
    with StoreLock(store):
        assert (store.parent.stat().st_mode & 0o777) == 0o700
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    lock_path(store).unlink()
    lock_path(store).symlink_to(target)
    with pytest.raises(StoreLockedError, match="cannot open its lock file"):
        StoreLock(store).acquire()
    assert target.read_text() == "keep"


def test_release_lets_the_next_holder_in(tmp_path: Path) -> None:
    store = tmp_path / "state.db"
    first = StoreLock(store).acquire()
    first.release()
    StoreLock(store).acquire().release()
