"""``check`` warns about a TensorBoard folder the daemon would refuse, and stays exit 0: the
daemon runs without the events (and counts each write it could not make)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE, run_cli

pytestmark = pytest.mark.slow


def test_check_warns_about_a_planted_symlink_and_a_file_where_the_folder_goes(
    tmp_path: Path,
) -> None:
    shutil.copy(EXAMPLE / "model.py", tmp_path / "model.py")
    shutil.copy(EXAMPLE / "digits_data.py", tmp_path / "digits_data.py")
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    (tmp_path / "a" / "stiffness-monitor").symlink_to(tmp_path / "c")
    (tmp_path / "b" / "stiffness-monitor").write_text("a file")
    config = tmp_path / "config.yaml"
    config.write_text(
        "model: {factory: 'model:build_mlp'}\n"
        "probe: {factory: 'digits_data:probe', per_class: 5}\n"
        "runs: [{name: a, path: a}, {name: b, path: b}, {name: c, path: c}]\n"
    )
    done = run_cli("check", "-c", config)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "tensorboard.dir" in line]
    assert warnings == [
        f"warning: {config}: tensorboard.dir: {tmp_path}/a/stiffness-monitor (run a) is a "
        "symlink (never followed): its events will not be written",
        f"warning: {config}: tensorboard.dir: {tmp_path}/b/stiffness-monitor (run b) is not a "
        "folder: its events will not be written",
    ]
    config.write_text(config.read_text() + "tensorboard: {enabled: false}\n")
    assert "tensorboard" not in run_cli("check", "-c", config).stderr
