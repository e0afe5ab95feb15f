"""The local control plane behaves like a real cluster: these are the facts the operator's tests rely on."""

from __future__ import annotations

import json
import os
import re
import socket

import pytest

from localcluster import LocalCluster, wait_for

pytestmark = pytest.mark.cluster

OUTCOME = "sim.longalign.dev/outcome"


def job(name: str, *, labels=None, annotations=None, backoff_limit: int = 0, gpus: int = 0) -> dict:
    container = {"name": "main", "image": "busybox:1.36", "command": ["true"]}
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": backoff_limit,
            "template": {
                "metadata": {"labels": labels or {}, "annotations": annotations or {}},
                "spec": {"restartPolicy": "Never", "containers": [container]},
            },
        },
    }


def pod(name: str, *, gpus: int = 0, labels=None) -> dict:
    container = {"name": "main", "image": "vllm/vllm-openai:v0.11.0"}
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"containers": [container]},
    }


def job_condition(cluster: LocalCluster, ns: str, name: str) -> dict | None:
    conditions = cluster.get("job", name, "-n", ns).get("status", {}).get("conditions", [])
    return next((c for c in conditions if c["type"] in ("Complete", "Failed") and c["status"] == "True"), None)


def test_nodes_look_like_a_gpu_cluster(cluster: LocalCluster):
    nodes = cluster.get("nodes")["items"]
    gpu = [n for n in nodes if n["status"]["allocatable"].get("nvidia.com/gpu") == "8"]
    cpu = [n for n in nodes if "nvidia.com/gpu" not in n["status"]["allocatable"]]
    assert len(gpu) >= 4 and len(cpu) >= 2
    for n in gpu:
        labels = n["metadata"]["labels"]
        assert labels["nvidia.com/gpu.product"].startswith("NVIDIA-")
        assert labels["topology.kubernetes.io/zone"]
        ready = [c for c in n["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True"
    # The server reports the stamped release, which Helm checks charts' kubeVersion against.
    server = json.loads(cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]["gitVersion"]
    assert re.fullmatch(r"v1\.\d+\.\d+", server), server


def test_job_succeeds_on_a_kwok_node_with_its_termination_message(cluster: LocalCluster, namespace: str):
    summary = '{"stage": "train", "final_loss": 1.25}'
    cluster.create(namespace, job("ok", annotations={"sim.longalign.dev/termination-message": summary}))
    done = wait_for(lambda: job_condition(cluster, namespace, "ok"), 60, "job ok to finish")
    assert done["type"] == "Complete"
    [p] = cluster.get("pods", "-n", namespace, "-l", "job-name=ok")["items"]
    assert p["spec"]["nodeName"] in {n["metadata"]["name"] for n in cluster.get("nodes")["items"]}
    assert p["status"]["containerStatuses"][0]["state"]["terminated"]["message"] == summary


def test_failing_job_is_retried_up_to_its_backoff_limit(cluster: LocalCluster, namespace: str):
    cluster.create(
        namespace,
        job("bad", backoff_limit=1, labels={OUTCOME: "fail"}, annotations={"sim.longalign.dev/exit-code": "3"}),
    )
    done = wait_for(lambda: job_condition(cluster, namespace, "bad"), 90, "job bad to finish")
    assert (done["type"], done["reason"]) == ("Failed", "BackoffLimitExceeded")
    pods = cluster.get("pods", "-n", namespace, "-l", "job-name=bad")["items"]
    assert len(pods) == 2  # the first try and one retry
    assert {p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] for p in pods} == {3}


def test_image_pull_backoff_and_hanging_pods(cluster: LocalCluster, namespace: str):
    cluster.create(
        namespace, pod("stuck", labels={OUTCOME: "image-pull-backoff"}), job("forever", labels={OUTCOME: "hang"})
    )

    def waiting_reason():
        statuses = cluster.get("pod", "stuck", "-n", namespace)["status"].get("containerStatuses", [])
        return statuses and statuses[0]["state"].get("waiting", {}).get("reason")

    assert wait_for(waiting_reason, 60, "pod stuck to report its image pull") == "ImagePullBackOff"
    assert cluster.get("pod", "stuck", "-n", namespace)["status"]["phase"] == "Pending"
    wait_for(lambda: cluster.get("pods", "-n", namespace, "-l", "job-name=forever")["items"], 30, "the hang pod")
    wait_for(
        lambda: (
            cluster.get("pods", "-n", namespace, "-l", "job-name=forever")["items"][0]["status"].get("phase")
            == "Running"
        ),
        30,
        "the hang pod to run",
    )
    with pytest.raises(TimeoutError):
        wait_for(lambda: job_condition(cluster, namespace, "forever"), 5, "job forever to end")


def test_gpu_pods_land_only_on_gpu_nodes_and_the_one_too_many_stays_pending(cluster: LocalCluster, namespace: str):
    # the 8-GPU nodes (KWOK's); the real nodes' one stand-in GPU each is behind their taint
    gpu_nodes = {
        n["metadata"]["name"]
        for n in cluster.get("nodes")["items"]
        if n["status"]["allocatable"].get("nvidia.com/gpu") == "8"
    }
    names = [f"full-{i}" for i in range(len(gpu_nodes))]
    cluster.create(namespace, *(pod(n, gpus=8) for n in names))

    def placed():
        pods = cluster.get("pods", "-n", namespace)["items"]
        nodes = [p["spec"].get("nodeName") for p in pods]
        return all(nodes) and len(nodes) == len(names) and nodes

    assert sorted(wait_for(placed, 60, "every 8-GPU pod to be scheduled")) == sorted(gpu_nodes)

    cluster.create(namespace, pod("one-too-many", gpus=8))

    def unschedulable():
        cond = [
            c
            for c in cluster.get("pod", "one-too-many", "-n", namespace)["status"].get("conditions", [])
            if c["type"] == "PodScheduled"
        ]
        return cond and cond[0]["reason"] == "Unschedulable" and cond[0]["message"]

    message = wait_for(unschedulable, 60, "the scheduler to refuse the ninth pod")
    assert "Insufficient nvidia.com/gpu" in message
    assert not cluster.get("pod", "one-too-many", "-n", namespace)["spec"].get("nodeName")


def test_deleting_an_owner_garbage_collects_its_children(cluster: LocalCluster, namespace: str):
    cluster.create(namespace, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}})
    uid = cluster.get("configmap", "owner", "-n", namespace)["metadata"]["uid"]
    ref = [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}]
    child = pod("child")
    child["metadata"]["ownerReferences"] = ref
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "child", "ownerReferences": ref},
        "spec": {"clusterIP": "None", "selector": {"app": "x"}},
    }
    cluster.create(namespace, child, service)
    cluster.kubectl("delete", "configmap", "owner", "-n", namespace)
    wait_for(
        lambda: not cluster.get("pods,services", "-n", namespace)["items"],
        90,
        "the garbage collector to delete the owner's pod and service",
    )


