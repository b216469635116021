"""The deployment examples in deploy/ stay well-formed and keep their security-relevant choices.

deploy/dagster.yaml is exercised for real by test_scale_out.py. Here: every YAML parses, the
Helm values keep the run launcher, the external PostgreSQL (with the psycopg2 scheme) and the
shared volume, the chat is never opened up without its login secret, and the Kubernetes code
location's executor config is valid for dagster-k8s with the GPU on the training step only.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

DEPLOY = REPO / "deploy"


def _docs(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def test_every_yaml_example_parses() -> None:
    files = sorted(DEPLOY.rglob("*.yaml"))
    assert {f.relative_to(DEPLOY).as_posix() for f in files} >= {"dagster.yaml", "k8s/values.yaml", "k8s/cl.yaml", "k8s/chat.yaml"}
    for file in files:
        assert _docs(file), file


def test_helm_values_launch_runs_on_kubernetes_with_postgres_and_the_shared_volume() -> None:
    values = _docs(DEPLOY / "k8s" / "values.yaml")[0]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    pg = values["postgresql"]
    assert pg["enabled"] is False and pg["postgresqlScheme"] == "postgresql+psycopg2"
    (code,) = values["dagster-user-deployments"]["deployments"]
    assert code["dagsterApiGrpcArgs"][:2] == ["-f", "/app/deploy/k8s/definitions.py"]
    assert (DEPLOY / "k8s" / "definitions.py").is_file()
    assert code["includeConfigInLaunchedRuns"]["enabled"] is True
    assert {"name": "cl-secrets"} in code["envSecrets"] and {"name": "cl-config"} in code["envConfigMaps"]
    assert code["volumeMounts"] == [{"name": "cl-data", "mountPath": "/data"}]
    assert values["dagsterWebserver"]["service"]["type"] == "ClusterIP"  # the UI has no login of its own
    objects = {doc["metadata"]["name"]: doc for doc in _docs(DEPLOY / "k8s" / "cl.yaml")}
    assert objects["cl-data"]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert objects["cl-config"]["data"]["CL_DATA_DIR"].startswith("/data/")
    assert {"CL_DATABASE_URL", "CL_USER_HASH_SALT", "CL_CHAT_AUTH", "CL_API_KEY"} <= set(objects["cl-secrets"]["stringData"])
    assert objects["cl-secrets"]["stringData"]["CL_DATABASE_URL"].startswith("postgresql+psycopg://")


def test_the_chat_listens_beyond_loopback_only_with_its_login_its_api_key_and_behind_tls() -> None:
    docs = {doc["kind"]: doc for doc in _docs(DEPLOY / "k8s" / "chat.yaml")}
    (container,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["CL_CHAT_HOST"]["value"] == "0.0.0.0"
    assert env["CL_CHAT_AUTH"]["valueFrom"]["secretKeyRef"] == {"name": "cl-secrets", "key": "CL_CHAT_AUTH"}
    assert env["CL_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "cl-secrets", "key": "CL_API_KEY"}
    assert docs["Service"]["spec"]["type"] == "ClusterIP" and docs["Ingress"]["spec"]["tls"]


def test_kubernetes_code_location_puts_only_the_training_step_on_a_gpu() -> None:
    pytest.importorskip("dagster_k8s", reason="dagster-k8s is not installed (it is in the image, see deploy/k8s/Dockerfile)")
    from dagster._core.system_config.objects import ResolvedRunConfig

    spec = importlib.util.spec_from_file_location("cl_k8s_definitions", DEPLOY / "k8s" / "definitions.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    job = module.defs.resolve_job_def("cycle_job")
    assert job.executor_def.name == "cl_k8s_job_executor"
    ResolvedRunConfig.build(job, {})  # raises DagsterInvalidConfigError on a wrong key anywhere in it
    assert set(module.STEP_K8S_CONFIG) == {"lora_adapter"} and "lora_adapter" in {n.name for n in job.nodes}
    gpu = module.GPU_STEP
    assert gpu["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["pod_spec_config"]["tolerations"] and gpu["pod_spec_config"]["node_selector"]
