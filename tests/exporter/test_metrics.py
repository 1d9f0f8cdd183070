"""The exporter's metrics through real scrapes: names, HELP/TYPE, promtool, per-class, rules.

Every test gets a fresh registry and a real server on port 0; the exposition is what a
Prometheus server would read. The rule-state tests drive the real rule engine and, at the
end, a real daemon (in this process) over real checkpoint files.
"""

from __future__ import annotations

import logging
import math
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.config.schema import MetricsConfig, load_config
from monitor.daemon.loop import Daemon
from monitor.exporter.metrics import MonitorMetrics
from monitor.exporter.rule_readings import rule_readings
from monitor.exporter.server import MetricsServer
from monitor.rules.engine import RuleEngine
from monitor.rules.spec import RuleSet, load_rules, parse_rules
from tests.conftest import REPO
from tests.daemon_harness import make_config, metric_value, wait_for, write_checkpoint

PROMTOOL = "/usr/bin/promtool"

#: The contract with dashboards and alerts (docs/metrics.md): family name -> TYPE.
STIFFNESS_FAMILIES = {
    "stiffness_build_info": "gauge",
    "stiffness_ready": "gauge",
    "stiffness_within_class": "gauge",
    "stiffness_between_class": "gauge",
    "stiffness_probe_loss": "gauge",
    "stiffness_probe_accuracy": "gauge",
    "stiffness_checkpoint_step": "gauge",
    "stiffness_early_stop": "gauge",
    "stiffness_stop_pending": "gauge",
    "stiffness_attempt": "gauge",
    "stiffness_best_checkpoint_step": "gauge",
    "stiffness_best_checkpoint_value": "gauge",
    "stiffness_checkpoints_discovered_total": "counter",
    "stiffness_checkpoints_evaluated_total": "counter",
    "stiffness_checkpoint_errors_total": "counter",
    "stiffness_checkpoints_skipped_total": "counter",
    "stiffness_evaluation_duration_seconds": "histogram",
    "stiffness_queue_depth": "gauge",
    "stiffness_last_evaluation_timestamp_seconds": "gauge",
    "stiffness_class_within": "gauge",
    "stiffness_rule_value": "gauge",
    "stiffness_rule_best": "gauge",
    "stiffness_rule_wait": "gauge",
    "stiffness_metrics_connections_dropped_total": "counter",
    "stiffness_store_writable": "gauge",
    "stiffness_store_write_failures_total": "counter",
    "stiffness_tensorboard_write_failures_total": "counter",
    "stiffness_gradient_disparity": "gauge",
    "stiffness_gsnr": "gauge",
    "stiffness_gsnr_median": "gauge",
    "stiffness_opposing_share": "gauge",
}
PROCESS_FAMILIES = {
    "process_cpu_seconds_total": "counter",
    "process_resident_memory_bytes": "gauge",
    "process_start_time_seconds": "gauge",
    "process_open_fds": "gauge",
    "python_info": "gauge",
    "python_gc_collections_total": "counter",
}

NESTED_RULES: list[dict[str, Any]] = [
    {
        "name": "falling",
        "kind": "all",
        "rules": [
            {"kind": "decline", "metric": "within_class", "patience": 5},
            {"kind": "slope", "metric": "probe_loss", "mode": "min", "window": 2},
        ],
    },
    {
        "kind": "any",
        "rules": [
            {"kind": "decline", "metric": "probe_loss", "mode": "min", "patience": 9},
            {
                "name": "goal",
                "kind": "threshold",
                "metric": "probe_accuracy",
                "stopping_threshold": 0.999,
            },
        ],
    },
    {"name": "diverged", "kind": "non_finite"},
]


def scrape(metrics: MonitorMetrics) -> str:
    """One real scrape over HTTP of a server on a free port."""
    server = MetricsServer(metrics.registry, lambda: metrics.is_ready, MetricsConfig(port=0))
    with server, urllib.request.urlopen(server.url, timeout=10) as response:
        return str(response.read().decode())


def families(exposition: str, kind: str) -> dict[str, str]:
    """``# HELP`` or ``# TYPE`` comment lines: family name -> help text or type."""
    found = {}
    for line in exposition.splitlines():
        if line.startswith(f"# {kind} "):
            name, _, text = line[len(kind) + 3 :].partition(" ")
            found[name] = text
    return found


def result(within: float, loss: float, accuracy: float = 0.5) -> dict[str, Any]:
    """The part of a stored evaluation the rules read."""
    return {"cosine": {"within": within}, "probe_loss": loss, "probe_accuracy": accuracy}


