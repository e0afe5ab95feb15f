"""Kueue: the real controller (built from its Go module by ``build.sh``), its CRDs and webhooks installed as its
release installs them, and the queues the tests share GPUs through.

``build.sh`` copies Kueue's ``config/components/crd`` and ``config/components/webhook`` from the same module
beside the binary (``<bin>/kueue/``). The release renders them with kustomize; here the same pieces are put
together in Python: the CRDs with the conversion webhooks the CRD kustomization patches in, the webhook
configurations with the release's namespace selectors, each webhook reached on loopback (a URL instead of the
in-cluster Service, the CA of the harness's PKI as its caBundle) and served by the controller with a
certificate that PKI issues (Kueue's own certificate management off).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import yaml

from localcluster.pki import PKI
from localcluster.process import Processes, free_port

NAMESPACE = "kueue-system"
NAME_PREFIX = "kueue-"  # the release's kustomize namePrefix
GPU_FLAVOR = "kwok-gpu"
CPU_FLAVOR = "real-cpu"
METRICS_CERT_DIR = Path("/etc/kueue/metrics/certs")
REAL_NODE_TAINT = {"key": "longalign.dev/real-node", "operator": "Equal", "value": "true", "effect": "NoSchedule"}


def config(webhook_port: int, cert_dir: Path, health_port: int) -> dict[str, Any]:
    """Kueue's Configuration: batch/Job only, Jobs without a queue name left alone, no leader election."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "manageJobsWithoutQueueName": False,
        "internalCertManagement": {"enable": False},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": "0"},
        "leaderElection": {"leaderElect": False},
        "integrations": {"frameworks": ["batch/job"]},
    }


def _loopback(client_config: dict[str, Any], port: int, ca_bundle: str) -> dict[str, Any]:
    """A webhook clientConfig that names the release's Service, pointed at the controller on loopback."""
    path = client_config["service"].get("path", "/")
    return {"url": f"https://127.0.0.1:{port}{path}", "caBundle": ca_bundle}


def crds(manifests: Path, port: int, ca_bundle: str) -> list[dict[str, Any]]:
    """Kueue's CRDs, with the conversion webhooks that its CRD kustomization patches in."""
    kustomization = yaml.safe_load((manifests / "crd" / "kustomization.yaml").read_text())
    by_name = {}
    for resource in kustomization["resources"]:
        crd = yaml.safe_load((manifests / "crd" / resource).read_text())
        by_name[crd["metadata"]["name"]] = crd
    for patch in kustomization.get("patches") or []:
        conversion = yaml.safe_load((manifests / "crd" / patch["path"]).read_text())
        webhook = conversion["spec"]["conversion"]["webhook"]
        webhook["clientConfig"] = _loopback(webhook["clientConfig"], port, ca_bundle)
        by_name[conversion["metadata"]["name"]]["spec"]["conversion"] = conversion["spec"]["conversion"]
    return list(by_name.values())


def webhook_configurations(manifests: Path, port: int, ca_bundle: str) -> list[dict[str, Any]]:
    """Kueue's mutating and validating webhook configurations, with the release's patches (namespace
    selectors that leave kube-system and kueue-system alone), reached on loopback."""
    directory = manifests / "webhook"
    objects = [o for o in yaml.safe_load_all((directory / "manifests.yaml").read_text()) if o]
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    for patch in kustomization.get("patches") or []:
        change = yaml.safe_load(patch["patch"])
        [target] = [o for o in objects if o["kind"] == change["kind"]]
        for override in change["webhooks"]:
            [hook] = [h for h in target["webhooks"] if h["name"] == override["name"]]
            hook.update({k: v for k, v in override.items() if k != "name"})
    for obj in objects:
        obj["metadata"]["name"] = NAME_PREFIX + obj["metadata"]["name"]
        for hook in obj["webhooks"]:
            hook["clientConfig"] = _loopback(hook["clientConfig"], port, ca_bundle)
    return objects


