"""deploy/distributed/: the multi-GPU evaluator, checked like the other manifests.

The Deployment, its ConfigMap and claim go through ``kubernetes-validate`` against the
pinned Kubernetes version; the PyTorchJob is a custom resource the validator has no schema
for, so its fields are held to the kubeflow.org/v1 ones and each replica's pod template is
validated as a Pod. The config they carry loads with the monitor's own loader, and the
command, GPUs, ports and volumes agree with each other and with what ``watch`` under torchrun
needs (docs/distributed.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from monitor.config.schema import load_config
from tests.conftest import REPO
from tests.test_deploy import KUBERNETES_VERSION

FOLDER = REPO / "deploy" / "distributed"
CONFIG_PATH = "/etc/stiffness-monitor/monitor.yaml"
PYTORCHJOB_SPEC = {"nprocPerNode", "runPolicy", "pytorchReplicaSpecs", "elasticPolicy"}
REPLICA_SPEC = {"replicas", "restartPolicy", "template"}
RUN_POLICY = {"cleanPodPolicy", "backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished",
              "schedulingPolicy", "suspend", "managedBy"}  # fmt: skip


def documents(name: str) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in yaml.safe_load_all((FOLDER / name).read_text())}


def evaluator() -> dict[str, dict[str, Any]]:
    return documents("evaluator.yaml")


def pod_of(template: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x", **template["metadata"]},
            "spec": template["spec"]}  # fmt: skip


def check_container(container: dict[str, Any], volumes: dict[str, Any]) -> int:
    """What every rank's container needs; returns its GPU count."""
    assert container["command"] == ["python3", "-m", "torch.distributed.run"]
    args = container["args"]
    module = args.index("-m")
    assert args[module : module + 5] == ["-m", "monitor", "watch", "-c", CONFIG_PATH]
    assert float(args[args.index("--timeout") + 1]) > 0
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    assert limits["nvidia.com/gpu"] == requests["nvidia.com/gpu"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["config"] == str(Path(CONFIG_PATH).parent)
    assert mounts["shm"] == "/dev/shm" and volumes["shm"]["emptyDir"]["medium"] == "Memory"
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    return int(limits["nvidia.com/gpu"])


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tmp_path_factory.mktemp("cm") / "monitor.yaml"
    path.write_text(evaluator()["ConfigMap"]["data"]["monitor.yaml"])
    return load_config(path)


def test_the_core_manifests_validate_against_the_pinned_schemas() -> None:
    found = evaluator()
    assert set(found) == {"ConfigMap", "PersistentVolumeClaim", "Deployment"}
    for document in found.values():
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_evaluator_config_suits_torchrun(config: Any) -> None:
    assert config.stiffness.device in ("auto", "cuda")  # cuda:N is refused under torchrun
    assert config.metrics.host == "0.0.0.0"
    assert config.watch.observer == "polling"  # a network volume
    assert config.store.path == Path("/var/lib/stiffness-monitor/state.db")


def test_the_deployment_runs_one_rank_per_gpu_with_rank_zero_scraped(config: Any) -> None:
    found = evaluator()
    deployment = found["Deployment"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    template = deployment["spec"]["template"]
    pod = template["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    [container] = pod["containers"]
    gpus = check_container(container, volumes)
    args = container["args"]
    assert "--standalone" in args
    assert int(args[args.index("--nproc_per_node") + 1]) == gpus
    assert volumes["config"]["configMap"]["name"] == found["ConfigMap"]["metadata"]["name"]
    claim = found["PersistentVolumeClaim"]["metadata"]["name"]
    assert volumes["state"]["persistentVolumeClaim"]["claimName"] == claim
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert config.store.path.parent == Path(mounts["state"])
    assert config.runs[0].path.is_relative_to(mounts["checkpoints"])
    [port] = container["ports"]
    assert port["containerPort"] == config.metrics.port
    assert template["metadata"]["annotations"]["prometheus.io/port"] == str(config.metrics.port)
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}


def test_the_pytorchjob_has_only_known_fields_and_valid_pods(config: Any) -> None:
    job = documents("pytorchjob.yaml")["PyTorchJob"]
    assert job["apiVersion"] == "kubeflow.org/v1"
    spec = job["spec"]
    assert set(spec) <= PYTORCHJOB_SPEC
    assert set(spec["runPolicy"]) <= RUN_POLICY
    assert set(spec["pytorchReplicaSpecs"]) == {"Master", "Worker"}
    assert spec["pytorchReplicaSpecs"]["Master"]["replicas"] == 1  # global rank 0: the daemon
    for role, replica in spec["pytorchReplicaSpecs"].items():
        assert set(replica) <= REPLICA_SPEC, role
        kubernetes_validate.validate(pod_of(replica["template"]), KUBERNETES_VERSION, strict=True)
        pod = replica["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        [container] = pod["containers"]
        assert container["name"] == "pytorch"  # the container the operator configures
        assert check_container(container, volumes) == int(spec["nprocPerNode"]), role
        assert volumes["config"]["configMap"]["name"] == "stiffness-evaluator"
    master = spec["pytorchReplicaSpecs"]["Master"]["template"]
    [port] = master["spec"]["containers"][0]["ports"]
    assert port["containerPort"] == config.metrics.port
    assert master["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    worker = spec["pytorchReplicaSpecs"]["Worker"]["template"]
    assert "state" not in {v["name"] for v in worker["spec"]["volumes"]}  # rank 0 alone writes


def test_a_misspelt_pytorchjob_field_is_found() -> None:
    job = documents("pytorchjob.yaml")["PyTorchJob"]
    job["spec"]["nProcPerNode"] = job["spec"].pop("nprocPerNode")
    assert not set(job["spec"]) <= PYTORCHJOB_SPEC
    template = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]
    template["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod_of(template), KUBERNETES_VERSION, strict=True)