def populated() -> MonitorMetrics:
    """Metrics with every family set, the way the daemon sets them."""
    metrics = MonitorMetrics()
    metrics.add_run("a")
    metrics.set_ready(True)
    metrics.count_discovered("a")
    metrics.observe_evaluation("a", step=100, within=0.4, between=0.1, probe_loss=1.2,
                               probe_accuracy=0.6, duration=0.7, finished_at=1.7e9)  # fmt: skip
    metrics.count_error("a", "corrupt")
    metrics.count_skipped("a", "backlog-latest")
    metrics.set_class_within("a", [0, 1, 2], [0.5, None, 0.25])
    rules = parse_rules(NESTED_RULES, "inline")
    engine = RuleEngine(rules)
    engine.observe(100, result(0.4, 1.2))
    metrics.set_rule_states("a", rules, engine.state())
    return metrics


def test_every_family_has_help_and_its_type() -> None:
    exposition = scrape(populated())
    helps, types = families(exposition, "HELP"), families(exposition, "TYPE")
    expected = {**STIFFNESS_FAMILIES, **PROCESS_FAMILIES}
    assert {name: types.get(name) for name in expected} == expected
    assert set(helps) == set(types)
    assert all(text.strip() for text in helps.values())
    ours = {name.removesuffix("_created").removesuffix("_total") for name in types
            if name.startswith("stiffness_")}  # fmt: skip
    documented = {name.removesuffix("_total") for name in STIFFNESS_FAMILIES}
    assert ours == documented  # nothing undocumented slipped in (``_created``: client's own)


def test_build_info_names_the_versions() -> None:
    import platform

    import monitor

    line = next(x for x in scrape(MonitorMetrics()).splitlines() if x.startswith("stiffness_build"))
    assert f'version="{monitor.__version__}"' in line
    assert f'python="{platform.python_version()}"' in line
    assert 'torch="2.' in line and line.endswith(" 1.0")


def test_exposition_passes_promtool_check_metrics() -> None:
    check = subprocess.run([PROMTOOL, "check", "metrics"], input=scrape(populated()),
                           capture_output=True, text=True, timeout=30)  # fmt: skip
    assert (check.returncode, check.stdout, check.stderr) == (0, "", "")


def test_promtool_does_reject_a_bad_exposition() -> None:
    """The check above can fail: a counter without ``_total`` is a lint error."""
    bad = "# HELP stiffness_x Things.\n# TYPE stiffness_x counter\nstiffness_x 1\n"
    check = subprocess.run([PROMTOOL, "check", "metrics"], input=bad,
                           capture_output=True, text=True, timeout=30)  # fmt: skip
    assert check.returncode != 0 and "_total" in check.stdout + check.stderr


def test_ready_gauge_follows_set_ready() -> None:
    metrics = MonitorMetrics()
    assert metric_value(scrape(metrics), "stiffness_ready") == 0
    metrics.set_ready(True)
    assert metric_value(scrape(metrics), "stiffness_ready") == 1


@pytest.mark.parametrize(
    ("limit", "classes", "exported"),
    [(20, 10, True), (10, 10, True), (9, 10, False), (0, 2, False)],
    ids=["below-limit", "at-limit", "above-limit", "limit-0-disables"],
)
def test_per_class_series_follow_the_limit(limit: int, classes: int, exported: bool) -> None:
    metrics = MonitorMetrics(per_class_limit=limit)
    metrics.set_class_within("a", list(range(classes)), [c / 10 for c in range(classes)])
    exposition = scrape(metrics)
    values = [metric_value(exposition, "stiffness_class_within", run="a", **{"class": str(c)})
              for c in range(classes)]  # fmt: skip
    assert values == ([c / 10 for c in range(classes)] if exported else [None] * classes)


def test_suppressed_per_class_series_are_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    metrics = MonitorMetrics(per_class_limit=5)
    with caplog.at_level(logging.INFO, logger="monitor.metrics"):
        for run in ("a", "b", "a"):
            metrics.set_class_within(run, list(range(100)), [0.1] * 100)
    lines = [r.getMessage() for r in caplog.records if r.name == "monitor.metrics"]
    assert lines == ["per-class series not exported: 100 classes > metrics.per_class_limit 5"]


def test_undefined_class_is_nan_and_vanished_classes_are_removed() -> None:
    metrics = MonitorMetrics()
    metrics.set_class_within("a", [3, 7], [None, 0.5])
    first = scrape(metrics)
    assert math.isnan(metric_value(first, "stiffness_class_within", run="a", **{"class": "3"}))
    metrics.set_class_within("a", [7, 8], [0.25, 0.75])
    second = scrape(metrics)
    assert 'class="3"' not in second
    assert metric_value(second, "stiffness_class_within", run="a", **{"class": "8"}) == 0.75