def start_kueue(procs: Processes, binaries: Path, pki: PKI, data_dir: Path, kubeconfig: Path, kubectl) -> int:
    """Install Kueue's CRDs and webhooks and start its controller; returns its health port (``/readyz``).

    ``kubectl(*args, input=...)`` runs the cluster's kubectl as admin.
    """
    manifests = binaries / "kueue" / "config"
    certs = {"webhook": data_dir / "kueue-certs" / "webhook", "metrics": data_dir / "kueue-certs" / "metrics"}
    for name, directory in certs.items():
        pair = pki.serving(f"kueue-{name}", ["127.0.0.1"])
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "tls.crt").write_bytes(pair.cert.read_bytes())
        (directory / "tls.key").write_bytes(pair.key.read_bytes())
    ca_bundle = base64.b64encode(pki.ca.cert.read_bytes()).decode()
    webhook_port, health_port = free_port(), free_port()
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    definitions = crds(manifests, webhook_port, ca_bundle)
    items = [namespace, *definitions, *webhook_configurations(manifests, webhook_port, ca_bundle)]
    kubectl("apply", "--server-side", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    # Kueue exits at once if a kind it indexes is not served yet.
    established = [f"crd/{crd['metadata']['name']}" for crd in definitions]
    kubectl("wait", "--for=condition=Established", "--timeout=60s", *established)
    config_file = data_dir / "kueue-config.yaml"
    config_file.write_text(json.dumps(config(webhook_port, certs["webhook"], health_port), indent=2))
    kueue = [
        str(binaries / "kueue" / "kueue"),
        f"--config={config_file}",
        f"--kubeconfig={kubeconfig}",
        # The on-demand visibility API is an aggregated API server of its own, which nothing here uses.
        "--feature-gates=VisibilityOnDemand=false",
        "--zap-log-level=2",
    ]
    # Without its own certificate management Kueue reads its metrics certificate from this fixed path (its
    # release mounts a Secret there). The metrics server stays off, yet the file must exist: a private mount
    # namespace puts this cluster's certificate there, so the host's /etc gains only the empty mount point.
    METRICS_CERT_DIR.mkdir(parents=True, exist_ok=True)
    script = f'mount --bind "$1" {METRICS_CERT_DIR} && shift && exec "$@"'
    procs.spawn(
        "kueue",
        ["unshare", "--mount", "--propagation=private", "sh", "-c", script, "sh", str(certs["metrics"]), *kueue],
    )
    return health_port


def resource_flavors() -> list[dict[str, Any]]:
    """The flavors of this cluster's nodes: the KWOK GPU nodes, and the real CPU nodes (their taint tolerated)."""
    return [
        {
            "apiVersion": "kueue.x-k8s.io/v1beta1",
            "kind": "ResourceFlavor",
            "metadata": {"name": GPU_FLAVOR},
            "spec": {"nodeLabels": {"nvidia.com/gpu.present": "true"}},
        },
        {
            "apiVersion": "kueue.x-k8s.io/v1beta1",
            "kind": "ResourceFlavor",
            "metadata": {"name": CPU_FLAVOR},
            "spec": {"nodeLabels": {"type": "real"}, "tolerations": [REAL_NODE_TAINT]},
        },
    ]


def flavor_quota(flavor: str, cpu: str, memory: str, gpus: int) -> dict[str, Any]:
    """One flavor's quota in a ClusterQueue: CPU, memory and GPUs."""
    return {
        "name": flavor,
        "resources": [
            {"name": "cpu", "nominalQuota": cpu},
            {"name": "memory", "nominalQuota": memory},
            {"name": "nvidia.com/gpu", "nominalQuota": gpus},
        ],
    }


def gpu_node_quotas(gpus: int) -> list[dict[str, Any]]:
    """``gpus`` GPUs of the KWOK GPU nodes, after CPU quota on the real nodes without GPUs: pods without GPUs go
    to the real nodes, pods with GPUs to the GPU nodes."""
    return [flavor_quota(CPU_FLAVOR, "8", "16Gi", 0), flavor_quota(GPU_FLAVOR, "1536", "16Ti", gpus)]


def real_node_quotas(gpus: int) -> list[dict[str, Any]]:
    """The real nodes alone, with ``gpus`` of their stand-in GPUs: for runs whose every stage runs there (a
    queue that also had the GPU nodes' flavor would place a pod there rather than preempt for a real node)."""
    return [flavor_quota(CPU_FLAVOR, "8", "16Gi", gpus)]


def cluster_queue(name: str, quotas: list[dict[str, Any]]) -> dict[str, Any]:
    """A ClusterQueue with ``quotas`` (``flavor_quota``s, tried in order). Within the queue a higher-priority
    workload preempts lower-priority ones."""
    return {
        "apiVersion": "kueue.x-k8s.io/v1beta1",
        "kind": "ClusterQueue",
        "metadata": {"name": name},
        "spec": {
            "namespaceSelector": {},
            "preemption": {"withinClusterQueue": "LowerPriority"},
            "resourceGroups": [{"coveredResources": ["cpu", "memory", "nvidia.com/gpu"], "flavors": quotas}],
        },
    }


def local_queue(name: str, namespace: str, cluster_queue_name: str) -> dict[str, Any]:
    """A LocalQueue in ``namespace`` feeding ``cluster_queue_name`` (what runs name in kueue.x-k8s.io/queue-name)."""
    return {
        "apiVersion": "kueue.x-k8s.io/v1beta1",
        "kind": "LocalQueue",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"clusterQueue": cluster_queue_name},
    }


def team_priorities() -> list[dict[str, Any]]:
    """The WorkloadPriorityClasses the tests' runs name: ``team-low`` (10) and ``team-high`` (1000)."""
    return [priority_class("team-low", 10), priority_class("team-high", 1000)]


def priority_class(name: str, value: int) -> dict[str, Any]:
    """A WorkloadPriorityClass, which a run names in ``spec.workloadPriorityClass``."""
    return {
        "apiVersion": "kueue.x-k8s.io/v1beta1",
        "kind": "WorkloadPriorityClass",
        "metadata": {"name": name},
        "value": value,
        "description": f"priority {value}",
    }
