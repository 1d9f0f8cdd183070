"""The exporter of a real ``watch`` subprocess, scraped over HTTP(S) while it evaluates real
checkpoints: readiness 0 -> 1, discovered and evaluated counts, per-class and rule-state
series, a restart that replays the rules without counting old checkpoints again."""

from __future__ import annotations

import base64
import re
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.daemon_harness import (
    DaemonProcess,
    make_config,
    metric_value,
    stored_evaluations,
    wait_for,
    write_checkpoint,
)
from tests.exporter.test_server import make_cert

pytestmark = pytest.mark.slow

RULES: list[dict[str, Any]] = [
    {
        "name": "falling",
        "kind": "all",
        "rules": [
            {"name": "within-falls", "kind": "decline", "metric": "within_class", "patience": 50},
            {
                "name": "loss-rises",
                "kind": "decline",
                "metric": "probe_loss",
                "mode": "min",
                "patience": 50,
            },
        ],
    },
    {"name": "diverged", "kind": "non_finite"},
]
#: A probe factory that takes its time, as a big probe set does: the window before ready. It
#: loads once the test has looked (the file ``release`` beside it exists), not after a fixed
#: time that a loaded machine could spend before the test looks.
SLOW_PROBE = """
import time
from pathlib import Path
from digits_data import probe as digits_probe

def probe(seed: int = 0):
    release = Path(__file__).with_name("release")
    deadline = time.monotonic() + 300
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return digits_probe(seed)
"""


def monitor_config(folder: Path, run_dir: Path, **sections: dict[str, Any]) -> Path:
    config = make_config(folder, {"a": run_dir}, **sections)
    config.write_text(config.read_text() + yaml.safe_dump({"rules": RULES}))
    return config


def fetch(
    url: str, context: ssl.SSLContext | None = None, auth: str | None = None
) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_ready_discovered_per_class_and_rule_series(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    for step in (1, 2):
        write_checkpoint(run_dir / f"step_{step}.pt", step)
    config = monitor_config(tmp_path / "monitor", run_dir, probe={"factory": "slow_probe:probe"})
    (config.parent / "slow_probe.py").write_text(SLOW_PROBE)
    daemon = DaemonProcess(config)
    try:
        url = daemon.metrics_url()
        readyz = url.removesuffix("/metrics") + "/readyz"
        healthz = url.removesuffix("/metrics") + "/healthz"
        # Serving while the probe loads: alive, not ready.
        assert fetch(healthz)[0] == 200
        assert fetch(readyz)[0] == 503
        assert metric_value(daemon.scrape(), "stiffness_ready") == 0
        (config.parent / "release").touch()
        wait_for(lambda: fetch(readyz)[0] == 200, what="/readyz 200")
        assert metric_value(daemon.scrape(), "stiffness_ready") == 1

        def counts() -> tuple[float | None, ...]:
            text = daemon.scrape()
            names = ("discovered", "evaluated")
            return tuple(
                metric_value(text, f"stiffness_checkpoints_{n}_total", run="a") for n in names
            )

        wait_for(lambda: counts() == (2, 2), what="two discovered, two evaluated")
        write_checkpoint(run_dir / "step_3.pt", 3)
        wait_for(lambda: counts() == (3, 3), what="the new checkpoint discovered and evaluated")
        exposition = daemon.scrape()
        latest = max(stored_evaluations(config), key=lambda row: row.step or 0).result
        classes = latest["classes"]
        assert len(classes) == 10
        exported = [metric_value(exposition, "stiffness_class_within", run="a", **{"class": str(c)})
                    for c in classes]  # fmt: skip
        assert exported == latest["cosine"]["per_class"]
        loss = metric_value(exposition, "stiffness_rule_value", run="a", rule="loss-rises")
        assert (
            loss
            == latest["probe_loss"]
            == metric_value(exposition, "stiffness_probe_loss", run="a")
        )
        within = metric_value(exposition, "stiffness_rule_value", run="a", rule="within-falls")
        assert within == latest["cosine"]["within"]
        best = metric_value(exposition, "stiffness_rule_best", run="a", rule="within-falls")
        rows = stored_evaluations(config)
        assert best == max(row.result["cosine"]["within"] for row in rows)
        wait = metric_value(exposition, "stiffness_rule_wait", run="a", rule="loss-rises")
        assert wait is not None and 0 <= wait <= 2
        check = subprocess.run(["/usr/bin/promtool", "check", "metrics"], input=exposition,
                               capture_output=True, text=True, timeout=30)  # fmt: skip
        assert (check.returncode, check.stdout + check.stderr) == (0, "")
    finally:
        (config.parent / "release").touch()  # a failure above must not leave it waiting
        assert daemon.stop() == 0
    assert "Traceback" not in daemon.log


def test_restart_over_tls_and_auth_replays_rules_and_counts_only_new_work(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    for step in (1, 2):
        write_checkpoint(run_dir / f"step_{step}.pt", step)
    cert, key = make_cert(tmp_path, "server")
    (tmp_path / "password").write_text("hunter2\n")
    metrics = {
        "tls_cert": str(cert),
        "tls_key": str(key),
        "basic_auth_user": "prometheus",
        "basic_auth_password_file": str(tmp_path / "password"),
        "per_class_limit": 5,
    }
    config = monitor_config(tmp_path / "monitor", run_dir, metrics=metrics)
    trusting = ssl.create_default_context(cafile=str(cert))

    def scrape(daemon: DaemonProcess) -> str:
        url = wait_for(lambda: re.search(r"metrics on (https://\S+/metrics)", daemon.log)).group(1)
        status, text = fetch(url, trusting, auth="prometheus:hunter2")
        assert status == 200
        assert fetch(url, trusting)[0] == 401
        return text

    def rule_series(text: str) -> dict[str, float | None]:
        return {f"{gauge}/{rule}": metric_value(text, gauge, run="a", rule=rule)
                for gauge in ("stiffness_rule_value", "stiffness_rule_best", "stiffness_rule_wait")
                for rule in ("within-falls", "loss-rises")}  # fmt: skip

    first = DaemonProcess(config)
    try:
        wait_for(
            lambda: (
                metric_value(scrape(first), "stiffness_checkpoints_evaluated_total", run="a") == 2
            ),
            what="two evaluations",
        )
        before = rule_series(scrape(first))
        assert None not in before.values()
    finally:
        assert first.stop() == 0
    assert "per-class series not exported: 10 classes > metrics.per_class_limit 5" in first.log
    second = DaemonProcess(config)
    try:
        ready = wait_for(
            lambda: (
                (text := scrape(second)) and metric_value(text, "stiffness_ready") == 1 and text
            ),
            what="the restarted daemon ready",
        )
        assert rule_series(ready) == before  # replayed from the store, nothing re-evaluated
        assert metric_value(ready, "stiffness_checkpoints_discovered_total", run="a") == 0
        write_checkpoint(run_dir / "step_3.pt", 3)
        # Wait for step 3 itself, the last in step order, then count: waiting for the count to
        # read 1 would also pass on its way up to 3, were the old two evaluated again.
        after = wait_for(
            lambda: (
                (text := scrape(second))
                and metric_value(text, "stiffness_checkpoint_step", run="a") == 3
                and text
            ),
            what="the new checkpoint evaluated",
        )
        assert metric_value(after, "stiffness_checkpoints_evaluated_total", run="a") == 1
        assert metric_value(after, "stiffness_checkpoints_discovered_total", run="a") == 1
        assert "stiffness_class_within{" not in after
    finally:
        assert second.stop() == 0
