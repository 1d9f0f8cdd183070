"""``stiffness-monitor check`` checks the real thing: the newest checkpoint of each run loaded
into the model, misspelt keys with a "did you mean", and the metrics port bound. Real
checkpoint files written as a trainer writes them, the CLI as a real subprocess, and for the
port a real listening socket (``watch`` must fail the same clear way)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from monitor.errors import ConfigError
from monitor.exporter.binding import try_bind
from monitor.store.lock import running_daemon
from tests.conftest import run_cli
from tests.daemon_harness import DaemonProcess, make_config, write_checkpoint

EXIT_OK, EXIT_USAGE = 0, 2


def save(path: Path, state: dict[str, torch.Tensor], step: int) -> Path:
    """A trainer's checkpoint dict, written to a temporary name and renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save({"model_state_dict": state, "global_step": step}, temporary)
    os.replace(temporary, path)
    return path


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


@pytest.fixture
def listening() -> Iterator[int]:
    """A port another process holds: bound and listening on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


@pytest.mark.slow
def test_check_loads_the_newest_checkpoint_of_each_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    for step in (10, 200, 30):  # named steps order by step, not by the time written
        write_checkpoint(run / f"step_{step}.pt", step)
    empty = tmp_path / "empty"
    empty.mkdir()
    config = make_config(tmp_path / "cfg", {"digits": run, "later": empty})
    done = run_cli("check", "-c", config)
    assert done.returncode == EXIT_OK, done.stderr
    assert f"checkpoint  run digits: {run / 'step_200.pt'} (state_dict, step 200) loads" in (
        done.stdout
    )
    assert f"checkpoint  run later: none yet in {empty}" in done.stdout
    assert "config OK" in done.stdout


@pytest.mark.slow
def test_a_newest_checkpoint_that_does_not_fit_is_exit_2_naming_path_and_keys(
    tmp_path: Path,
) -> None:
    shapes, keys = tmp_path / "shapes", tmp_path / "keys"
    write_checkpoint(shapes / "step_1.pt", 1)
    wider = write_checkpoint(shapes / "step_2.pt", 2, hidden=32)  # the factory builds 64
    write_checkpoint(keys / "step_1.pt", 1)
    state = write_checkpoint(tmp_path / "scratch" / "weights.pt", 0)
    extra = torch.load(state, weights_only=True)["model_state_dict"]
    extra.update({f"aux.{i}.weight": torch.zeros(2) for i in range(7)})  # an extra head
    unexpected = save(keys / "step_5.pt", extra, 5)
    config = make_config(tmp_path / "cfg", {"shapes": shapes, "keys": keys})
    done = run_cli("check", "-c", config)
    assert done.returncode == EXIT_USAGE
    found = errors(done.stderr)
    assert len(found) == 2, done.stderr
    assert f"runs[0] (shapes): the newest checkpoint does not load: {wider}: " in found[0]
    assert "shape mismatches: 0.weight (checkpoint [32, 64], model [64, 64])" in found[0]
    assert f"runs[1] (keys): the newest checkpoint does not load: {unexpected}: " in found[1]
    listed = "7 unexpected: aux.0.weight, aux.1.weight, aux.2.weight, aux.3.weight, aux.4.weight"
    assert listed + ", ..." in found[1]  # capped: five keys, then "..."
    assert "aux.5.weight" not in found[1]
    assert "checkpoint.strict: false" in found[1]


@pytest.mark.slow
def test_weights_without_a_factory_and_unreadable_checkpoints(tmp_path: Path) -> None:
    run = tmp_path / "run"
    write_checkpoint(run / "step_1.pt", 1)
    config = make_config(tmp_path / "cfg", {"digits": run})
    data = yaml.safe_load(config.read_text())
    del data["model"]
    config.write_text(yaml.safe_dump(data))
    done = run_cli("check", "-c", config)
    assert done.returncode == EXIT_USAGE
    assert "holds weights only; set model.factory" in done.stderr
    assert str(run / "step_1.pt") in done.stderr

    torn = tmp_path / "torn"
    write_checkpoint(torn / "step_1.pt", 1)
    whole = write_checkpoint(torn / "step_2.pt", 2).read_bytes()
    (torn / "step_2.pt").write_bytes(whole[: len(whole) // 2])  # still being written
    config = make_config(tmp_path / "cfg2", {"digits": torn})
    done = run_cli("check", "-c", config)
    assert done.returncode == EXIT_OK, done.stderr
    assert "warning: " in done.stderr and "cannot be read yet" in done.stderr
    assert str(torn / "step_2.pt") in done.stderr


@pytest.mark.slow
def test_misspelt_keys_get_a_did_you_mean(tmp_path: Path) -> None:
    config = make_config(tmp_path, {})
    text = config.read_text().replace("stiffness:\n  device: cpu", "stiffness:\n  devcie: cpu")
    config.write_text(text + "metrics_:\n  port: 0\n")
    done = run_cli("check", "-c", config)
    assert done.returncode == EXIT_USAGE
    found = errors(done.stderr)
    assert any("stiffness.devcie: unknown key (did you mean 'device'?)" in e for e in found)
    assert any("metrics_: unknown key (did you mean 'metrics'?)" in e for e in found)


@pytest.mark.slow
def test_a_taken_metrics_port_is_exit_2_for_check_and_watch(tmp_path: Path, listening: int) -> None:
    config = make_config(tmp_path, {}, metrics={"port": listening})
    expected = f"{config}: metrics.port: cannot listen on 127.0.0.1:{listening}"
    done = run_cli("check", "-c", config)
    assert done.returncode == EXIT_USAGE
    assert any(expected in line for line in errors(done.stderr)), done.stderr
    watch = subprocess.run(
        [sys.executable, "-m", "monitor", "watch", "-c", str(config)],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert watch.returncode == EXIT_USAGE, watch.stderr
    assert any(expected in line for line in errors(watch.stderr)), watch.stderr
    assert "Traceback" not in watch.stderr


@pytest.mark.slow
def test_check_beside_its_own_running_daemon_warns_about_the_port(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as free:
        free.bind(("127.0.0.1", 0))
        port = int(free.getsockname()[1])
    config = make_config(tmp_path, {}, metrics={"port": port})
    daemon = DaemonProcess(config)
    try:
        daemon.metrics_url()
        done = run_cli("check", "-c", config)
        assert done.returncode == EXIT_OK, done.stdout + done.stderr
        expected = (f"metrics.port: 127.0.0.1:{port} is in use by this config's running daemon "
                    f"(PID {daemon.process.pid}")  # fmt: skip
        assert expected in done.stdout + done.stderr
    finally:
        assert daemon.stop() == 0
    assert running_daemon(tmp_path / "state" / "state.db") is None  # the lock died with it


def test_try_bind_releases_a_free_port_and_names_a_taken_one(listening: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        free = int(probe.getsockname()[1])
    try_bind("127.0.0.1", free)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as again:
        again.bind(("127.0.0.1", free))  # released: the daemon can take it after check
    with pytest.raises(ConfigError, match=rf"metrics.port: cannot listen on 127.0.0.1:{listening}"):
        try_bind("127.0.0.1", listening)
    with pytest.raises(ConfigError, match=r"metrics\.host: cannot listen on no-such-host\.invalid"):
        try_bind("no-such-host.invalid", 9108)
    with pytest.raises(ConfigError, match=r"metrics.host: cannot listen on 192.0.2.1:9108 \("):
        try_bind("192.0.2.1", 9108)  # TEST-NET-1: never an address of this machine


SCORES_MODEL = """
from torch import nn


