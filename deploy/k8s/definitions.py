"""CL's code location on Kubernetes: every step in its own pod, the training step on a GPU node.

The user-code deployment of the Dagster Helm chart serves this file
(`dagster api grpc -f deploy/k8s/definitions.py`, see values.yaml). It is CL's own
`Definitions` plus one thing: the `k8s_job_executor`, which starts a Kubernetes Job per step
and gives the `lora_adapter` step the GPU settings below. Off Kubernetes nothing changes: the
CLI, `dagster dev` and the tests load `cl_assets.definitions` as before.

Needs `dagster-k8s` in the image (see Dockerfile).
"""

from __future__ import annotations

from dagster import Definitions
from dagster_k8s import k8s_job_executor

from cl_assets.definitions import defs as cl_defs

# Raw Kubernetes config merged into the training step's pod. Adapt the node selector and the
# toleration to your GPU node pool; one GPU is what 4-bit QLoRA of a small base needs.
GPU_STEP = {
    "container_config": {
        "resources": {
            "requests": {"cpu": "4", "memory": "24Gi"},
            "limits": {"nvidia.com/gpu": 1, "memory": "48Gi"},
        },
    },
    "pod_spec_config": {
        "node_selector": {"cl.example.com/pool": "gpu"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    },
}

# Steps without an entry (curation, evaluation, deployment) run on ordinary nodes. Give
# `adapter_eval` GPU_STEP too if evaluation on CPU becomes the slow part.
STEP_K8S_CONFIG = {"lora_adapter": GPU_STEP}

executor = k8s_job_executor.configured(
    {"per_step_k8s_config": STEP_K8S_CONFIG, "max_concurrent": 4},
    name="cl_k8s_job_executor",
)

defs = Definitions.merge(cl_defs, Definitions(executor=executor))
