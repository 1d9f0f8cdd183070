"""The config and rule files (issue 19, items 4 and 9): loading is bounded, whatever the file
says, and ``check`` says when a factory is Python's own code rather than the operator's.

A YAML alias bomb (billion laughs) loads in milliseconds as shared references; what used to
expand it was an error message that quoted the whole value: 91 s and 6 GB under
``model.kwargs``, and no end under ``stiffness.batch_size``. Every command here runs as a user
runs it, in a fresh interpreter, under an address-space limit, so a regression fails the test
instead of the machine.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from monitor.store.store import Store
from tests.daemon_harness import (
    DaemonProcess,
    make_config,
    stored_evaluations,
    wait_for,
    write_checkpoint,
)

pytestmark = pytest.mark.slow

#: Address space for a CLI run: torch needs well under 1 GiB; expanding the bomb needs far more.
MEMORY_LIMIT = 2 << 30
#: Refusing takes milliseconds; the rest is starting Python and importing torch, which takes a
#: few seconds on a loaded 2-core machine. Today's code took 91 s or ran until killed.
SECONDS = 30.0


def billion_laughs(indent: str) -> str:
    """Nine anchors, each nine aliases of the one before: 9**9 strings once expanded."""
    lines = [f"{indent}a0: &a0 [{', '.join(['lol'] * 9)}]"]
    lines += [f"{indent}a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    return "\n".join(lines) + "\n"


def limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_bounded(*args: str | Path, cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    """``python -m monitor ARGS`` under the memory limit; its result and how long it took."""
    start = time.monotonic()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "monitor", *map(str, args)],
            capture_output=True,
            text=True,
            cwd=cwd,
            env={**os.environ, "PYTHONWARNINGS": "ignore::UserWarning"},
            timeout=120,
            preexec_fn=limit_memory,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"stiffness-monitor {args[0]} was still running after 120 s")
    return result, time.monotonic() - start


def config_with(folder: Path, section: str, key: str, value_text: str) -> Path:
    """A valid daemon config (the harness's), with ``section.key`` set to raw YAML text."""
    path = make_config(folder, {"digits": folder / "run"})
    data = yaml.safe_load(path.read_text())
    entries = {name: value for name, value in data.pop(section, {}).items() if name != key}
    text = yaml.safe_dump(data) + f"{section}:\n"
    text += "".join(f"  {name}: {json.dumps(value)}\n" for name, value in entries.items())
    path.write_text(text + f"  {key}:\n{value_text}")
    return path


@pytest.mark.parametrize("command", ["check", "watch"])
@pytest.mark.parametrize(("section", "key"), [("model", "kwargs"), ("stiffness", "batch_size")])
def test_an_alias_bomb_in_the_config_exits_2_at_once(
    tmp_path: Path, command: str, section: str, key: str
) -> None:
    config = config_with(tmp_path, section, key, billion_laughs("    "))
    result, seconds = run_bounded(command, "-c", config, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert seconds < SECONDS
    line = next(line for line in result.stderr.splitlines() if line.startswith("error: "))
    assert line.startswith(f"error: {config}:")
    assert "takes the values repeated by aliases past 10,000 (a YAML alias bomb?)" in line
    assert len(result.stderr) < 2000


@pytest.mark.parametrize("source", ["oversized", "/dev/zero"])
def test_an_oversized_config_is_refused_naming_the_file_and_the_cap(
    tmp_path: Path, source: str
) -> None:
    config = make_config(tmp_path, {"digits": tmp_path / "run"})
    if source == "oversized":  # a valid config, padded past the cap with a comment
        config.write_text(config.read_text() + "# " + "x" * (1 << 20) + "\n")
    else:
        config = Path(source)
    result, seconds = run_bounded("check", "-c", config, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert seconds < SECONDS
    assert (
        f"error: {config}: the config file is larger than the limit of 1,048,576 bytes (1 MiB)"
        in result.stderr
    )


@pytest.mark.parametrize("command", ["check", "watch"])
def test_an_alias_bomb_in_the_rules_file_exits_2_at_once(tmp_path: Path, command: str) -> None:
    config = make_config(tmp_path, {"digits": tmp_path / "run"})
    config.write_text(config.read_text() + "rules: rules.yaml\n")
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules: [{kind: decline}]\ndescription:\n" + billion_laughs("  "))
    result, seconds = run_bounded(command, "-c", config, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert seconds < SECONDS
    assert f"error: {rules}:7:12: alias *a3 takes the values" in result.stderr


def decided_rules(config: Path, step: int) -> set[str]:
    """The rules that decided on the stored evaluation of ``step``."""
    [evaluation] = [e for e in stored_evaluations(config) if e.step == step]
    with Store(config.parent / "state" / "state.db", readonly=True) as store:
        return {decision.rule for decision in store.decisions("digits", evaluation.id)}


def test_sighup_with_an_alias_bomb_keeps_the_rules_and_the_daemon(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    config = make_config(tmp_path / "monitor", {"digits": run_dir})
    config.write_text(config.read_text() + "rules: rules.yaml\n")
    rules = config.parent / "rules.yaml"
    rules.write_text(
        "description: never stops\n"
        "rules: [{kind: threshold, name: guard, metric: probe_loss, mode: min,"
        " divergence_threshold: 1.0e+9}]\n"
    )
    daemon = DaemonProcess(config)
    try:
        daemon.metrics_url()
        # bound the daemon's memory from here on: a regression fails, not the machine
        size = next(line for line in Path(f"/proc/{daemon.process.pid}/status").read_text()
                    .splitlines() if line.startswith("VmSize:"))  # fmt: skip
        limit = int(size.split()[1]) * 1024 + MEMORY_LIMIT
        resource.prlimit(daemon.process.pid, resource.RLIMIT_AS, (limit, limit))
        write_checkpoint(run_dir / "step_1.pt", 1)
        wait_for(lambda: any(e.step == 1 for e in stored_evaluations(config)), what="step 1")
        assert decided_rules(config, 1) == {"guard"}

        replacement = rules.with_name("rules.yaml.new")
        replacement.write_text("rules: [{kind: decline}]\ndescription:\n" + billion_laughs("  "))
        os.replace(replacement, rules)
        daemon.signal(signal.SIGHUP)
        refused = wait_for(
            lambda: next((x for x in daemon.log.splitlines() if "rules not reloaded" in x), None),
            timeout=30,
            what="the refused reload",
        )
        assert f"keeping the previous ones: {rules}:7:12: alias *a3 takes the values" in refused
        assert len(refused) < 400
        assert daemon.process.poll() is None

        write_checkpoint(run_dir / "step_2.pt", 2)  # still evaluating, under the old rules
        wait_for(lambda: any(e.step == 2 for e in stored_evaluations(config)), what="step 2")
        assert decided_rules(config, 2) == {"guard"}
    finally:
        try:
            code = daemon.stop()
        except subprocess.TimeoutExpired:
            daemon.kill()
            raise
    assert code == 0, daemon.log[-2000:]


def write_factory_config(folder: Path, factory: str, kwargs: dict[str, object]) -> Path:
    """A valid config whose probe comes from ``factory`` (a one-feature, two-class probe)."""
    (folder / "tiny_model.py").write_text(
        "from torch import nn\n\n\n"
        "def build() -> nn.Module:\n"
        "    return nn.Sequential(nn.Unflatten(0, (-1, 1)), nn.Linear(1, 2))\n"
    )
    config = {
        "model": {"factory": "tiny_model:build"},
        "probe": {"factory": factory, "kwargs": kwargs, "per_class": 2},
        "stiffness": {"device": "cpu"},
        "store": {"path": "state/state.db"},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_check_warns_when_a_factory_is_the_standard_library(tmp_path: Path) -> None:
    """The config is code: a warning, and the exit code of an otherwise valid config."""
    examples = [[0.1, 0], [0.2, 0], [0.3, 1], [0.4, 1]]
    config = write_factory_config(tmp_path, "collections:UserList", {"initlist": examples})
    result, _ = run_bounded("check", "-c", config, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "config OK" in result.stdout
    assert result.stderr.count("warning: ") == 1, result.stderr
    assert (
        f"warning: {config}: probe.factory: 'collections:UserList' is from 'collections' in "
        "Python's standard library, not a factory in a module beside the config or an "
        "installed package; the config names code the monitor runs, so protect it like code"
    ) in result.stderr


def test_check_warns_about_os_system_which_it_runs_by_design(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    config = write_factory_config(tmp_path, "tiny_model:build", {})
    data = yaml.safe_load(config.read_text())
    data["model"] = {"factory": "os:system", "kwargs": {"command": f"touch {marker}"}}
    config.write_text(yaml.safe_dump(data))
    result, _ = run_bounded("check", "-c", config, cwd=tmp_path)
    assert result.returncode == 2  # it returned 0, not a model
    assert f"warning: {config}: model.factory: 'os:system' is from 'os' in Python's" in (
        result.stderr
    )
    assert marker.exists()  # the config names code, and it ran: protect the config like code


def test_check_says_nothing_about_factories_beside_the_config(tmp_path: Path) -> None:
    config = make_config(tmp_path, {"digits": tmp_path / "run"})
    result, _ = run_bounded("check", "-c", config, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "factory" not in result.stderr and "standard library" not in result.stderr
