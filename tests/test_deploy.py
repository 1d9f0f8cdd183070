"""deploy/: every shipped file is checked by the tool that will read it, and against each other.

Prometheus files go through the real ``promtool`` (config, rules, the rule unit tests);
Kubernetes manifests through ``kubernetes-validate`` against a pinned Kubernetes version; the
systemd unit through ``systemd-analyze verify``; the monitor configs through the monitor's own
loader and ``stiffness-monitor check``. Grafana, Docker and Compose cannot run here, so their
files are checked structurally, and every file is cross-checked against the others: ports,
paths, volume names, the datasource uid, the job label and the metric names the exporter has.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from monitor.config.schema import load_config
from monitor.exporter.metrics import MonitorMetrics
from monitor.rules.spec import load_rules
from tests.conftest import EXAMPLE, REPO, run_cli

DEPLOY = REPO / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "stiffness-monitor.json"
KUBERNETES_VERSION = "1.30.0"  # the oldest release the manifests support (native sidecars)
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
ALERTS_REQUIRED = {
    "StiffnessEarlyStop", "StiffnessMonitorStalled", "StiffnessQueueStuck",
    "StiffnessCheckpointErrorRate", "StiffnessEvaluationSlowerThanCheckpoints",
    "StiffnessMonitorDown", "StiffnessMonitorAbsent", "StiffnessStopPending",
    "StiffnessStoreNotWritable",
}  # fmt: skip


def read_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def promtool(*args: str | Path, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def alert_rules() -> list[dict[str, Any]]:
    groups = read_yaml(PROMETHEUS_DIR / "alerts.yml")["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def exported_series_names() -> set[str]:
    """Every sample name the daemon's exporter can produce, from a real MonitorMetrics."""
    suffixes = {
        "counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
        "info": ("_info",), "gauge": ("",),
    }  # fmt: skip
    names: set[str] = set()
    for family in MonitorMetrics().registry.collect():
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


def referenced_series(expr: str) -> set[str]:
    """Exporter series an expression reads (not recording rules like run:stiffness_...:...)."""
    return set(re.findall(r"(?<![\w:])((?:stiffness|process)_\w+)", expr))


