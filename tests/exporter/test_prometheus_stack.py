"""The monitoring stack end to end: daemon -> real Prometheus -> every dashboard query.

A real ``stiffness-monitor watch`` evaluates real checkpoints of the example MLP (one of them
corrupt, two skipped by the ``latest`` backlog policy, inline rules that raise a stop), a real
``prometheus`` binary scrapes it every second with ``deploy/prometheus/alerts.yml`` loaded,
and then every PromQL expression of the Grafana dashboard (panels, annotations, the ``run``
variable) is executed against Prometheus's HTTP API the way Grafana would run it. Each must
return data; otherwise the dashboard would show an empty panel to the operator.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO
from tests.daemon_harness import DaemonProcess, make_config, wait_for, write_checkpoint
from tests.test_deploy import docs_queries

pytestmark = pytest.mark.slow

PROMETHEUS = shutil.which("prometheus")
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "stiffness-monitor.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
RUN = "digits"
SCRAPE_SECONDS = 1

# Stop at the third evaluation whatever the numbers (the stack is under test, not the rule);
# a decline rule that never fires gives the rule-state panels a best value and a wait count.
RULES = [
    {"name": "third-look", "kind": "threshold", "metric": "probe_accuracy", "mode": "max",
     "stopping_threshold": 0.0, "min_evaluations": 3},
    {"name": "loss-watch", "kind": "decline", "metric": "probe_loss", "mode": "min",
     "min_delta": 0.0, "patience": 1000},
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Prometheus:
    """The Debian ``prometheus`` server on 127.0.0.1 with a temporary config and data folder."""

    def __init__(self, folder: Path, target: str) -> None:
        folder.mkdir(parents=True)
        config = {
            "global": {
                "scrape_interval": f"{SCRAPE_SECONDS}s",
                "evaluation_interval": f"{SCRAPE_SECONDS}s",
            },
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {"job_name": "stiffness-monitor", "static_configs": [{"targets": [target]}]}
            ],
        }
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log_path = folder / "prometheus.log"
        self._log = self.log_path.open("w")
        assert PROMETHEUS is not None
        self.process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={folder / 'prometheus.yml'}",
             f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address={self.url.removeprefix('http://')}"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_for(self._ready, timeout=30, what=f"Prometheus ready (log: {self.log_path})")

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"prometheus exited: {self.log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def instant(self, expr: str) -> list[dict[str, Any]]:
        return list(self.api("query", query=expr)["result"])

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=15)
        self._log.close()


def dashboard_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str, bool]]:
    """(where, expr, instant) for every panel target (rows included) and annotation."""
    panels = list(dashboard["panels"])
    for panel in panels:
        panels.extend(panel.get("panels", []))
    for panel in panels:
        for target in panel.get("targets", []):
            yield (
                f"panel {panel['title']!r} {target['refId']}",
                target["expr"],
                bool(target.get("instant")),
            )
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:
            yield f"annotation {annotation['name']!r}", annotation["expr"], False


def grafana_substitute(expr: str, range_seconds: int) -> str:
    """Grafana's variables as it would fill them for this short range at a 1 s step."""
    rate_interval = max(4 * SCRAPE_SECONDS, 1 + SCRAPE_SECONDS)  # Grafana's $__rate_interval
    for name, value in (("run", RUN), ("__rate_interval", f"{rate_interval}s"),
                        ("__interval", "1s"), ("__range", f"{range_seconds}s")):  # fmt: skip
        expr = expr.replace("${" + name + "}", value)
        expr = re.sub(r"\$" + name + r"\b", value, expr)
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def finite_values(result: list[dict[str, Any]]) -> list[float]:
    """Every finite sample of an instant (``value``) or range (``values``) query result."""
    samples = [s for series in result for s in series.get("values", [series.get("value")])]
    return [float(v) for _, v in samples if math.isfinite(float(v))]


