"""Reruns into the same folder are new attempts (issue 14): the rule that tells them apart."""

from __future__ import annotations

import pytest

from monitor.daemon.attempts import Evaluated, new_attempt_reason

SECOND = 1_000_000_000  # ns
RUN = [
    ("/r/step_24.pt", 24, "a", 1 * SECOND),
    ("/r/step_48.pt", 48, "b", 2 * SECOND),
    ("/r/step_384.pt", 384, "c", 3 * SECOND),
]


@pytest.mark.parametrize(
    ("evaluated", "path", "step", "fingerprint", "mtime", "expected"),
    [
        (RUN, "/r/step_408.pt", 408, "d", 4 * SECOND, None),  # the run goes on
        (RUN, "/r/step_24.pt", 24, "z", 4 * SECOND, "/r/step_24.pt was replaced (step 24, now 24)"),
        (RUN, "/r/other_24.pt", 24, "z", 4 * SECOND, "the step went back from 384 to 24"),
        (RUN, "/r/step_12.pt", 12, "z", 2 * SECOND, None),  # a slow writer finishing late
        (RUN, "/r/last.ckpt", 384, "z", 4 * SECOND, None),  # a second file at the same step
        (RUN, "/r/step_x.pt", None, "z", 4 * SECOND, None),  # no step says nothing
        ([], "/r/step_1.pt", 1, "z", 4 * SECOND, None),  # the first checkpoint of an attempt
        (RUN, "/r/step_384.pt", 400, "z", 4 * SECOND, None),  # rewritten at a higher step
    ],
    ids=[
        "goes-on",
        "replaced",
        "step-back",
        "slow-writer",
        "same-step",
        "no-step",
        "first",
        "rewritten-higher",
    ],
)
def test_a_new_attempt_begins_only_on_a_rerun(
    evaluated: list[Evaluated],
    path: str,
    step: int | None,
    fingerprint: str,
    mtime: int,
    expected: str | None,
) -> None:
    assert new_attempt_reason(evaluated, path, step, fingerprint, mtime) == expected
