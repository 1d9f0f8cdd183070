"""``report``: figures and a page from a store that a real daemon filled from real checkpoints."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from monitor.cli import main
from monitor.demo.summary import summarise
from monitor.report.writer import choose_steps
from monitor.store.store import Store
from tests.report.conftest import report_config


@pytest.mark.slow
def test_missing_empty_store_and_unknown_run_are_clear_errors(
    pair_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def report(config: Path, *extra: str) -> tuple[int, str]:
        code = main(["report", "-c", str(config), "--out", str(tmp_path / "out"), *extra])
        return code, capsys.readouterr().err.strip()

    missing = tmp_path / "none.db"
    code, error = report(report_config(tmp_path, "pair", str(missing)))
    assert (code, error) == (1, f"error: {missing}: no store here (the daemon creates it)")
    Store(tmp_path / "empty.db").close()  # set up by a daemon that has evaluated nothing yet
    code, error = report(report_config(tmp_path, "class", str(tmp_path / "empty.db")))
    assert code == 1 and len(error.splitlines()) == 1
    assert "empty.db: no evaluations with a step in the store yet" in error
    code, error = report(pair_run, "--run", "nope")
    store = pair_run.parent / "state" / "state.db"
    assert (code, error) == (2, f"error: --run nope: no such run in {store} (runs: digits)")
    assert not (tmp_path / "out").exists()


def test_a_missing_extra_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    assert main(["report", "-c", str(tmp_path / "c.yaml"), "--out", str(tmp_path)]) == 2
    assert "pip install 'stiffness-monitor[demo]'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("steps", "wanted", "expected"),
    [
        ([10, 20, 30], None, [10, 20, 30]),
        ([1, 2, 3, 4, 5, 6, 7], None, [1, 3, 5, 7]),
        ([100, 200, 300, 400], [0, 260, 9999], [100, 300, 400]),
        ([100, 200, 300], [150], [100]),  # a tie goes to the earlier checkpoint
        ([], [5], []),
    ],
    ids=["few", "spread", "nearest", "tie", "empty"],
)
def test_choose_steps(steps: list[int], wanted: list[int] | None, expected: list[int]) -> None:
    assert choose_steps(steps, wanted) == expected


@pytest.mark.slow
def test_the_summary_sets_the_stop_against_the_best_checkpoint(
    pair_run: Path, tmp_path: Path
) -> None:
    database = pair_run.parent / "state" / "state.db"
    stop_file = pair_run.parent / "checkpoints" / "STOP"
    text = summarise(database, "digits", stop_file, tmp_path / "index.html", 10, False)
    stop = json.loads(stop_file.read_text())
    assert f"stopped at epoch 1 (step {stop['step']}) by rule good-enough" in text
    assert f"the trainer did NOT act on the stop file {stop_file} and ended after epoch 6" in text
    assert re.search(r"at the stop: +probe accuracy 0\.\d+, clean test accuracy 0\.\d+\n", text)
    assert re.search(
        r"best checkpoint: .* clean test accuracy 0\.\d+ \(epoch \d, of 6 saved\)", text
    )

    with Store(database, readonly=True) as source:  # the same results, but no stop raised
        evaluations = source.evaluations("digits")
    with Store(tmp_path / "nostop.db") as store:
        for e in evaluations:
            store.record_evaluation(
                "digits",
                path=e.path,
                fingerprint=e.fingerprint,
                size=e.size,
                mtime_ns=e.mtime_ns,
                evaluation=e.result,
                duration_seconds=e.duration_seconds,
            )
    text = summarise(tmp_path / "nostop.db", "digits", tmp_path / "STOP", tmp_path, 10, False)
    assert "the rules did NOT stop this run: it trained 6 of 10 epochs" in text
    assert "stopped at" not in text