@pytest.mark.skipif(PROMETHEUS is None, reason="the prometheus binary is not installed")
def test_every_dashboard_query_returns_data_from_a_real_prometheus(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    for step in (10, 20, 30):  # a backlog at start-up: `latest` evaluates 30, skips 10 and 20
        write_checkpoint(run_dir / f"step_{step}.pt", step)
    config = make_config(tmp_path / "monitor", {RUN: run_dir}, watch={"backlog": "latest"})
    config.write_text(config.read_text() + yaml.safe_dump({"rules": RULES}))
    daemon = DaemonProcess(config)
    prometheus = None
    try:
        target = urllib.parse.urlsplit(daemon.metrics_url()).netloc
        prometheus = Prometheus(tmp_path / "prometheus", target)
        started = time.time()
        wait_for(lambda: prometheus.instant('up{job="stiffness-monitor"} == 1'), 30, "a scrape")
        for step in (40, 50, 60, 70):
            path = run_dir / f"step_{step}.pt"
            if step == 50:  # a trainer that died mid-write and left junk behind, renamed in
                (run_dir / "junk.tmp").write_bytes(b"\x80\x02not a checkpoint" * 64)
                (run_dir / "junk.tmp").rename(path)
            else:
                write_checkpoint(path, step)
            time.sleep(1.5)
        wait_for(
            lambda: prometheus.instant(
                f'stiffness_checkpoints_evaluated_total{{run="{RUN}"}} >= 4'
                " and on (run) stiffness_early_stop == 1"
                " and on (run) stiffness_queue_depth == 0"
            ),
            timeout=60,
            what=f"four evaluations and the stop in Prometheus (daemon log: {daemon.log_path})",
        )
        time.sleep(3 * SCRAPE_SECONDS)  # a few more samples after the last change
        end = time.time()

        dashboard = json.loads(DASHBOARD.read_text())
        range_seconds = math.ceil(end - started) + 1
        results: dict[str, list[dict[str, Any]]] = {}
        empty = []
        for where, raw, instant in dashboard_queries(dashboard):
            expr = grafana_substitute(raw, range_seconds)
            if instant:
                result = prometheus.instant(expr)
            else:
                result = prometheus.api(
                    "query_range", query=expr, start=f"{started:.3f}", end=f"{end:.3f}", step="1"
                )["result"]
            results[where] = result
            if not finite_values(result):
                empty.append(f"{where}: {expr} -> {result}")
        assert len(results) >= 20
        assert not empty, "queries without data:\n" + "\n".join(empty)

        # The data is the run's own, not just any data.
        [stop] = results["annotation 'Early stop'"]
        assert stop["metric"]["run"] == RUN and float(stop["values"][-1][1]) == 1
        reasons = {s["metric"]["reason"] for s in results["panel 'Checkpoint errors by reason' A"]}
        assert reasons == {"corrupt"}, reasons
        skipped = results["panel 'Checkpoints per minute' C"]
        assert {s["metric"]["reason"] for s in skipped} == {"backlog-latest"}
        classes = {s["metric"]["class"] for s in results["panel 'Per-class stiffness (latest)' A"]}
        assert classes == {str(digit) for digit in range(10)}
        steps = finite_values(results["panel 'Latest step' A"])
        assert max(steps) == 70
        within = finite_values(results["panel 'Within- and between-class stiffness' A"])
        assert all(-1 <= value <= 1 for value in within)

        # The `run` variable's query, as Grafana's label_values() runs it.
        variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "run")
        match = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["definition"])
        assert match is not None
        values = prometheus.api(f"label/{match.group(2)}/values", **{"match[]": match.group(1)})
        assert values == [RUN]

        # The deployment guide's run-comparison queries run on the same server; only the one
        # listing runs with a non-empty queue is empty (the queue has drained).
        answers = {query: prometheus.instant(query) for query in docs_queries()}
        assert [query for query, answer in answers.items() if not answer] == [
            "sum by (run) (stiffness_queue_depth) > 0"
        ], answers
        assert finite_values(answers["count(stiffness_early_stop == 1)"]) == [1.0]

        # The alerting rules load and evaluate without error on real series, and the early
        # stop alert fires for the run.
        groups = prometheus.api("rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        assert len(rules) == 10
        assert all(rule["health"] == "ok" for rule in rules), rules
        alerts = prometheus.api("alerts")["alerts"]
        assert {(a["labels"]["alertname"], a["labels"].get("run")) for a in alerts} == {
            ("StiffnessEarlyStop", RUN)
        }, alerts
    finally:
        if prometheus is not None:
            prometheus.stop()
        assert daemon.stop() == 0, daemon.log
