"""``report``: figures and a page from a store that a real daemon filled from real checkpoints."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
import yaml

from monitor.cli import main
from monitor.config.schema import load_config
from monitor.demo.summary import summarise
from monitor.evaluation.evaluator import Evaluator
from monitor.report.writer import choose_steps, write_report
from monitor.store.store import Store
from tests.conftest import run_cli
from tests.daemon_harness import DaemonProcess, stored_evaluations, wait_for

EPOCHS = 6
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _config(folder: Path, mode: str, store: str = "state/state.db") -> Path:
    config = {
        "model": {"factory": "monitor.demo.trainer:build_mlp"},
        "probe": {
            "factory": "monitor.demo.trainer:probe",
            "kwargs": {"noise": 0.4},
            "per_class": 10,
        },
        "stiffness": {"mode": mode, "device": "cpu"},
        "runs": [{"name": "digits", "path": "checkpoints"}],
        "watch": {"settle_seconds": 0.2, "poll_interval": 0.2},
        # A rule that must fire early, so the report has a stop to mark.
        "rules": [
            {
                "name": "good-enough",
                "kind": "threshold",
                "metric": "probe_accuracy",
                "mode": "max",
                "stopping_threshold": 0.3,
            }
        ],
        "metrics": {"port": 0},
        "store": {"path": store},
    }
    path = folder / f"config-{mode}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def pair_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six epochs of the demo trainer, evaluated by a real daemon in pair mode: its config."""
    folder = tmp_path_factory.mktemp("report-run")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "monitor.demo.trainer",
            "--out",
            str(folder / "checkpoints"),
            "--epochs",
            str(EPOCHS),
            "--noise",
            "0.4",
            "--stop-file",
            str(folder / "unused"),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    config = _config(folder, "pair")
    daemon = DaemonProcess(config)
    try:
        wait_for(lambda: len(stored_evaluations(config)) == EPOCHS, 120, "six evaluations")
    except AssertionError as error:
        raise AssertionError(f"{error}; the daemon's log:\n{daemon.log}") from None
    finally:
        assert daemon.stop() == 0, daemon.log
    return config


def _referenced(page: Path) -> list[str]:
    html = page.read_text(encoding="utf-8")
    links = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", html)
    return [link for link in links if not link.startswith("https://")]


@pytest.mark.slow
def test_report_renders_every_figure_from_a_real_run(pair_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    done = run_cli("report", "-c", pair_run, "--out", out)
    assert done.returncode == 0, done.stderr
    page = out / "index.html"
    assert done.stdout.strip() == f"report: {page}"
    referenced = _referenced(page)
    assert sorted(referenced) == sorted(
        f"digits-{name}.png"
        for name in ("stiffness", "probe", "classes", "classes-sign", "distance")
    )
    for name in referenced:
        path = out / name
        assert path.read_bytes()[:8] == PNG_MAGIC
        height, width, _ = matplotlib.image.imread(path).shape
        assert width > 400 and height > 200
    html = page.read_text(encoding="utf-8")
    stop = Store(pair_run.parent / "state" / "state.db", readonly=True).stop_for("digits")
    assert stop is not None
    assert f"Stopped at step {stop.payload['step']} by rule good-enough" in html
    assert html.count("<tr class='stop'>") == 1
    assert html.count("<tr") == EPOCHS + 1  # header and one row per evaluation
    assert "Not drawn" not in html


@pytest.mark.slow
def test_heatmap_steps_snap_to_evaluated_checkpoints(pair_run: Path, tmp_path: Path) -> None:
    steps = [e.step for e in stored_evaluations(pair_run)]
    page = write_report(pair_run, tmp_path, steps=[0, steps[2] + 1, 10**9])
    shown = ", ".join(str(step) for step in (steps[0], steps[2], steps[-1]))
    assert f"Class stiffness at steps {shown}" in page.read_text(encoding="utf-8")


@pytest.mark.slow
def test_class_mode_says_why_distance_is_absent(pair_run: Path, tmp_path: Path) -> None:
    config = load_config(_config(pair_run.parent, "class", str(tmp_path / "class.db")))
    evaluator = Evaluator(config)
    with Store(config.store.path) as store:
        for number, stored in enumerate(stored_evaluations(pair_run)[:3]):
            evaluation = evaluator.evaluate(stored.path, run="digits")
            store.record_evaluation(
                "digits",
                path=stored.path,
                fingerprint=f"f{number}",
                size=1,
                mtime_ns=1,
                evaluation=evaluation.to_dict(),
                duration_seconds=0.1,
            )
    page = write_report(config.source, tmp_path / "out")
    html = page.read_text(encoding="utf-8")
    assert "Not drawn: Stiffness against input distance needs pair mode" in html
    assert "The rules have not stopped this run." in html
    assert not (tmp_path / "out" / "digits-distance.png").exists()
    assert all((tmp_path / "out" / name).is_file() for name in _referenced(page))


@pytest.mark.slow
def test_missing_empty_store_and_unknown_run_are_clear_errors(
    pair_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def report(config: Path, *extra: str) -> tuple[int, str]:
        code = main(["report", "-c", str(config), "--out", str(tmp_path / "out"), *extra])
        return code, capsys.readouterr().err.strip()

    missing = tmp_path / "none.db"
    code, error = report(_config(tmp_path, "pair", str(missing)))
    assert (code, error) == (1, f"error: {missing}: no store here (the daemon creates it)")
    Store(tmp_path / "empty.db").close()  # set up by a daemon that has evaluated nothing yet
    code, error = report(_config(tmp_path, "class", str(tmp_path / "empty.db")))
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
