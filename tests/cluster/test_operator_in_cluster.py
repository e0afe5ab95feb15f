"""The operator as users run it: `helm install` of the chart with the image built from Dockerfile.operator, its
pod on a real node, talking to the API through the `kubernetes` Service as the chart's ServiceAccount."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from localcluster import LocalCluster, wait_for
from localcluster.operator_process import install_manifests

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "longalign-operator"
TINY_RUN = REPO / "manifests" / "examples" / "tiny-run.yaml"
# Real nodes take only pods that tolerate their taint; the chart's values say so, as for any dedicated nodes.
ON_REAL_NODES = json.dumps(
    {
        "nodeSelector": {"type": "real"},
        "tolerations": [{"key": "longalign.dev/real-node", "operator": "Exists", "effect": "NoSchedule"}],
    }
)


def ready(cluster: LocalCluster, namespace: str, selector: str) -> dict | None:
    pods = cluster.get("pods", "-n", namespace, "-l", selector)["items"]
    return next(
        (
            p
            for p in pods
            if any(c["type"] == "Ready" and c["status"] == "True" for c in p.get("status", {}).get("conditions", []))
        ),
        None,
    )


def test_the_helm_installed_operator_runs_in_a_pod_and_picks_up_a_run(cluster: LocalCluster, namespace: str):
    repository, tag = cluster.load_image("operator").rsplit(":", 1)
    install_manifests(cluster)  # the CRD, applied with kubectl before (the chart then leaves it alone)
    release = "lar-incluster"
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
        f"operator={ON_REAL_NODES}",
    )
    selector = f"app.kubernetes.io/instance={release}"
    pod = wait_for(lambda: ready(cluster, namespace, selector), 120, "the operator pod to be Ready", interval=1)
    assert pod["spec"]["nodeName"].startswith("real-node-")
    assert pod["spec"]["serviceAccountName"] == f"{release}-longalign-operator"

    cluster.create_bound_claims(namespace)
    cluster.kubectl("apply", "-n", namespace, "-f", str(TINY_RUN))
    wait_for(
        lambda: cluster.get("lar", "tiny", "-n", namespace).get("status", {}).get("phase"),
        60,
        "the in-cluster operator to reconcile the run",
        interval=1,
    )
    assert cluster.get("jobs", "-n", namespace, "-l", "longalign.dev/run=tiny")["items"]

    # As the README documents: the pre-delete hook (a pod of the same image) releases the runs, then all goes.
    cluster.helm("uninstall", release, "-n", namespace, "--timeout", "120s")
    run = cluster.get("lar", "tiny", "-n", namespace)
    assert not run["metadata"].get("finalizers")
    wait_for(lambda: not cluster.get("pods", "-n", namespace, "-l", selector)["items"], 60, "the operator pod gone")