def test_rule_readings_walk_nested_rules_and_read_each_kind() -> None:
    rules = parse_rules(NESTED_RULES, "inline")
    engine = RuleEngine(rules)
    for step, (within, loss) in enumerate([(0.5, 1.0), (0.4, 1.1), (0.3, 1.3)], start=1):
        engine.observe(step * 100, result(within, loss))
    readings = {r.rule: r for r in rule_readings(rules, engine.state())}
    assert set(readings) == {"falling/decline-0", "slope-1", "any-1/decline-0", "goal"}
    falling = readings["falling/decline-0"]
    assert (falling.value, falling.best, falling.wait) == (0.3, 0.5, 2)
    loss = readings["any-1/decline-0"]
    assert (loss.value, loss.best, loss.wait) == (1.3, 1.0, 2)
    slope = readings["slope-1"]  # slope of probe loss over the last 2: rising, bad twice
    assert (slope.value, slope.has_best, slope.wait) == (1.3, False, 2)
    goal = readings["goal"]
    assert (goal.value, goal.has_best, goal.wait) == (0.5, False, None)


def test_rule_series_before_any_value_and_after_a_reload() -> None:
    metrics = MonitorMetrics()
    rules = parse_rules(NESTED_RULES, "inline")
    metrics.set_rule_states("a", rules, RuleEngine(rules).state())
    fresh = scrape(metrics)
    assert math.isnan(metric_value(fresh, "stiffness_rule_value", run="a", rule="goal"))
    assert metric_value(fresh, "stiffness_rule_wait", run="a", rule="slope-1") == 0
    assert metric_value(fresh, "stiffness_rule_best", run="a", rule="goal") is None
    assert 'rule="diverged"' not in fresh  # non_finite watches no value
    reloaded = parse_rules([{"name": "only", "kind": "decline"}], "inline")
    metrics.set_rule_states("a", reloaded, RuleEngine(reloaded).state())
    after = scrape(metrics)
    assert {line.split('rule="')[1].split('"')[0] for line in after.splitlines()
            if line.startswith("stiffness_rule_")} == {"only"}  # fmt: skip


def run_daemon(config: Path, until: Any, then_wait: float = 0.0) -> tuple[MonitorMetrics, str]:
    """A real daemon in a thread until ``until(exposition)`` holds (and ``then_wait`` seconds
    more, for work that would come after it); returns its last scrape."""
    loaded = load_config(config)
    daemon = Daemon(loaded)
    thread = threading.Thread(target=daemon.run)
    thread.start()
    try:
        url = wait_for(lambda: daemon.metrics_port, what="the metrics port")
        address = f"http://127.0.0.1:{url}/metrics"

        def scraped() -> str | None:
            with urllib.request.urlopen(address, timeout=10) as response:
                text = str(response.read().decode())
            return text if until(text) else None

        text = wait_for(scraped, what="the expected series")
        if then_wait:
            time.sleep(then_wait)
            with urllib.request.urlopen(address, timeout=10) as response:
                text = str(response.read().decode())
        return daemon.metrics, text
    finally:
        daemon.request_stop()
        thread.join(timeout=30)
        assert not thread.is_alive()


@pytest.mark.slow
def test_daemon_exports_rule_state_after_decisions_and_on_replay(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    for step in (1, 2, 3):
        write_checkpoint(run_dir / f"step_{step}.pt", step)
    config = make_config(tmp_path / "monitor", {"a": run_dir})
    config.write_text(config.read_text() + yaml.safe_dump({"rules": NESTED_RULES}))

    def evaluated(text: str) -> float | None:
        return metric_value(text, "stiffness_checkpoints_evaluated_total", run="a")

    _, first = run_daemon(config, lambda text: evaluated(text) == 3)
    rules: RuleSet = load_rules(load_config(config).rules, config)
    names = {r.rule for r in rule_readings(rules, RuleEngine(rules).state())}
    series = {
        (name, gauge): metric_value(first, gauge, run="a", rule=name)
        for name in names
        for gauge in ("stiffness_rule_value", "stiffness_rule_best", "stiffness_rule_wait")
    }
    assert series[("falling/decline-0", "stiffness_rule_value")] == metric_value(
        first, "stiffness_within_class", run="a"
    )  # no smoothing: the rule watches the latest value
    assert series[("any-1/decline-0", "stiffness_rule_value")] == metric_value(
        first, "stiffness_probe_loss", run="a"
    )
    # Restarted with nothing new: the replayed history gives the same series, no evaluation.
    # Long enough for the start-up scan to queue the stored checkpoints (settle 0.3 s, rescans
    # every 2 s), which a daemon that forgot its store would evaluate again.
    _, second = run_daemon(config, lambda text: "stiffness_rule_value{" in text, then_wait=5.0)
    assert not evaluated(second)
    replayed = {key: metric_value(second, key[1], run="a", rule=key[0]) for key in series}
    assert replayed == series


def test_docs_list_every_stiffness_metric() -> None:
    docs = (REPO / "docs" / "metrics.md").read_text()
    for name in STIFFNESS_FAMILIES:
        assert f"`{name}`" in docs, name
