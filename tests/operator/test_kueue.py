"""Runs share GPUs through real Kueue (built from its Go module, its webhooks served): admission, waiting with
Kueue's own reason, preemption by priority, and a group that does not fit. KWOK plays the pods; a preempted
training pod stops as the trainer does on SIGTERM (exit 143, its summary with the steps it checkpointed)."""

from __future__ import annotations

import json
import time

import pytest
from runs import apply_run, events, run_status, wait_phase
from test_least_privilege import can_i
from test_lifecycle import BASE, DURATION, OUTCOME, training

from localcluster import LocalCluster, kueue, wait_for
from localcluster.operator_process import install_operator

pytestmark = pytest.mark.cluster

QUEUE = {"kueue.x-k8s.io/queue-name": "gpus"}
SIGTERM_SUMMARY = "sim.longalign.dev/sigterm-message"
GPUS = 16  # the ClusterQueue's quota: both GPU nodes


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A cluster of its own with Kueue (2 KWOK GPU nodes, no real nodes) and two WorkloadPriorityClasses."""
    with LocalCluster(
        data_dir=tmp_path_factory.mktemp("kueue-cluster"), gpu_nodes=2, cpu_nodes=0, real_nodes=0, kueue=True
    ) as c:
        c.apply(*kueue.team_priorities())
        yield c


@pytest.fixture(scope="module")
def operator(cluster):
    op = install_operator(cluster)
    yield op
    op.stop()


@pytest.fixture
def queue(cluster, operator, volumes) -> str:
    """The test's namespace with a LocalQueue ``gpus`` on a ClusterQueue of its own (16 GPUs)."""
    cluster.create_queues(volumes, kueue.gpu_node_quotas(GPUS), {volumes: "gpus"})
    return volumes


def pods(cluster: LocalCluster, ns: str, run: str) -> list[dict]:
    return cluster.get("pods", "-n", ns, "-l", f"longalign.dev/run={run}")["items"]


def train_stage(cluster: LocalCluster, ns: str, run: str) -> dict:
    return run_status(cluster, ns, run).get("stages", {}).get("training", {})


def test_the_second_of_two_runs_waits_queued_with_kueues_reason_and_starts_when_the_first_ends(cluster, queue):
    ns = queue
    spec = {**BASE, "training": training(annotations={DURATION: "6s"})}  # 2 nodes x 8 GPUs: all of the quota
    apply_run(cluster, ns, "first", spec, labels=QUEUE)
    wait_for(lambda: train_stage(cluster, ns, "first").get("state") == "Running", 30, "the first run to run")
    apply_run(cluster, ns, "second", spec, labels=QUEUE)
    queued = wait_for(
        lambda: (
            (st := train_stage(cluster, ns, "second")).get("state") == "Queued" and st.get("reason") == "Pending" and st
        ),
        30,
        "the second run to wait with Kueue's reason",
    )
    assert "insufficient unused quota for nvidia.com/gpu" in queued["message"], queued
    assert not pods(cluster, ns, "second")  # no GPU held while it waits
    assert "StageQueued" in events(cluster, ns, "second")
    wait_phase(cluster, ns, "first", "Succeeded", timeout=60)
    second = wait_phase(cluster, ns, "second", "Succeeded", timeout=60)
    assert second["stages"]["training"]["attempts"] == 1 and second["stages"]["training"]["failures"] == 0
    [job] = cluster.get("jobs", "-n", ns, "-l", "longalign.dev/run=second")["items"]
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpus"  # Kueue, not the test, admitted it


