"""Which failures are recorded, held back or forgotten, with real files and a real store."""

from __future__ import annotations

import os
from pathlib import Path

from monitor.daemon.bad_input import BadInput, Failure, current_fingerprint
from monitor.store.store import Store
from monitor.watching import Candidate
from monitor.watching.fingerprints import fingerprint, observe


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def candidate_of(path: Path, run: str = "a") -> Candidate:
    observation = observe(path, False)
    assert observation is not None
    return Candidate(run, path, False, 1, observation.size, observation.mtime_ns,
                     fingerprint(path, False, observation))  # fmt: skip


def test_an_unchanged_corrupt_file_is_recorded_after_the_wait(tmp_path: Path) -> None:
    path = tmp_path / "step_1.pt"
    path.write_bytes(os.urandom(1000))
    clock = Clock()
    with Store(tmp_path / "s.db") as store:
        bad = BadInput(store, 30.0, clock=clock)
    failure = Failure(candidate_of(path), "corrupt", "bad bytes")
    assert bad.judge(failure) is None
    clock.now = 29.0
    assert bad.confirmed() == []
    clock.now = 30.0
    assert bad.confirmed() == [failure]
    assert bad.confirmed() == []


def test_a_file_that_changes_after_failing_was_not_settled(tmp_path: Path) -> None:
    path = tmp_path / "step_1.pt"
    path.write_bytes(os.urandom(1000))
    clock = Clock()
    with Store(tmp_path / "s.db") as store:
        bad = BadInput(store, 30.0, clock=clock)
    failure = Failure(candidate_of(path), "corrupt", "bad bytes")
    assert bad.judge(failure) is None
    with path.open("ab") as handle:
        handle.write(b"more")
    clock.now = 31.0
    assert bad.confirmed() == []
    assert current_fingerprint(failure.candidate) != failure.candidate.fingerprint


def test_failures_other_than_corrupt_are_recorded_at_once(tmp_path: Path) -> None:
    path = tmp_path / "step_1.pt"
    path.write_bytes(b"x")
    with Store(tmp_path / "s.db") as store:
        bad = BadInput(store, 30.0)
    failure = Failure(candidate_of(path), "mismatch", "shapes differ")
    assert bad.judge(failure) is failure


def test_stored_failures_are_known_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "step_1.pt"
    path.write_bytes(b"x")
    candidate = candidate_of(path)
    with Store(tmp_path / "s.db") as store:
        store.record_error("a", str(path), "corrupt", "bad", candidate.fingerprint)
        store.record_error("a", str(path), "mismatch", "shapes", "other-fingerprint")
        bad = BadInput(store, 30.0)
    assert bad.skip(candidate)  # corrupt bytes: not read again
    assert not bad.skip(Candidate("b", path, False, 1, 1, 1, candidate.fingerprint))
    assert bad.known_fingerprints() == {("a", candidate.fingerprint), ("a", "other-fingerprint")}
    again = Failure(Candidate("a", path, False, 1, 1, 1, "other-fingerprint"), "mismatch", "x")
    assert bad.judge(again) is None  # recorded before: not again
    assert bad.judge(Failure(again.candidate, "format", "x")) is not None


def test_an_evaluated_version_forgets_the_doubt(tmp_path: Path) -> None:
    path = tmp_path / "step_1.pt"
    path.write_bytes(os.urandom(100))
    clock = Clock()
    with Store(tmp_path / "s.db") as store:
        bad = BadInput(store, 1.0, clock=clock)
    candidate = candidate_of(path)
    bad.judge(Failure(candidate, "corrupt", "bad"))
    bad.forget(candidate)
    clock.now = 5.0
    assert bad.confirmed() == []
