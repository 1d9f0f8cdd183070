"""Shared fixtures: the example trainer's real checkpoints and the CLI run as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "digits"
EXAMPLE_CONFIG = EXAMPLE / "config.yaml"


def run_cli(*args: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """Run ``python -m monitor`` in a fresh interpreter, exactly as a user would."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore::UserWarning"}
    return subprocess.run(
        [sys.executable, "-m", "monitor", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="session")
def example_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two epochs of the example trainer (examples/digits/train.py), in step order."""
    out = tmp_path_factory.mktemp("run")
    subprocess.run(
        [sys.executable, str(EXAMPLE / "train.py"), "--epochs", "2", "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return sorted(out.glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
