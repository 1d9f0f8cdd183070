"""The command line end to end: real trainer checkpoints, real subprocesses, real exit codes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE, EXAMPLE_CONFIG, run_cli

CONFIG = EXAMPLE_CONFIG
EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2
cli = run_cli


@pytest.mark.slow
def test_evaluate_json_prints_the_contract(example_checkpoints: list[Path]) -> None:
    done = cli("evaluate", "-c", CONFIG, example_checkpoints[-1], "--json")
    assert done.returncode == EXIT_OK, done.stderr
    result = json.loads(done.stdout)
    assert result["checkpoint"] == str(example_checkpoints[-1])
    assert result["step"] == int(example_checkpoints[-1].stem.split("_")[1])
    assert result["step_source"] == "payload"
    assert result["mode"] == "class"
    assert result["classes"] == list(range(10))
    matrix = result["cosine"]["matrix"]
    assert len(matrix) == 10 and all(len(row) == 10 for row in matrix)
    assert result["cosine"]["within"] > result["cosine"]["between"]
    assert len(result["cosine"]["per_class"]) == 10
    assert 0.0 < result["probe_accuracy"] <= 1.0 and result["probe_loss"] > 0
    assert result["sign"] is None
    assert result["counts"]["examples"] == 200
    assert {"total", "load", "gradients"} <= set(result["timings"])


@pytest.mark.slow
def test_evaluate_pair_mode_adds_sign_and_distance(example_checkpoints: list[Path]) -> None:
    done = cli("evaluate", "-c", CONFIG, example_checkpoints[0], "--json", "--mode", "pair")
    assert done.returncode == EXIT_OK, done.stderr
    result = json.loads(done.stdout)
    assert result["mode"] == "pair"
    assert len(result["sign"]["matrix"]) == 10
    assert len(result["distance"]["edges"]) == len(result["distance"]["within"]) + 1


@pytest.mark.slow
def test_evaluate_prints_a_readable_summary(example_checkpoints: list[Path]) -> None:
    done = cli("evaluate", "-c", CONFIG, example_checkpoints[0])
    assert done.returncode == EXIT_OK, done.stderr
    assert "within" in done.stdout and "between" in done.stdout
    assert "class stiffness matrix" in done.stdout
    assert str(example_checkpoints[0]) in done.stdout


@pytest.mark.slow
def test_bad_checkpoints_are_runtime_failures(
    example_checkpoints: list[Path], tmp_path: Path
) -> None:
    truncated = tmp_path / "step_9.pt"
    data = example_checkpoints[0].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    done = cli("evaluate", "-c", CONFIG, truncated)
    assert done.returncode == EXIT_RUNTIME
    assert str(truncated) in done.stderr
    assert "Traceback" not in done.stderr
    missing = cli("evaluate", "-c", CONFIG, tmp_path / "step_10.pt")
    assert missing.returncode == EXIT_RUNTIME
    assert "step_10.pt" in missing.stderr


@pytest.mark.slow
def test_config_problems_exit_2_naming_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("probe: {path: probe.pt}\nstiffness: {mode: fast}\n")
    done = cli("evaluate", "-c", config, tmp_path / "x.pt")
    assert done.returncode == EXIT_USAGE
    assert f"{config}:2: stiffness.mode: expected 'class' or 'pair', got 'fast'" in done.stderr
    assert cli("evaluate", "-c", tmp_path / "none.yaml", "x.pt").returncode == EXIT_USAGE
    assert cli("evaluate").returncode == EXIT_USAGE  # argparse usage error


@pytest.mark.slow
def test_check_accepts_the_example() -> None:
    done = cli("check", "-c", CONFIG)
    assert done.returncode == EXIT_OK, done.stderr
    assert "config OK" in done.stdout
    assert "probe       200 examples in 10 classes" in done.stdout


@pytest.mark.slow
def test_check_lists_every_problem(tmp_path: Path) -> None:
    shutil.copy(EXAMPLE / "model.py", tmp_path / "model.py")
    config = tmp_path / "config.yaml"
    config.write_text(
        "model: {factory: 'model:no_such_function'}\n"
        "probe: {path: missing-probe.pt}\n"
        "rules:\n  - kind: decline\n    metric: nonsense\n"
    )
    done = cli("check", "-c", config)
    assert done.returncode == EXIT_USAGE
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3, done.stderr
    assert any("model.factory" in e and "no_such_function" in e for e in errors)
    assert any("probe" in e and "missing-probe.pt" in e for e in errors)
    assert any(f"{config}:5: rules[0].metric" in e for e in errors)


@pytest.mark.slow
def test_check_reports_a_model_that_does_not_fit_the_probe(tmp_path: Path) -> None:
    shutil.copy(EXAMPLE / "model.py", tmp_path / "model.py")
    shutil.copy(EXAMPLE / "digits_data.py", tmp_path / "digits_data.py")
    config = tmp_path / "config.yaml"
    config.write_text(
        "model: {factory: 'model:build_mlp', kwargs: {num_classes: 5}}\n"
        "probe: {factory: 'digits_data:probe', per_class: 5}\n"
    )
    done = cli("check", "-c", config)
    assert done.returncode == EXIT_USAGE
    assert "target class 9 but the model has 5 outputs" in done.stderr


@pytest.mark.slow
def test_console_script_is_installed() -> None:
    script = shutil.which("stiffness-monitor", path=str(Path(sys.executable).parent))
    assert script is not None
    done = subprocess.run([script, "--version"], capture_output=True, text=True, check=False)
    assert done.returncode == EXIT_OK
    assert "stiffness-monitor" in done.stdout


@pytest.mark.slow
def test_check_warns_when_min_sigma_cannot_work(tmp_path: Path) -> None:
    shutil.copy(EXAMPLE / "model.py", tmp_path / "model.py")
    shutil.copy(EXAMPLE / "digits_data.py", tmp_path / "digits_data.py")
    config = tmp_path / "config.yaml"
    base = (
        "model: {factory: 'model:build_mlp'}\n"
        "probe: {factory: 'digits_data:probe', per_class: 5}\n"
        "rules: [{kind: decline, metric: within_class, min_sigma: 2}]\n"
    )
    config.write_text(base)
    done = cli("check", "-c", config)
    assert done.returncode == EXIT_OK, done.stderr
    assert "warning:" in done.stderr and "stiffness.uncertainty" in done.stderr
    config.write_text(base + "stiffness: {uncertainty: true}\n")
    assert "stiffness.uncertainty" not in cli("check", "-c", config).stderr


@pytest.mark.slow
def test_a_bad_device_flag_is_a_usage_error(example_checkpoints: list[Path]) -> None:
    done = cli("evaluate", "-c", CONFIG, example_checkpoints[0], "--device", "gpu")
    assert done.returncode == EXIT_USAGE
    assert "--device" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        ("report", ["--config", "--out", "--run", "--steps", "--attempt", "--compare"]),
        ("demo", ["--noise", "--lr", "--epochs", "--workdir", "--keep-running", "--seed"]),
    ],
)
def test_report_and_demo_are_commands(
    command: str, flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from monitor.cli import main

    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == EXIT_OK
    shown = capsys.readouterr().out
    assert all(flag in shown for flag in flags), shown
    with pytest.raises(SystemExit) as exited:
        main([command, "--no-such-flag"])
    assert exited.value.code == EXIT_USAGE


@pytest.mark.parametrize(
    "command", ["evaluate", "watch", "backtest", "reset", "check", "report", "demo"]
)
def test_every_command_help_has_a_description_and_an_example(command: str) -> None:
    done = run_cli(command, "--help")
    assert done.returncode == 0, done.stderr
    usage, _, rest = done.stdout.partition("\n\n")
    assert usage.startswith(f"usage: stiffness-monitor {command}")
    description = rest.split("\n\n", 1)[0]
    assert len(description.split()) >= 12, description  # a sentence or more, not a flag list
    assert re.search(rf"^examples?:\n  (stiffness-monitor|torchrun) .*{command}", done.stdout,
                     flags=re.M), done.stdout  # fmt: skip