class Scores(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return {"scores": self.fc(x), "features": x}


def build():
    return Scores()
"""


@pytest.mark.slow
def test_model_output_names_the_logits_for_check_and_evaluate(tmp_path: Path) -> None:
    config = make_config(tmp_path / "cfg", {})
    (config.parent / "scores_model.py").write_text(SCORES_MODEL)
    data = yaml.safe_load(config.read_text())
    data["model"] = {"factory": "scores_model:build"}
    config.write_text(yaml.safe_dump(data))
    done = run_cli("check", "-c", config)
    assert done.returncode == EXIT_USAGE
    assert (
        "model.output: model output of type dict holds no logits tensor (it has keys "
        "'scores', 'features'); set model.output to the key"
    ) in done.stderr
    data["model"]["output"] = "scores"
    config.write_text(yaml.safe_dump(data))
    assert run_cli("check", "-c", config).returncode == EXIT_OK
    weights = save(
        tmp_path / "step_3.pt", {"fc.weight": torch.randn(10, 64), "fc.bias": torch.randn(10)}, 3
    )
    done = run_cli("evaluate", "-c", config, weights, "--json")
    assert done.returncode == EXIT_OK, done.stderr
    assert '"step": 3' in done.stdout


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_a_torchscript_checkpoint_is_run_on_the_probe(tmp_path: Path) -> None:
    from tests.daemon_harness import build_mlp

    run = tmp_path / "run"
    run.mkdir()
    torch.jit.script(build_mlp(hidden=8)).save(str(run / "step_1.pt"))
    torch.jit.script(build_mlp(hidden=8, num_classes=5)).save(str(run / "step_2.pt"))
    config = make_config(tmp_path / "cfg", {"digits": run})
    data = yaml.safe_load(config.read_text())
    del data["model"]  # TorchScript carries its module
    config.write_text(yaml.safe_dump(data))
    done = run_cli("check", "-c", config)
    assert done.returncode == EXIT_USAGE
    assert (
        f"runs[0] (digits): {run / 'step_2.pt'}: probe: target class 9 but the model has 5 outputs"
    ) in done.stderr
