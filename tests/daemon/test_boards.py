"""The daemon's TensorBoard wiring in process, over a real store: what is written from the
stored history, what is left out (no step; TensorBoard off), and that nothing raises."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from monitor.config.schema import MonitorConfig, load_config
from monitor.daemon.boards import Boards
from monitor.evaluation.evaluator import Evaluation
from monitor.exporter.metrics import MonitorMetrics
from monitor.exporter.tensorboard import written_steps
from monitor.stiffness.result import StiffnessResult
from monitor.store.store import Store
from tests.daemon_harness import make_config
from tests.exporter.test_tensorboard import read, result, scalar_series


def setup(tmp_path: Path, **sections: dict[str, object]) -> tuple[MonitorConfig, Store]:
    config = load_config(make_config(tmp_path / "monitor", {"digits": tmp_path / "run"},
                                     **sections))  # fmt: skip
    return config, Store(tmp_path / "state.db")


def evaluation(step: int | None, shift: float = 0.0) -> Evaluation:
    data = result(shift)
    return Evaluation(f"step_{step}.pt", "state_dict", step, "filename",
                      StiffnessResult.from_dict(data), run="digits")  # fmt: skip


def store_evaluation(store: Store, ev: Evaluation) -> int:
    return store.record_evaluation("digits", path=ev.checkpoint, fingerprint=ev.checkpoint,
                                   size=1, mtime_ns=1, evaluation=ev.to_dict(),
                                   duration_seconds=0.1)  # fmt: skip


def test_the_stored_history_is_written_with_its_verdicts_and_stop(tmp_path: Path) -> None:
    config, store = setup(tmp_path)
    with store:
        ids = [store_evaluation(store, evaluation(step, step / 100)) for step in (5, 15)]
        store.record_decisions("digits", ids[0], [])  # judged, no rules: no verdict tags
        store.record_stop("digits", ids[1], "late", "because", {})
        boards = Boards(config, MonitorMetrics())
        boards.start(store)
        boards.close()
    folder = tmp_path / "run" / "stiffness-monitor"
    assert written_steps(folder) == {5, 15}
    events = read(folder)
    assert scalar_series(events, "stop/raised") == [(5, 0.0), (15, 1.0)]
    [reason] = events.Tensors("stop/reason/text_summary")
    assert reason.step == 15 and reason.tensor_proto.string_val == [b"rule late: because"]


def test_an_evaluation_without_a_step_is_left_out_and_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config, store = setup(tmp_path)
    metrics = MonitorMetrics()
    metrics.add_run("digits")
    with store, caplog.at_level(logging.INFO, logger="monitor.tensorboard"):
        boards = Boards(config, metrics)
        boards.start(store)
        for shift in (0.0, 0.1):
            stepless = evaluation(None, shift)
            boards.evaluated(store, store_evaluation(store, stepless), stepless)
        boards.close()
    assert not (tmp_path / "run" / "stiffness-monitor").exists()
    assert [r.getMessage() for r in caplog.records] == [
        "tensorboard: step_None.pt has no step; evaluations without one are not written"
    ]
    failures = metrics.registry.get_sample_value(
        "stiffness_tensorboard_write_failures_total", {"run": "digits"}
    )
    assert failures == 0  # left out on purpose is not a failure


def test_off_by_config_nothing_is_read_or_written(tmp_path: Path) -> None:
    config, store = setup(tmp_path, tensorboard={"enabled": False})
    with store:
        stored = evaluation(7)
        evaluation_id = store_evaluation(store, stored)
        boards = Boards(config, MonitorMetrics())
        boards.start(store)
        boards.evaluated(store, evaluation_id, stored)
        boards.close()
    assert not (tmp_path / "run").exists()


def test_each_attempt_is_a_run_of_its_own_with_its_own_stop(tmp_path: Path) -> None:
    config, store = setup(tmp_path)
    folder = tmp_path / "run" / "stiffness-monitor"
    with store:
        first = [store_evaluation(store, evaluation(step)) for step in (10, 20)]
        store.record_stop("digits", first[1], "late", "because", {}, 1)
        store.start_attempt("digits", "the step went back from 20 to 5")
        rerun = evaluation(5, 0.2)
        rerun_id = store.record_evaluation(
            "digits", path="again/step_5.pt", fingerprint="again-5", size=1, mtime_ns=2,
            evaluation=rerun.to_dict(), duration_seconds=0.1, attempt=2,
        )  # fmt: skip
        boards = Boards(config, MonitorMetrics())
        boards.start(store)  # the stored history: both attempts
        assert written_steps(folder) == {10, 20}
        assert written_steps(folder / "attempt-2") == {5}
        store.start_attempt("digits", "reset by hand")
        live = evaluation(3, 0.3)  # stored under attempt 3, then written as the daemon does
        live_id = store.record_evaluation(
            "digits", path="third/step_3.pt", fingerprint="third-3", size=1, mtime_ns=3,
            evaluation=live.to_dict(), duration_seconds=0.1, attempt=3,
        )  # fmt: skip
        boards.evaluated(store, live_id, live)
        boards.close()
    assert rerun_id < live_id
    assert scalar_series(read(folder), "stop/raised") == [(10, 0.0), (20, 1.0)]
    assert scalar_series(read(folder / "attempt-2"), "stop/raised") == [(5, 0.0)]
    assert scalar_series(read(folder / "attempt-3"), "stop/raised") == [(3, 0.0)]
