"""What a user sees when an attempt's pods are taken away: the cause, word for word, as soon as Kubernetes shows it
(KWOK plays the pods; a node of a test's own is deleted to lose one)."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from runs import apply_run, run_status, wait_phase
from test_lifecycle import BASE, OUTCOME, training

from localcluster import LocalCluster, wait_for

pytestmark = pytest.mark.cluster


def lead_pod(cluster: LocalCluster, ns: str, job: str) -> dict:
    """The Job's first pod once it runs."""

    def found():
        pods = cluster.get("pods", "-n", ns, "-l", f"job-name={job}")["items"]
        return next((p for p in pods if p["status"].get("phase") == "Running"), None)

    return wait_for(found, 60, f"a running pod of {job}")


def test_a_deleted_training_pod_fails_the_attempt_naming_the_pod(cluster, operator, volumes):
    ns = volumes
    apply_run(cluster, ns, "deleted", {**BASE, "training": {**training(labels={OUTCOME: "hang"}), "backoffLimit": 0}})
    pod = lead_pod(cluster, ns, "deleted-train-1")["metadata"]["name"]
    cluster.kubectl("delete", "pod", pod, "-n", ns, "--wait=false")
    stage = wait_phase(cluster, ns, "deleted", "Failed")["stages"]["training"]
    assert (stage["reason"], stage["message"]) == ("PodDeleted", f"pod {pod} was deleted before it finished")


def test_a_lost_node_fails_the_attempt_at_once_naming_the_node(cluster, operator, volumes):
    ns = volumes
    node = f"lost-node-{uuid.uuid4().hex[:5]}"
    shape = cluster.get("node", "gpu-node-0")
    labels = {**shape["metadata"]["labels"], "kubernetes.io/hostname": node, "sim.longalign.dev/node": node}
    cluster.kubectl(
        "create",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": node, "labels": labels, "annotations": {"kwok.x-k8s.io/node": "fake"}},
                "status": {"capacity": shape["status"]["capacity"], "allocatable": shape["status"]["allocatable"]},
            }
        ),
    )
    try:
        pinned = training(labels={OUTCOME: "hang"}, nodeSelector={"sim.longalign.dev/node": node})
        training_spec = {**pinned, "nodes": 1, "backoffLimit": 0}
        apply_run(cluster, ns, "stranded", {**BASE, "training": training_spec})
        pod = lead_pod(cluster, ns, "stranded-train-1")["metadata"]["name"]
        t0 = time.monotonic()
        cluster.kubectl("delete", "node", node)
        status = wait_phase(cluster, ns, "stranded", "Failed", timeout=60)
        seconds = time.monotonic() - t0
    finally:
        cluster.kubectl("delete", "node", node, "--ignore-not-found")
        # The pod outlives its node until the pod garbage collector removes it (and the namespace controller
        # waits out its grace period): as an administrator would, remove it at once.
        cluster.kubectl("delete", "pods", "--all", "-n", ns, "--force", "--grace-period=0", check=False)
    stage = status["stages"]["training"]
    assert (stage["reason"], stage["message"]) == ("NodeLost", f"node {node} was deleted while pod {pod} ran on it")
    print(f"\nnode deleted -> attempt failed (NodeLost) in {seconds:.1f} s")
    assert seconds < 20, "the pod garbage collector's path (40 s quarantine and more), not the node's own signal"


def test_a_teacher_that_cannot_start_fails_data_generation_with_its_reason(cluster, operator, volumes):
    ns = volumes
    spec = {
        **BASE,
        "training": training(dataset=False),
        "dataGeneration": {
            "teacher": {"modelPath": "/models/t", "gpusPerReplica": 16},  # no node has 16
            "startupDeadlineSeconds": 30,
            "backoffLimit": 0,
            "pod": {"annotations": {"sim.longalign.dev/run-duration": "600s"}},
        },
    }
    apply_run(cluster, ns, "no-room", spec)
    stage = wait_for(
        lambda: (
            (s := run_status(cluster, ns, "no-room").get("stages", {}).get("dataGeneration", {}))
            .get("message", "")
            .startswith("no-room-teacher-0: 0/")
            and s
        ),
        60,
        "data generation to report the teacher's pod",
    )
    assert (stage["state"], stage["reason"]) == ("Queued", "Unschedulable")
    stage = wait_phase(cluster, ns, "no-room", "Failed", timeout=90)["stages"]["dataGeneration"]
    assert stage["reason"] == "StartupDeadlineExceeded"
    assert "(Unschedulable: no-room-teacher-0: 0/" in stage["message"]
    assert "Insufficient nvidia.com/gpu" in stage["message"]
