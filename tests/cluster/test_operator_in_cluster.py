"""The operator as users run it: `helm install` of the chart with the image built from Dockerfile.operator, its
pod on a real node, talking to the API through the `kubernetes` Service as the chart's ServiceAccount."""

from __future__ import annotations

from pathlib import Path

import pytest

from localcluster import LocalCluster, tiny_run, wait_for

pytestmark = pytest.mark.cluster

TINY_RUN = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "tiny-run.yaml"


def test_the_helm_installed_operator_runs_in_a_pod_and_picks_up_a_run(cluster: LocalCluster, namespace: str):
    release = "lar-incluster"
    pod = tiny_run.install_operator_chart(cluster, namespace, release)
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
    selector = f"app.kubernetes.io/instance={release}"
    cluster.helm("uninstall", release, "-n", namespace, "--timeout", "120s")
    run = cluster.get("lar", "tiny", "-n", namespace)
    assert not run["metadata"].get("finalizers")
    wait_for(lambda: not cluster.get("pods", "-n", namespace, "-l", selector)["items"], 60, "the operator pod gone")