def test_a_high_priority_run_preempts_a_low_one_which_keeps_its_steps_and_succeeds(cluster, queue):
    ns = queue
    checkpointed = {"stage": "train", "ok": False, "preempted": True, "steps": 17, "error": "stopped by SIGTERM"}
    low = {
        **BASE,
        "workloadPriorityClass": "team-low",
        "training": {
            **training(annotations={DURATION: "8s", SIGTERM_SUMMARY: json.dumps(checkpointed)}),
            "terminationGracePeriodSeconds": 120,
        },
    }
    apply_run(cluster, ns, "low", low, labels=QUEUE)
    wait_for(lambda: train_stage(cluster, ns, "low").get("state") == "Running", 30, "the low-priority run to run")
    [job] = cluster.get("jobs", "-n", ns, "-l", "longalign.dev/run=low")["items"]
    assert job["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "team-low"
    assert job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 120

    high = {
        **BASE,
        "workloadPriorityClass": "team-high",
        "training": {**training(annotations={DURATION: "3s"}), "nodes": 1},
    }
    apply_run(cluster, ns, "high", high, labels=QUEUE)
    preempted = wait_for(
        lambda: (st := train_stage(cluster, ns, "low")).get("state") == "Preempted" and st.get("attempts") == 2 and st,
        30,
        "the low-priority run to be preempted and queued again",
    )
    assert preempted["reason"] == "Preempted" and preempted["preemptions"] == 1 and preempted["failures"] == 0
    assert "17 steps kept" in preempted["message"], preempted
    assert run_status(cluster, ns, "low")["results"]["lastCheckpointStep"] == 17
    posted = cluster.get("events", "-n", ns, "--field-selector", "involvedObject.name=low")["items"]
    assert any(e["reason"] == "StageRequeued" and "17 steps kept" in e["message"] for e in posted), posted
    assert "StagePreempted" in [e["reason"] for e in posted]
    wait_phase(cluster, ns, "high", "Succeeded", timeout=60)
    status = wait_phase(cluster, ns, "low", "Succeeded", timeout=90)
    stage = status["stages"]["training"]
    assert (stage["attempts"], stage["failures"], stage["preemptions"]) == (2, 0, 1)
    configs = [json.loads(cluster.get("configmap", f"low-train-{n}", "-n", ns)["data"]["config.json"]) for n in (1, 2)]
    assert configs[0]["outputDir"] == configs[1]["outputDir"]  # attempt 2 resumes from attempt 1's checkpoints
    assert "StageRetrying" not in events(cluster, ns, "low") and "StageFailed" not in events(cluster, ns, "low")


def test_a_group_larger_than_the_quota_is_never_half_started(cluster, queue):
    ns = queue
    # 3 pods x 8 GPUs: two of them would fit the nodes, the group does not fit the queue.
    spec = {**BASE, "training": {**training(), "nodes": 3, "pod": {"labels": {OUTCOME: "hang"}}}}
    apply_run(cluster, ns, "big", spec, labels=QUEUE)
    queued = wait_for(
        lambda: (st := train_stage(cluster, ns, "big")).get("reason") == "Pending" and st,
        30,
        "the group to wait with Kueue's reason",
    )
    assert queued["state"] == "Queued"
    assert "insufficient quota for nvidia.com/gpu" in queued["message"] and "24" in queued["message"], queued
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # Kueue never admits it: no pod of the group ever exists
        assert not pods(cluster, ns, "big")
        time.sleep(0.5)
    [job] = cluster.get("jobs", "-n", ns, "-l", "longalign.dev/run=big")["items"]
    assert job["spec"]["suspend"] is True


def test_the_operator_may_read_kueues_workloads_and_nothing_more(cluster, operator):
    # Checked here, where Kueue's CRD exists (kubectl auth can-i resolves the resource first).
    rights = {verb: can_i(cluster, verb, "workloads.kueue.x-k8s.io", "team-a") for verb in ("list", "watch")}
    assert rights == {"list": True, "watch": True}
    for verb in ("get", "create", "update", "patch", "delete"):
        assert not can_i(cluster, verb, "workloads.kueue.x-k8s.io", "team-a"), verb
    assert not can_i(cluster, "create", "clusterqueues.kueue.x-k8s.io", "team-a")