def k8s_documents() -> dict[str, dict[str, Any]]:
    """Kubernetes resources by kind (one per file), servicemonitor/ included."""
    documents = {}
    for path in sorted((DEPLOY / "kubernetes").rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            documents[document["kind"]] = document
    return documents


# --- Prometheus -----------------------------------------------------------------------------


@needs_promtool
@pytest.mark.parametrize("name", ["prometheus.yml", "federation.yml"])
def test_promtool_accepts_the_scrape_configs(name: str) -> None:
    done = promtool("check", "config", name)
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_promtool_accepts_the_kubernetes_scrape_config_apart_from_its_discovery(
    tmp_path: Path,
) -> None:
    # Debian's prometheus is built without Kubernetes discovery, so kubernetes_sd_configs is
    # swapped for a static target; everything else (relabelling regexes, rule files) is checked.
    config = read_yaml(PROMETHEUS_DIR / "prometheus-kubernetes.yml")
    [job] = config["scrape_configs"]
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    del job["kubernetes_sd_configs"]
    job["static_configs"] = [{"targets": ["10.0.0.1:9108"]}]
    config["rule_files"] = [str(PROMETHEUS_DIR / "alerts.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    done = promtool("check", "config", tmp_path / "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_promtool_accepts_the_rules_and_their_unit_tests_pass() -> None:
    checked = promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "alerts_test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout + tested.stderr


@needs_promtool
def test_a_broken_alert_fails_its_unit_tests(tmp_path: Path) -> None:
    """The unit tests have teeth: an early-stop alert that never fires is caught."""
    shutil.copy(PROMETHEUS_DIR / "alerts_test.yml", tmp_path)
    text = (PROMETHEUS_DIR / "alerts.yml").read_text()
    broken = text.replace("expr: stiffness_early_stop == 1", "expr: stiffness_early_stop == 2")
    assert broken != text
    (tmp_path / "alerts.yml").write_text(broken)
    done = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert done.returncode != 0 and "StiffnessEarlyStop" in done.stdout + done.stderr


def test_every_alert_has_severity_run_annotations_and_both_outcomes_tested() -> None:
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == ALERTS_REQUIRED
    for rule in rules:
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, rule["alert"]
        for key in ("summary", "description"):
            assert "$labels.run" in rule["annotations"][key], (rule["alert"], key)
    tested: dict[str, set[bool]] = {}
    for case in read_yaml(PROMETHEUS_DIR / "alerts_test.yml")["tests"]:
        for check in case.get("alert_rule_test", []):
            tested.setdefault(check["alertname"], set()).add(bool(check["exp_alerts"]))
    assert {name for name, outcomes in tested.items() if outcomes == {True, False}} == (
        ALERTS_REQUIRED
    ), tested


def test_the_scrape_job_is_the_one_alerts_and_kubernetes_name() -> None:
    for name in ("prometheus.yml", "prometheus-kubernetes.yml"):
        config = read_yaml(PROMETHEUS_DIR / name)
        assert [job["job_name"] for job in config["scrape_configs"]] == ["stiffness-monitor"]
        assert config["rule_files"] == ["alerts.yml"]
    for rule in alert_rules():
        for job in re.findall(r'job="([^"]+)"', rule["expr"]):
            assert job == "stiffness-monitor", rule["alert"]


def test_alerts_and_dashboard_read_only_series_the_exporter_has() -> None:
    exported = exported_series_names()
    assert {"stiffness_class_within", "stiffness_rule_best", "stiffness_build_info"} <= exported
    groups = read_yaml(PROMETHEUS_DIR / "alerts.yml")["groups"]
    expressions = [rule["expr"] for group in groups for rule in group["rules"]]
    dashboard = json.loads(DASHBOARD.read_text())
    expressions += [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    expressions += [a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a]
    unknown = {name for expr in expressions for name in referenced_series(expr)} - exported
    assert not unknown, f"not exported by monitor/exporter/metrics.py: {sorted(unknown)}"


def docs_queries() -> list[str]:
    """The PromQL lines of docs/deploy.md's ```promql blocks (the run-comparison queries)."""
    text = (REPO / "docs" / "deploy.md").read_text()
    blocks = re.findall(r"```promql\n(.*?)```", text, re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


@needs_promtool
def test_the_queries_in_the_deployment_guide_parse(tmp_path: Path) -> None:
    queries = docs_queries()
    assert len(queries) >= 8
    rules = [
        {"record": f"docs:query_{index}", "expr": query} for index, query in enumerate(queries)
    ]
    (tmp_path / "docs.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "docs", "rules": rules}]})
    )
    done = promtool("check", "rules", tmp_path / "docs.yml")
    assert done.returncode == 0, done.stdout + done.stderr


# --- Grafana ----------------------------------------------------------------------------------


def test_grafana_provisioning_points_at_the_dashboard_and_the_datasource() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    [source] = read_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    scrape = read_yaml(PROMETHEUS_DIR / "prometheus.yml")["global"]["scrape_interval"]
    assert source["jsonData"]["timeInterval"] == scrape  # what $__rate_interval is built on
    [provider] = read_yaml(provisioning / "dashboards" / "stiffness-monitor.yml")["providers"]
    grafana = read_yaml(DEPLOY / "docker-compose.yml")["services"]["grafana"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in grafana["volumes"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]


def test_the_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    uid = read_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")[
        "datasources"
    ][0]["uid"]
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert all(isinstance(grid[key], int) for key in ("x", "y", "w", "h")), panel["title"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        area = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])}  # fmt: skip
        assert not area & cells, f"panel {panel['title']!r} overlaps another"
        cells |= area
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["description"]
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert panel["targets"] and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid, panel["title"]
            assert target["expr"].strip(), panel["title"]
            assert 'run=~"$run"' in target["expr"], f"{panel['title']}: not filtered by $run"
    kinds = {panel["type"] for panel in panels}
    assert {"timeseries", "stat", "status-history", "table", "heatmap"} <= kinds

    [variable] = [v for v in dashboard["templating"]["list"] if v["name"] == "run"]
    assert variable["type"] == "query" and variable["datasource"]["uid"] == uid
    assert variable["definition"] == "label_values(stiffness_checkpoint_step, run)"
    assert variable["query"]["query"] == variable["definition"]

    [stop] = [a for a in dashboard["annotations"]["list"] if a.get("name") == "Early stop"]
    assert stop["enable"] and stop["datasource"]["uid"] == uid
    assert "stiffness_early_stop" in stop["expr"] and "$run" in stop["expr"]

    exprs = " ".join(t["expr"] for p in panels for t in p.get("targets", []))
    for needed in ("stiffness_within_class", "stiffness_between_class", "stiffness_probe_loss",
                   "stiffness_probe_accuracy", "stiffness_class_within", "histogram_quantile",
                   "stiffness_queue_depth", "stiffness_checkpoint_errors_total"):  # fmt: skip
        assert needed in exprs, needed


# --- Kubernetes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    sorted((DEPLOY / "kubernetes").glob("*.yaml")),
    ids=lambda path: path.name,
)
def test_kubernetes_manifests_validate_against_the_pinned_schemas(path: Path) -> None:
    for document in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_kubernetes_validation_rejects_a_misspelt_field() -> None:
    job = k8s_documents()["Job"]
    job["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)


def test_the_configmap_carries_the_shipped_config_and_rules() -> None:
    data = k8s_documents()["ConfigMap"]["data"]
    assert set(data) == {"monitor.yaml", "rules.yaml"}
    for key, text in data.items():
        assert text == (DEPLOY / "config" / key).read_text(), f"{key} differs from deploy/config"


def test_the_job_pod_is_a_trainer_with_a_monitor_sidecar() -> None:
    documents = k8s_documents()
    config = load_config(DEPLOY / "config" / "monitor.yaml")
    template = documents["Job"]["spec"]["template"]
    pod = template["spec"]
    [monitor] = pod["initContainers"]
    [trainer] = pod["containers"]
    assert monitor["restartPolicy"] == "Always"  # native sidecar: the Job ends with the trainer
    mounts = {c["name"]: {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
              for c in (monitor, trainer)}  # fmt: skip
    assert mounts[monitor["name"]]["checkpoints"] == mounts["trainer"]["checkpoints"]
    run_path = config.runs[0].path
    out = Path(trainer["args"][trainer["args"].index("--out") + 1])
    assert out == run_path and run_path.is_relative_to(mounts["trainer"]["checkpoints"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == documents["ConfigMap"]["metadata"]["name"]
    assert mounts[monitor["name"]]["config"] == "/etc/stiffness-monitor"
    assert monitor["args"] == ["watch", "-c", "/etc/stiffness-monitor/monitor.yaml"]
    assert Path(mounts[monitor["name"]]["state"]) == Path("/var/lib/stiffness-monitor")
    assert config.store.path.parent == Path("/var/lib/stiffness-monitor")

    for container in (monitor, trainer):
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["limits"]), container["name"]
        assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True

    [port] = monitor["ports"]
    assert port["name"] == "metrics" and port["containerPort"] == config.metrics.port
    assert config.metrics.host == "0.0.0.0"  # reachable from Prometheus in another pod
    assert monitor["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert monitor["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(config.metrics.port)
    assert annotations["prometheus.io/path"] == "/metrics"

    service = documents["Service"]
    selector = service["spec"]["selector"]
    assert selector.items() <= template["metadata"]["labels"].items()
    [service_port] = service["spec"]["ports"]
    assert service_port["targetPort"] == "metrics" and service_port["name"] == "metrics"


# The ServiceMonitor fields this file may use (monitoring.coreos.com/v1): kubernetes-validate
# has no CRD schemas, so a misspelt key would otherwise pass unnoticed.
SERVICE_MONITOR_SPEC = {
    "jobLabel", "targetLabels", "podTargetLabels", "endpoints", "selector", "namespaceSelector",
    "sampleLimit", "scrapeProtocols", "attachMetadata", "labelLimit",
}  # fmt: skip
SERVICE_MONITOR_ENDPOINT = {
    "port", "targetPort", "path", "scheme", "params", "interval", "scrapeTimeout", "tlsConfig",
    "basicAuth", "authorization", "honorLabels", "honorTimestamps", "relabelings",
    "metricRelabelings", "followRedirects", "enableHttp2", "filterRunning",
}  # fmt: skip


def test_the_service_monitor_selects_the_service_and_keeps_the_job_label() -> None:
    documents = k8s_documents()
    monitor, service = documents["ServiceMonitor"], documents["Service"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    spec = monitor["spec"]
    assert set(spec) <= SERVICE_MONITOR_SPEC, set(spec) - SERVICE_MONITOR_SPEC
    labels = service["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert labels[spec["jobLabel"]] == "stiffness-monitor"  # the job alerts.yml selects
    assert set(spec["targetLabels"]) <= set(labels)
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= SERVICE_MONITOR_ENDPOINT, set(endpoint) - SERVICE_MONITOR_ENDPOINT
        assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
        assert endpoint["path"] == "/metrics"
        assert re.fullmatch(r"\d+[smh]", endpoint["interval"])


# --- Compose and Docker -----------------------------------------------------------------------


def test_compose_runs_trainer_monitor_prometheus_and_grafana_on_one_volume() -> None:
    compose = read_yaml(DEPLOY / "docker-compose.yml")
    services = compose["services"]
    assert set(services) == {"trainer", "monitor", "prometheus", "grafana"}
    config = load_config(DEPLOY / "config" / "monitor.yaml")
    trainer, monitor = services["trainer"], services["monitor"]
    for service in (trainer, monitor):
        assert service["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        assert "checkpoints:/checkpoints" in service["volumes"]
    assert "checkpoints" in compose["volumes"] and "monitor-state" in compose["volumes"]
    script = trainer["entrypoint"][-1]
    assert script == "/opt/stiffness-monitor/examples/digits/train.py"
    assert (EXAMPLE / "train.py").is_file()
    assert Path(trainer["command"][trainer["command"].index("--out") + 1]) == config.runs[0].path
    assert monitor["command"] == ["watch", "-c", "/etc/stiffness-monitor/monitor.yaml"]
    assert "./config:/etc/stiffness-monitor:ro" in monitor["volumes"]
    assert "monitor-state:/var/lib/stiffness-monitor" in monitor["volumes"]
    assert monitor["ports"] == [f"127.0.0.1:{config.metrics.port}:{config.metrics.port}"]
    # Prometheus scrapes the monitor service by name; Grafana reads Prometheus by name.
    [target] = read_yaml(PROMETHEUS_DIR / "prometheus.yml")["scrape_configs"][0]["static_configs"][
        0
    ]["targets"]
    assert target == f"monitor:{config.metrics.port}"
    assert "./prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    for service in services.values():  # published on the host's loopback only
        assert all(str(port).startswith("127.0.0.1:") for port in service.get("ports", []))
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), volume
    gpu = read_yaml(DEPLOY / "docker-compose.gpu.yml")["services"]["monitor"]
    [device] = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_the_dockerfile_builds_a_non_root_cuda_image_with_a_health_check() -> None:
    instructions = dockerfile_instructions()
    args = dict(a.split("=", 1) for kind, a in instructions if kind == "ARG" and "=" in a)
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-runtime-ubuntu[\d.]+", args["CUDA_IMAGE"])
    assert [a for kind, a in instructions if kind == "FROM"] == ["${CUDA_IMAGE}"]
    [user] = [a for kind, a in instructions if kind == "USER"]
    assert user.split(":")[0] not in {"0", "root"}
    [health] = [a for kind, a in instructions if kind == "HEALTHCHECK"]
    assert "CMD" in health and "STIFFNESS_MONITOR_HEALTHZ" in health
    envs = " ".join(a for kind, a in instructions if kind == "ENV")
    assert "STIFFNESS_MONITOR_HEALTHZ=http://127.0.0.1:9108/healthz" in envs
    assert [a for kind, a in instructions if kind == "EXPOSE"] == ["9108"]
    assert json.loads(next(a for kind, a in instructions if kind == "ENTRYPOINT")) == [
        "stiffness-monitor"
    ]
    assert json.loads(next(a for kind, a in instructions if kind == "CMD")) == [
        "watch", "-c", "/etc/stiffness-monitor/monitor.yaml",
    ]  # fmt: skip
    for kind, arguments in instructions:  # everything copied exists in the build context
        if kind == "COPY":
            for source in arguments.split()[:-1]:
                assert (REPO / source).exists(), source
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    for kind, arguments in instructions:
        if kind == "COPY":
            for source in arguments.split()[:-1]:
                assert f"!{source}" in ignore or f"!{source}/" in ignore, source


# --- systemd ----------------------------------------------------------------------------------

UNIT = DEPLOY / "systemd" / "stiffness-monitor.service"


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_the_systemd_unit_is_hardened_and_reloads_with_sighup() -> None:
    settings = unit_settings()
    for key, value in {
        "DynamicUser": "yes", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
        "Restart": "on-failure", "ExecReload": "/bin/kill -HUP $MAINPID", "PrivateTmp": "yes",
        "StateDirectory": "stiffness-monitor", "ConfigurationDirectory": "stiffness-monitor",
        "RestartPreventExitStatus": "2", "CapabilityBoundingSet": "",
    }.items():  # fmt: skip
        assert settings[key] == [value], key
    [start] = settings["ExecStart"]
    assert start.endswith("stiffness-monitor watch -c /etc/stiffness-monitor/monitor.yaml")
    config = load_config(DEPLOY / "systemd" / "monitor.yaml")
    assert config.store.path.parent == Path("/var/lib/stiffness-monitor")  # StateDirectory
    assert config.metrics.host == "127.0.0.1"
    for run in config.runs:  # the stop file is written into the run folder
        assert any(run.path.is_relative_to(path) for path in settings["ReadWritePaths"])


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    # The unit names the venv it is installed with; point it at this one so verify can check
    # that the command exists. Everything else is verified verbatim.
    executable = Path(sys.executable).parent / "stiffness-monitor"
    unit = tmp_path / UNIT.name
    installed = "/opt/stiffness-monitor/venv/bin/stiffness-monitor"
    unit.write_text(UNIT.read_text().replace(installed, str(executable)))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 0 and unit.name not in output, output


# --- the monitor's own configs ------------------------------------------------------------------


def test_the_shipped_monitor_configs_and_rules_load() -> None:
    config = load_config(DEPLOY / "config" / "monitor.yaml")
    assert config.rules == DEPLOY / "config" / "rules.yaml"
    rules = load_rules(config.rules, config.source)
    assert rules.rules
    assert config.runs[0].path == Path("/checkpoints/digits")
    systemd = load_config(DEPLOY / "systemd" / "monitor.yaml")
    assert systemd.rules == DEPLOY / "systemd" / "rules.yaml"  # deploy/config/rules.yaml there


@pytest.mark.slow
def test_stiffness_monitor_check_accepts_the_container_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``check`` as the container runs it: factories imported, probe loaded, rules parsed.

    Only the two paths that exist inside the container (the checkpoint volume and the store
    volume) are moved into the temporary folder; every other key is the shipped text.
    """
    folder = tmp_path / "etc"
    shutil.copytree(DEPLOY / "config", folder)
    text = (folder / "monitor.yaml").read_text()
    for old, new in (("/checkpoints/digits", str(tmp_path / "checkpoints" / "digits")),
                     ("/var/lib/stiffness-monitor", str(tmp_path / "state"))):  # fmt: skip
        assert old in text
        text = text.replace(old, new)
    (folder / "monitor.yaml").write_text(text)
    (tmp_path / "checkpoints" / "digits").mkdir(parents=True)
    monkeypatch.setenv("PYTHONPATH", str(EXAMPLE))  # as the image's PYTHONPATH does
    done = run_cli("check", "-c", folder / "monitor.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