def test_a_service_account_without_permission_is_refused(cluster: LocalCluster, namespace: str):
    cluster.kubectl("create", "serviceaccount", "nobody", "-n", namespace)
    token = cluster.kubectl("create", "token", "nobody", "-n", namespace).stdout.strip()
    as_nobody = ("--token", token, "-n", namespace)
    denied = cluster.kubectl("get", "pods", *as_nobody, check=False)
    assert denied.returncode != 0
    assert "Forbidden" in denied.stderr and f"system:serviceaccount:{namespace}:nobody" in denied.stderr
    # The same token works once RBAC grants the right: authentication was fine, authorization refused.
    cluster.kubectl(
        "create",
        "rolebinding",
        "nobody-view",
        "--clusterrole=view",
        f"--serviceaccount={namespace}:nobody",
        "-n",
        namespace,
    )
    wait_for(
        lambda: cluster.kubectl("get", "pods", *as_nobody, check=False).returncode == 0,
        30,
        "the RoleBinding to take effect",
    )


def test_a_cluster_stops_without_leaving_processes_or_ports(tmp_path):
    c = LocalCluster(data_dir=tmp_path, gpu_nodes=1, cpu_nodes=0, real_nodes=0).start()
    pids, port = c.pids, c.api_port
    assert len(pids) == 5  # etcd, apiserver, controller manager, scheduler, kwok
    c.stop()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # the apiserver's port is free again


def test_a_cluster_with_a_real_node_stops_without_leaving_containers_mounts_or_namespaces(tmp_path):
    c = LocalCluster(data_dir=tmp_path, gpu_nodes=0, cpu_nodes=0, real_nodes=1).start()
    try:
        [node] = c.real_nodes
        c.kubectl(
            "run",
            "sleeper",
            "--image",
            c.node_image("busybox"),
            "--image-pull-policy=Never",
            "--overrides",
            json.dumps({"spec": {"tolerations": [{"operator": "Exists"}]}}),
            "--",
            "sleep",
            "3617",
        )
        wait_for(lambda: c.get("pod", "sleeper").get("status", {}).get("phase") == "Running", 60, "the pod to run")
        namespaces = [ns.path for ns in c.network.namespaces]
        pids = c.pids
    finally:
        c.stop()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    left = [
        p
        for p in os.listdir("/proc")
        if p.isdigit() and (str(node.socket).encode() in _cmdline(p) or _cmdline(p) == b"sleep\x003617\x00")
    ]
    assert not left, "processes of the node (its shim, the pod's container) are left"
    with open("/proc/self/mountinfo") as f:
        mounts = f.read()
    assert str(tmp_path) not in mounts and str(node.dir) not in mounts
    assert not node.dir.exists()
    assert not [p for p in namespaces if p.exists()]


def _cmdline(pid: str) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""
