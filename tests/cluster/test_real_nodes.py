"""Real nodes run real pods: containers, logs, exec, a pod network across nodes, Services, DNS, volumes, and images
from one store."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import pytest

from localcluster import LocalCluster, wait_for

pytestmark = pytest.mark.cluster

REAL = {"type": "real"}
TOLERATE_REAL = [{"key": "longalign.dev/real-node", "operator": "Exists", "effect": "NoSchedule"}]


def real_nodes(cluster: LocalCluster) -> list[str]:
    return sorted(n["metadata"]["name"] for n in cluster.get("nodes", "-l", "type=real")["items"])


def busybox_pod(
    cluster: LocalCluster, name: str, node: str, script: str, *, labels=None, restart="Never", volumes=()
) -> dict:
    """A pod of the busybox test image on real node ``node`` running ``sh -c script``."""
    container = {
        "name": "main",
        "image": cluster.node_image("busybox"),
        "imagePullPolicy": "Never",
        "command": ["sh", "-c", script],
        "volumeMounts": [{"name": claim, "mountPath": f"/{claim}"} for claim in volumes],
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "nodeSelector": {**REAL, "kubernetes.io/hostname": node},
            "tolerations": TOLERATE_REAL,
            "restartPolicy": restart,
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
            "volumes": [{"name": c, "persistentVolumeClaim": {"claimName": c}} for c in volumes],
        },
    }


def phase(cluster: LocalCluster, namespace: str, name: str) -> str:
    return cluster.get("pod", name, "-n", namespace).get("status", {}).get("phase", "")


def wait_phase(cluster: LocalCluster, namespace: str, name: str, wanted: str, timeout: float = 90) -> dict:
    def reached():
        p = phase(cluster, namespace, name)
        if p in ("Failed", "Succeeded") and p != wanted:
            logs = cluster.kubectl("logs", name, "-n", namespace, check=False)
            raise AssertionError(f"pod {name} ended {p}: {logs.stdout}{logs.stderr}")
        return p == wanted

    wait_for(reached, timeout, f"pod {name} to be {wanted}", interval=0.5)
    return cluster.get("pod", name, "-n", namespace)


def test_each_real_node_runs_a_pod_with_logs_and_exec(cluster: LocalCluster, namespace: str):
    nodes = real_nodes(cluster)
    assert len(nodes) >= 2
    for node in nodes:
        cluster.create(namespace, busybox_pod(cluster, node, node, f"echo started on {node}; exec sleep 3600"))
    ips = set()
    for node in nodes:
        pod = wait_phase(cluster, namespace, node, "Running")
        assert pod["spec"]["nodeName"] == node
        ips.add(pod["status"]["podIP"])
        # logs and exec: the apiserver reaches the node's kubelet on its InternalIP, with its client certificate
        assert cluster.kubectl("logs", node, "-n", namespace).stdout == f"started on {node}\n"
        out = cluster.kubectl("exec", node, "-n", namespace, "--", "sh", "-c", "echo $((6 * 7)) $(hostname)")
        assert out.stdout.split() == ["42", node]
    assert len(ips) == len(nodes)


def test_a_pod_reaches_a_pod_on_the_other_node_by_service_names(cluster: LocalCluster, namespace: str):
    server_node, client_node = real_nodes(cluster)[:2]
    token = uuid.uuid4().hex
    web = {"app": "web"}
    cluster.create(
        namespace,
        busybox_pod(
            cluster,
            "web",
            server_node,
            f"mkdir /www && echo {token} > /www/index.html && exec httpd -f -p 8080 -h /www",
            labels=web,
            restart="Always",
        ),
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web-headless"},
            "spec": {"clusterIP": "None", "selector": web, "ports": [{"port": 8080}]},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": web, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    )
    server = wait_phase(cluster, namespace, "web", "Running")
    # The headless name resolves (CoreDNS) to the pod's own address; the ClusterIP one goes through kube-proxy.
    script = (
        "set -e; nslookup web-headless; wget -qO- http://web-headless:8080/; "
        f"wget -qO- http://web.{namespace}.svc.cluster.local/"
    )
    cluster.create(namespace, busybox_pod(cluster, "client", client_node, f"until {script}; do sleep 1; done"))
    wait_phase(cluster, namespace, "client", "Succeeded")
    logs = cluster.kubectl("logs", "client", "-n", namespace).stdout
    assert server["status"]["podIP"] in logs
    assert logs.count(token) == 2


def test_what_a_pod_writes_to_its_claim_survives_the_pod(cluster: LocalCluster, namespace: str):
    first, second = real_nodes(cluster)[:2]
    cluster.create_bound_claims(namespace, ("checkpoints",))
    token = uuid.uuid4().hex
    cluster.create(
        namespace,
        busybox_pod(cluster, "writer", first, f"echo {token} > /checkpoints/step-1", volumes=("checkpoints",)),
    )
    wait_phase(cluster, namespace, "writer", "Succeeded")
    cluster.kubectl("delete", "pod", "writer", "-n", namespace)
    # A new pod, on the other node: the volume is one host folder both nodes mount (ReadWriteMany).
    cluster.create(
        namespace, busybox_pod(cluster, "reader", second, "cat /checkpoints/step-1", volumes=("checkpoints",))
    )
    wait_phase(cluster, namespace, "reader", "Succeeded")
    assert cluster.kubectl("logs", "reader", "-n", namespace).stdout == f"{token}\n"


def test_a_kubelet_has_only_the_rights_of_its_own_node(cluster: LocalCluster):
    node, other = cluster.real_nodes[:2]
    as_node = ("--kubeconfig", str(node.dir / "kubelet" / "kubeconfig"))
    who = json.loads(cluster.kubectl("auth", "whoami", "-o", "json", *as_node).stdout)["status"]["userInfo"]
    assert who["username"] == f"system:node:{node.name}" and "system:nodes" in who["groups"]
    # NodeRestriction: a kubelet may change its own Node, never another's; the Node authorizer: no Secrets at large.
    cluster.kubectl("label", "node", node.name, "example.com/touched=yes", *as_node)
    refused = cluster.kubectl("label", "node", other.name, "example.com/touched=yes", *as_node, check=False)
    assert refused.returncode != 0 and "Forbidden" in refused.stderr
    refused = cluster.kubectl("get", "secrets", "-A", *as_node, check=False)
    assert refused.returncode != 0 and "Forbidden" in refused.stderr
    cluster.kubectl("label", "node", node.name, "example.com/touched-")


def test_the_nodes_share_their_images_layers_but_not_what_each_node_changes(cluster: LocalCluster):
    """Both nodes start on hard links of one image store (nodestore.py): an image tagged on one node is not on the
    other, nor in the store's database, while the image layers on disk are the store's own files."""
    first, second = cluster.real_nodes
    assert cluster.node_store
    store = cluster.node_store.root
    database = Path("io.containerd.metadata.v1.bolt/meta.db")
    before = hashlib.sha256((store / database).read_bytes()).hexdigest()
    tag = f"localhost/only-on-{first.name}:{uuid.uuid4().hex[:6]}"
    first.ctr("images", "tag", cluster.node_image("busybox"), tag)
    try:
        assert tag in first.ctr("images", "ls", "-q").stdout.split()
        assert tag not in second.ctr("images", "ls", "-q").stdout.split()
    finally:
        first.ctr("images", "rm", tag)
    assert hashlib.sha256((store / database).read_bytes()).hexdigest() == before
    blobs = Path("io.containerd.content.v1.content/blobs/sha256")
    shared = [b.name for b in (store / blobs).iterdir()]
    for node in (first, second):
        root = node.dir / "containerd" / "root"
        assert shared and all((root / blobs / n).stat().st_ino == (store / blobs / n).stat().st_ino for n in shared)
