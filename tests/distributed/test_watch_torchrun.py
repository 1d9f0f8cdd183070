"""``torchrun -m monitor watch`` on 2 CPU processes (gloo), end to end.

Rank 0 is the daemon (watching, store, metrics, rules); rank 1 evaluates what rank 0
announces. A trainer-style checkpoint written while it runs is evaluated once, stored by rank
0 with the one-process result (float64: to 1e-10); SIGTERM to torchrun stops every rank. A
rank that hangs makes rank 0 exit with 1 within the timeout, saying why, without blaming the
checkpoint in the store.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from monitor.store.store import Store, StoreError
from tests.conftest import REPO
from tests.daemon_harness import wait_for
from tests.distributed.project import Project, make_project
from tests.distributed.test_torchrun import assert_same, one_process

pytestmark = pytest.mark.slow

WATCH = """
watch: {{settle_seconds: 0.3, poll_interval: 0.2, rescan_interval: 2}}
metrics: {{port: 0}}
store: {{path: {store}}}
"""


def start(config: Path, log: Path, *flags: str, fault: str = "") -> subprocess.Popen[bytes]:
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "PYTHONWARNINGS": "ignore::UserWarning",
        "OMP_NUM_THREADS": "1",
        "TEST_RANK_FAULT": fault,
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node=2", "-m", "monitor", "watch", "-c", str(config), *flags]
    with log.open("w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=environment)


def watch_config(project: Project, name: str) -> Path:
    """The project's class-mode config watching ``runs/<name>`` with a store of its own."""
    text = project.config("class").read_text().replace("path: checkpoints", f"path: runs/{name}")
    config = project.root / f"watch-{name}.yaml"
    store = project.root / f"{name}.db"
    config.write_text(text + WATCH.format(store=store))
    (project.root / "runs" / name).mkdir(parents=True)
    return config


def put_checkpoint(project: Project, name: str, step: int) -> Path:
    """The project's checkpoint, written as a trainer writes one (temporary file, rename)."""
    target = project.root / "runs" / name / f"step_{step}.pt"
    temporary = target.with_suffix(".tmp")
    torch.save(torch.load(project.checkpoint, weights_only=True), temporary)
    os.replace(temporary, target)
    return target


def workers_of(config: Path) -> list[int]:
    """Processes still running ``watch`` on this config (torchrun's workers included)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if str(config).encode() in command:
                found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    return make_project(tmp_path_factory.mktemp("tiny-watch"))


@pytest.mark.parametrize("split", ["examples", "fsdp"])
def test_rank_zero_stores_the_one_process_result_and_sigterm_stops_every_rank(
    project: Project, split: str
) -> None:
    """Two checkpoints in turn (the second reuses the first's setup; with ``fsdp`` it is
    loaded into the same sharded model), each stored with the one-process result."""
    name = f"ok-{split}"
    config = watch_config(project, name)
    log = project.root / f"{name}.log"
    process = start(config, log, "--split", split)
    try:
        want = dict(one_process(project.config("class"), project.checkpoint))
        for count, step in enumerate((10, 20), start=1):
            path = put_checkpoint(project, name, step)

            def stored(count: int = count) -> list[object]:
                try:
                    with Store(project.root / f"{name}.db", readonly=True) as store:
                        found = list(store.evaluations())
                except StoreError:  # not there, or not set up yet
                    return []
                return found if len(found) >= count else []

            evaluations = wait_for(stored, timeout=90, what=f"evaluation {count}; {log}")
            assert len(evaluations) == count
            got = evaluations[-1].result  # type: ignore[attr-defined]
            want.update(run="tiny", checkpoint=str(path), step=step)  # the config's run name
            assert_same(got, want)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    deadline = time.monotonic() + 30
    while workers_of(config) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert workers_of(config) == [], log.read_text()[-3000:]


def test_a_hung_rank_makes_rank_zero_exit_1_and_say_why(project: Project) -> None:
    config = watch_config(project, "hung")
    log = project.root / "hung.log"
    began = time.monotonic()
    process = start(config, log, "--timeout", "5", fault="hang")
    try:
        put_checkpoint(project, "hung", 10)
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    text = log.read_text()
    assert code != 0, text[-3000:]
    assert time.monotonic() - began < 100
    assert "exiting with 1 so that torchrun restarts every rank" in text, text[-3000:]
    with Store(project.root / "hung.db", readonly=True) as store:
        assert list(store.evaluations()) == []
        assert list(store.errors()) == []  # the checkpoint is not to blame
    assert workers_of(config) == []
