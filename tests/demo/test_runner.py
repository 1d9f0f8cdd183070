"""``stiffness-monitor demo`` end to end: a real trainer and a real daemon, stopped by the file."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from monitor.cli import main
from monitor.demo.runner import MARKER, prepare_workdir
from tests.conftest import REPO, run_cli
from tests.daemon_harness import wait_for

EPOCHS = 40


@pytest.mark.slow
def test_the_demo_stops_the_trainer_through_the_stop_file(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    started = time.monotonic()
    done = run_cli("demo", "--quick", "--workdir", workdir, "--epochs", str(EPOCHS))
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert re.search(r"^metrics: http://127\.0\.0\.1:\d+/metrics$", out, re.M), out
    progress = re.findall(r"^epoch +(\d+) +within-class +(-?[\d.]+) .* rules: (.*)$", out, re.M)
    assert len(progress) >= 6, out
    assert [int(epoch) for epoch, _, _ in progress] == list(range(1, len(progress) + 1))
    assert any(state.startswith("STOP") for _, _, state in progress)

    stop = json.loads((workdir / "checkpoints" / "STOP").read_text())
    assert stop["run"] == "digits" and stop["rule"] and stop["reason"]
    saved = sorted(int(p.stem.split("_")[1]) for p in (workdir / "checkpoints").glob("step_*.pt"))
    assert stop["step"] in saved
    assert len(saved) < EPOCHS  # the trainer ended early ...
    trainer_log = (workdir / "trainer.log").read_text()
    assert f"stopping after epoch {len(saved)}" in trainer_log  # ... because of the file

    stop_epoch = saved.index(stop["step"]) + 1
    assert f"stopped at epoch {stop_epoch} (step {stop['step']}) by rule {stop['rule']}" in out
    assert (
        f"the trainer found the stop file {workdir / 'checkpoints' / 'STOP'} and ended after "
        f"epoch {len(saved)} of {EPOCHS}: {EPOCHS - len(saved)} epochs saved"
    ) in out
    assert re.search(r"at the stop: +probe accuracy 0\.\d+, clean test accuracy 0\.\d+", out)
    assert re.search(r"best checkpoint: +probe accuracy 0\.\d+, clean test accuracy 0\.\d+", out)
    report = workdir / "report" / "index.html"
    assert f"report: {report}" in out and report.is_file()
    assert (workdir / "config.yaml").is_file()
    print(f"demo --quick took {seconds:.1f} s, stopped after {len(saved)} epochs")


@pytest.mark.slow
def test_ctrl_c_stops_the_trainer_and_the_daemon(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    lines: list[str] = []
    demo = subprocess.Popen(
        [sys.executable, "-m", "monitor", "demo", "--workdir", str(workdir), "--epochs", "200"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # A terminal's Ctrl-C reaches a process whose SIGINT is not ignored. Under a shell's
        # background job (``cmd &``) it is ignored and inherited, and Python then installs
        # no KeyboardInterrupt handler: give the demo the terminal's default.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert demo.stdout is not None
        for line in demo.stdout:
            lines.append(line)
            if line.startswith("epoch   2"):
                break
        url = next(line.split()[1] for line in lines if line.startswith("metrics: "))
        demo.send_signal(signal.SIGINT)  # what Ctrl-C in a terminal sends the demo
        code = demo.wait(timeout=30)
        rest = demo.stdout.read()
        assert code == 130, "".join(lines) + rest
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    with pytest.raises(urllib.error.URLError):  # the daemon is gone ...
        urllib.request.urlopen(url, timeout=2)
    checkpoints = workdir / "checkpoints"
    count = len(list(checkpoints.glob("step_*.pt")))
    time.sleep(2.5)  # ... and so is the trainer: no epoch (1 s each) lands after the demo
    assert len(list(checkpoints.glob("step_*.pt"))) == count
    assert "interrupted: stopping the trainer and the daemon" in rest
    wait_for(lambda: "stopped" in (workdir / "daemon.log").read_text(), 5, "daemon log")


def test_the_demo_refuses_a_folder_it_did_not_make(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    assert main(["demo", "--workdir", str(tmp_path)]) == 2
    assert "was not made by the demo" in capsys.readouterr().err
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_a_rerun_clears_its_own_folders_but_never_follows_a_planted_link(tmp_path: Path) -> None:
    workdir, elsewhere = tmp_path / "demo", tmp_path / "elsewhere"
    prepare_workdir(workdir)
    (workdir / "state").mkdir()
    (workdir / "state" / "state.db").write_text("old")
    elsewhere.mkdir()
    (elsewhere / "step_9.pt").write_text("not the demo's")
    (workdir / "checkpoints").symlink_to(elsewhere)
    prepare_workdir(workdir)  # a rerun
    assert not (workdir / "state").exists() and not (workdir / "checkpoints").exists()
    assert (elsewhere / "step_9.pt").read_text() == "not the demo's"
    assert (workdir / MARKER).is_file()


def test_bad_demo_flags_and_a_missing_extra_are_usage_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--noise", "1.5", "--workdir", str(tmp_path / "a")]) == 2
    assert "--noise must be in [0, 1]" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "sklearn", None)  # as if the demo extra were missing
    assert main(["demo", "--workdir", str(tmp_path / "b")]) == 2
    assert "pip install 'stiffness-monitor[demo]'" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
