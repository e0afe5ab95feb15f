"""The tiny example on real pods (manifests/examples/tiny-cluster.yaml): what its namespace needs, the operator
installed with helm, and a run followed to its end. ``make cluster-demo`` and tests/cluster/test_real_run.py
use it.

In the run's namespace: the claims models, data and checkpoints (static hostPath volumes every real node sees),
filled with the tiny stand-ins ``longalign run --prepare-tiny`` makes (a random tiny Llama, short documents, the
LongBench-Chat sample); and the judge, which stands in for a paid API: a vLLM server of the tiny Llama (a
Deployment of the trainer image on a real node) behind Service ``judge``, checking the key in Secret
``judge-api-key`` as a real API checks its key.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from localcluster.cluster import LocalCluster, wait_for
from localcluster.operator_process import install_manifests
from longalign_operator.builders import Run
from longalign_operator.local.runfile import LocalOptions, RunFile
from longalign_operator.local.tiny import prepare_tiny
from longalign_operator.local.volumes import Volumes
from longalign_operator.spec import parse

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "manifests" / "examples" / "tiny-cluster.yaml"
CHART = REPO / "charts" / "longalign-operator"
JUDGE = "judge"
JUDGE_KEY = "tiny-judge-key"  # the judge's API key, as a Secret holds it
JUDGE_MODEL = "/models/tiny-llama"
JUDGE_PORT = 8000
ON_REAL_NODES = {
    "nodeSelector": {"type": "real"},
    "tolerations": [{"key": "longalign.dev/real-node", "operator": "Exists", "effect": "NoSchedule"}],
}
"""Placement on the real nodes (they take only pods that tolerate their taint), as for any dedicated nodes."""


def example() -> dict:
    """The shipped example resource, parsed."""
    return yaml.safe_load(EXAMPLE.read_text())


def install_operator_chart(cluster: LocalCluster, namespace: str, release: str = "longalign") -> dict:
    """``helm install`` the chart with the operator image built here, its pod on a real node; returns the pod
    once Ready. The CRD is applied with kubectl first (the chart then leaves it alone)."""
    repository, tag = cluster.node_image("operator").rsplit(":", 1)
    install_manifests(cluster)
    cluster.helm(
        "install",
        release,
        str(CHART),
        "-n",
        namespace,
        "--set",
        "crds.enabled=false",
        "--set",
        f"image.repository={repository}",
        "--set",
        f"image.tag={tag}",
        "--set",
        "image.pullPolicy=Never",
        "--set-json",
        f"operator={json.dumps(ON_REAL_NODES)}",
    )
    return wait_for(
        lambda: ready_pod(cluster, namespace, f"app.kubernetes.io/instance={release}"),
        180,
        "the operator pod to be Ready",
        interval=1,
    )


def ready_pod(cluster: LocalCluster, namespace: str, selector: str) -> dict | None:
    """A pod matching ``selector`` whose Ready condition is True, or None."""
    pods = cluster.get("pods", "-n", namespace, "-l", selector)["items"]
    return next(
        (
            p
            for p in pods
            if p["metadata"].get("deletionTimestamp") is None
            and any(c["type"] == "Ready" and c["status"] == "True" for c in p.get("status", {}).get("conditions", []))
        ),
        None,
    )


def prepare_namespace(cluster: LocalCluster, namespace: str, resource: dict) -> list[Path]:
    """Claims filled with the tiny stand-ins of everything ``resource`` names, the judge's key and the judge
    server (not waited for); returns what was created on the volumes."""
    cluster.create_bound_claims(namespace)
    spec = parse(resource["spec"])
    volumes = Volumes(
        {mount: cluster.volume_dir(namespace, source.claim_name) for mount, source in spec.storage.mounts().items()}
    )
    run = Run(resource["metadata"]["name"], namespace, "tiny", {}, spec)
    created = prepare_tiny(RunFile(run, LocalOptions(judge_model_path=JUDGE_MODEL)), volumes)
    cluster.kubectl(
        "create", "secret", "generic", "judge-api-key", "-n", namespace, f"--from-literal=api-key={JUDGE_KEY}"
    )
    cluster.create(namespace, *judge_objects(spec.image))
    return created


def judge_objects(image: str) -> list[dict]:
    """The judge: vLLM serving the tiny Llama as ``judge`` on a real node, behind Service ``judge``."""
    labels = {"app": JUDGE}
    command = [
        "python",
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        JUDGE_MODEL,
        "--served-model-name",
        JUDGE,
        "--port",
        str(JUDGE_PORT),
        "--max-model-len",
        "4096",
        "--dtype",
        "bfloat16",
        "--api-key",
        "$(JUDGE_API_KEY)",
        "--enforce-eager",  # a tiny model: no torch.compile, a faster start
    ]
    container = {
        "name": "vllm",
        "image": image,
        "command": command,
        "env": [
            {"name": "VLLM_CPU_KVCACHE_SPACE", "value": "1"},
            {"name": "JUDGE_API_KEY", "valueFrom": {"secretKeyRef": {"name": "judge-api-key", "key": "api-key"}}},
        ],
        "ports": [{"name": "http", "containerPort": JUDGE_PORT}],
        "readinessProbe": {"httpGet": {"path": "/health", "port": JUDGE_PORT}, "periodSeconds": 5},
        "volumeMounts": [
            {"name": "models", "mountPath": "/models", "readOnly": True},
            {"name": "dshm", "mountPath": "/dev/shm"},  # vLLM's engine needs more than the default 64 MiB
        ],
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": JUDGE, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    **ON_REAL_NODES,
                    "containers": [container],
                    "volumes": [
                        {"name": "models", "persistentVolumeClaim": {"claimName": "models"}},
                        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
                    ],
                    "automountServiceAccountToken": False,
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": JUDGE},
        "spec": {"selector": labels, "ports": [{"name": "http", "port": JUDGE_PORT}]},
    }
    return [deployment, service]


def row(cluster: LocalCluster, namespace: str, name: str) -> str:
    """The run's ``kubectl get lar`` row (no header), '' while it does not exist."""
    return cluster.kubectl("get", "lar", name, "-n", namespace, "--no-headers", check=False).stdout.strip()


def follow(
    cluster: LocalCluster,
    namespace: str,
    name: str,
    until: Callable[[dict], bool] | None = None,
    timeout: float = 1800,
    show: Callable[[str], None] | None = None,
) -> dict:
    """Poll the run until ``until(run)`` holds (default: the run Succeeded or Failed) and return it; each new
    ``kubectl get lar`` row goes to ``show``."""
    finished = until or (lambda run: run.get("status", {}).get("phase") in ("Succeeded", "Failed"))
    last = ""

    def done() -> dict | None:
        nonlocal last
        if show is not None:
            current = row(cluster, namespace, name)
            if current and current.split()[1:-1] != last.split()[1:-1]:
                show(current)
                last = current
        run = cluster.get("lar", name, "-n", namespace)
        return run if finished(run) else None

    start = time.monotonic()
    run = wait_for(done, timeout, f"run {name} in {namespace}", interval=1)
    if show is not None:
        show(f"({time.monotonic() - start:.0f} s)")
    return run
