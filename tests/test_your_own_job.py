"""docs/your-own-job.md, run as written: its files are written out of the page, the real daemon
watches the three trainers it shows (a plain loop, Lightning, the Hugging Face ``Trainer``)
and stops each; and its table of defaults is the code's."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.config.schema import parse_config
from tests.conftest import REPO, run_cli
from tests.daemon_harness import DaemonProcess, wait_for

GUIDE = REPO / "docs" / "your-own-job.md"
# Stops each run at its second evaluation whatever the numbers: the test is about the wiring.
RULES = (
    "rules:\n- {name: second-look, kind: threshold, metric: probe_accuracy, mode: max,"
    " stopping_threshold: 0.0, min_evaluations: 2}\n"
)


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", GUIDE.read_text(), flags=re.S)


def named_files() -> dict[str, str]:
    """Every code block whose first line is ``# <file name>``, by that name."""
    found = {}
    for block in blocks("python") + blocks("yaml"):
        first = block.splitlines()[0]
        if re.fullmatch(r"# [\w.]+\.(py|yaml)", first):
            found[first[2:]] = block
    return found


def keys(tree: Any, prefix: str = "") -> set[str]:
    if not isinstance(tree, dict):
        return {prefix}
    return set().union(*(keys(value, f"{prefix}{key}.") for key, value in tree.items()))


def test_the_guides_table_of_defaults_is_the_codes(tmp_path: Path) -> None:
    [table] = [b for b in blocks("yaml") if b.startswith("model:\n  factory: job:build_model")]
    written = yaml.safe_load(table)
    minimal = {
        "model": {"factory": "job:build_model"},
        "probe": {"factory": "job:probe"},
        "runs": [{"name": "loop", "path": "runs/loop"}],
    }
    source = tmp_path / "config.yaml"
    expected = parse_config(minimal, source).model_dump(mode="json")
    assert parse_config(written, source).model_dump(mode="json") == expected
    dumped = {k: v for k, v in expected.items() if k not in ("source", "base_dir")}
    assert keys(written) == keys(dumped)  # every key is listed, none is invented


@pytest.mark.slow
def test_the_guides_three_trainers_stop_under_the_real_daemon(tmp_path: Path) -> None:
    files = named_files()
    assert set(files) >= {"job.py", "config.yaml", "train_loop.py", "train_lightning.py",
                          "train_huggingface.py"}  # fmt: skip
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    config = tmp_path / "config.yaml"
    checked = run_cli("check", "-c", config, cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config.write_text(config.read_text() + RULES)
    daemon = DaemonProcess(config)
    try:
        daemon.metrics_url()
        for run, script in [("loop", "train_loop.py"), ("lightning", "train_lightning.py"),
                            ("huggingface", "train_huggingface.py")]:  # fmt: skip
            done = subprocess.run(
                [sys.executable, script], cwd=tmp_path, capture_output=True, text=True,
                timeout=600,
            )  # fmt: skip
            assert done.returncode == 0, done.stdout + done.stderr[-3000:]
            stop = tmp_path / "runs" / run / "STOP"
            assert stop.is_file(), f"{run}: no stop file\n{daemon.log[-3000:]}"
            assert yaml.safe_load(stop.read_text())["run"] == run
            assert "stopped" in done.stdout, done.stdout
            if run != "loop":
                restored = re.search(r"restored (\S+)", done.stdout)
                assert restored and restored.group(1) != "None", done.stdout
        wait_for(lambda: "evaluated" in daemon.log, what="evaluations")
    finally:
        assert daemon.stop() == 0, daemon.log[-3000:]
    backtest = run_cli("backtest", "-c", config, "--run", "loop", cwd=tmp_path)
    assert backtest.returncode == 0 and "best checkpoint: step" in backtest.stdout, backtest
