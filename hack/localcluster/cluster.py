"""A real Kubernetes cluster on this machine, for tests and demos: the genuine control plane, simulated GPU
nodes, and real CPU nodes that run pods.

The parts, each in a module of its own: ``pki`` (certificates), ``etcd``, ``apiserver``, ``controller_manager``,
``scheduler``, ``kwok`` (the simulated nodes), ``network`` (a bridge and a network namespace per real node),
``realnode`` (containerd + kubelet), ``kube_proxy``, ``coredns``, ``kueue`` (optional). ``build.sh`` builds
the binaries from Go modules; ``images.py`` builds the images the real nodes run, ``nodestore.py`` imports them
once into the store every real node's containerd starts from.

Every process is started in its own process group with a parent-death signal, and ``stop()`` ends them in
reverse order with a timeout, so nothing outlives the cluster even when a test run is killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import subprocess
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from localcluster import coredns, kueue, nodestore, realnode
from localcluster.apiserver import start_apiserver
from localcluster.controller_manager import start_controller_manager
from localcluster.etcd import start_etcd
from localcluster.kube_proxy import start_kube_proxy
from localcluster.kwok import CPU_NODE, GPU_NODE, fake_node, start_kwok
from localcluster.network import BridgeNetwork
from localcluster.pki import PKI
from localcluster.process import ClusterError, Processes, free_port, wait_for
from localcluster.realnode import RealNode
from localcluster.scheduler import start_scheduler

__all__ = ["ClusterError", "LocalCluster", "bin_dir", "free_port", "wait_for"]
HERE = Path(__file__).resolve().parent
REAL_NODE_PREFIX = "real-node"
# Components that schedule or make pods: stopped before the real nodes are drained, so nothing comes back.
POD_MAKERS = {"kwok", "kube-scheduler", "kube-controller-manager"}


def bin_dir() -> Path:
    """Build (once, cached outside the repo) and return the directory holding the cluster's binaries."""
    out = subprocess.run(["bash", str(HERE / "build.sh")], check=True, stdout=subprocess.PIPE, text=True).stdout
    return Path(out.strip().splitlines()[-1])


class LocalCluster:
    """The control plane + KWOK nodes + real nodes, started and stopped as one.

    Use as a context manager, or call ``start()`` and ``stop()``. ``kubeconfig`` is an admin kubeconfig
    (group ``system:masters``); ``env()`` gives an environment with ``KUBECONFIG`` and the binaries on PATH.
    ``real_nodes`` real CPU nodes (``real-node-<i>``, label ``type: real``) run pods for real; they are
    tainted ``longalign.dev/real-node=true:NoSchedule``, so only pods that tolerate it land there. Each
    advertises ``real_node_gpus`` ``nvidia.com/gpu`` (a stand-in in the node's status, as for any extended
    resource: a pod that asks for one is placed there and gets no device, so the stages run on the CPU).
    ``kueue=True`` also runs Kueue (``kueue.py``) with its ResourceFlavors for both kinds of node; queues are
    made with ``create_queues``.
    """

    def __init__(
        self,
        binaries: Path | None = None,
        data_dir: Path | None = None,
        gpu_nodes: int = 8,
        cpu_nodes: int = 2,
        zones: tuple[str, ...] = ("zone-a", "zone-b"),
        real_nodes: int = 2,
        real_node_gpus: int = 1,
        kueue: bool = False,
    ) -> None:
        self.bin = binaries or bin_dir()
        self.dir = Path(data_dir or tempfile.mkdtemp(prefix="longalign-cluster-"))
        self.nodes = [(GPU_NODE, i) for i in range(gpu_nodes)] + [(CPU_NODE, i) for i in range(cpu_nodes)]
        self.zones = zones
        self.real_node_count = real_nodes
        self.real_node_gpus = real_node_gpus
        self.kueue = kueue
        self.real_nodes: list[RealNode] = []
        self.kubeconfig = self.dir / "admin.kubeconfig"
        self.api_port = 0
        self.network: BridgeNetwork | None = None
        self._procs = Processes(self.dir)
        self.node_store: nodestore.Store | None = None
        """The image store the real nodes started from (``nodestore.py``); None without real nodes."""
        self._kubelet_args: tuple[PKI, str, str] | None = None  # (pki, apiserver URL, DNS address), for restarts

    # ----------------------------------------------------------------------------------------- lifecycle
    def start(self, timeout: float = 90.0) -> LocalCluster:
        """Start every component and return once all nodes are Ready and schedulable."""
        if self.real_node_count:
            realnode.check_host()
            self.node_store = nodestore.ensure_store()  # may build images first: not part of the start's timeout
        deadline = time.monotonic() + timeout
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            pki = PKI(self.dir / "pki")
            if self.node_store:
                self.network = BridgeNetwork()
            etcd_port = start_etcd(self._procs, self.bin, self.dir / "etcd")
            self._wait(lambda: self._http_ok(f"http://127.0.0.1:{etcd_port}/health"), deadline, "etcd")
            api = start_apiserver(
                self._procs,
                self.bin,
                pki,
                etcd_port,
                self.kubeconfig,
                self.network.host_address if self.network else None,
            )
            self.api_port = api.port
            self._wait(lambda: self._http_ok(f"{api.url}/readyz", pki), deadline, "kube-apiserver")
            start_controller_manager(self._procs, self.bin, pki, self.kubeconfig)
            start_scheduler(self._procs, self.bin, self.kubeconfig)
            self.kubectl("apply", "--server-side", "-f", str(self.bin / "kwok-logs-crd.yaml"))
            wait_for(
                lambda: self.kubectl("get", "logs.kwok.x-k8s.io", "-A", check=False).returncode == 0,
                30,
                "the KWOK Logs CRD",
            )
            start_kwok(self._procs, self.bin, self.dir, self.kubeconfig, pki.serving("kwok", ["127.0.0.1"]))
            if self.nodes:
                self.kubectl(
                    "create",
                    "-f",
                    "-",
                    input=json.dumps(
                        {
                            "apiVersion": "v1",
                            "kind": "List",
                            "items": [fake_node(shape, i, self.zones) for shape, i in self.nodes],
                        }
                    ),
                )
            if self.node_store:
                self._start_real_nodes(self.node_store, pki, api.url, deadline)
            self._wait(self._nodes_schedulable, deadline, "the nodes (Ready, not-ready taint removed)")
            for node in self.real_nodes:
                self.advertise_gpus(node.name)
            self._wait(self._default_service_account, deadline, "kube-controller-manager (default ServiceAccount)")
            if self.kueue:
                self._start_kueue(pki, deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_real_nodes(self, store: nodestore.Store, pki: PKI, server: str, deadline: float) -> None:
        net = self.network
        if net is None:
            raise RuntimeError("real nodes need the cluster's bridge network")
        dns = net.add("dns", 2)
        state = realnode.state_root(net.slot)
        realnode.remove_state(state)  # of a cluster that held this slot and was killed before it cleaned up
        names = [f"{REAL_NODE_PREFIX}-{i}" for i in range(self.real_node_count)]
        self.real_nodes = [
            RealNode(name, net.add(f"n{i}", 10 + i, pod_range=i), state / name) for i, name in enumerate(names)
        ]
        net.route_pod_ranges()
        self.kubectl("apply", "-f", "-", input=coredns.rbac_manifest())
        coredns.start_coredns(self._procs, self.bin, pki, dns, server, self.dir / "coredns")
        wrapper = realnode.write_runc_wrapper(self.dir / "runc-wrapper")
        for node in self.real_nodes:
            nodestore.copy_into(store.root, node.dir / "containerd" / "root")
            realnode.start_containerd(self._procs, node, store.references["pause"], wrapper)
        for node in self.real_nodes:
            realnode.wait_for_containerd(self._procs, node, deadline - time.monotonic())
        self._kubelet_args = (pki, server, dns.address)
        for node in self.real_nodes:
            realnode.start_kubelet(self._procs, self.bin, pki, node, server, dns.address)
            start_kube_proxy(self._procs, self.bin, pki, node, server, net.cluster_cidr)

    def stop_kubelet(self, name: str) -> None:
        """Stop real node ``name``'s kubelet (SIGTERM), as a node that stops reporting: its containers keep
        running, the node controller marks it NotReady/Unknown after its grace period."""
        self._procs.stop({f"kubelet-{name}"})

    def start_kubelet(self, name: str) -> None:
        """Start real node ``name``'s kubelet again and advertise its GPUs once the node is Ready."""
        node = next(n for n in self.real_nodes if n.name == name)
        if self._kubelet_args is None:
            raise RuntimeError("the real nodes were never started")
        pki, server, dns = self._kubelet_args
        realnode.start_kubelet(self._procs, self.bin, pki, node, server, dns)
        wait_for(lambda: self._node_ready(name), 60, f"node {name} to be Ready again")
        self.advertise_gpus(name)

    def advertise_gpus(self, name: str) -> None:
        """Put ``real_node_gpus`` ``nvidia.com/gpu`` into node ``name``'s capacity and allocatable (a kubelet
        keeps extended resources that others set; one that re-registers may reset them, hence after restarts)."""
        if not self.real_node_gpus:
            return
        patch = [
            {"op": "add", "path": f"/status/{field}/nvidia.com~1gpu", "value": str(self.real_node_gpus)}
            for field in ("capacity", "allocatable")
        ]
        self.kubectl("patch", "node", name, "--subresource=status", "--type=json", "-p", json.dumps(patch))

    def _start_kueue(self, pki: PKI, deadline: float) -> None:
        health = kueue.start_kueue(self._procs, self.bin, pki, self.dir, self.kubeconfig, self.kubectl)
        self._wait(lambda: self._http_ok(f"http://127.0.0.1:{health}/readyz"), deadline, "kueue")
        flavors = json.dumps({"apiVersion": "v1", "kind": "List", "items": kueue.resource_flavors()})
        # Served once its webhooks answer (the ResourceFlavor webhook defaults every flavor).
        self._wait(
            lambda: self.kubectl("apply", "-f", "-", input=flavors, check=False).returncode == 0,
            deadline,
            "kueue's webhooks (ResourceFlavors created)",
        )

    def create_queues(self, cluster_queue: str, quotas: list[dict], local_queues: dict[str, str]) -> None:
        """A Kueue ClusterQueue with ``quotas`` (``kueue.gpu_node_quotas``, ``kueue.real_node_quotas``) and a
        LocalQueue for it per entry of ``local_queues`` (namespace -> LocalQueue name)."""
        self.apply(
            kueue.cluster_queue(cluster_queue, quotas),
            *(kueue.local_queue(name, ns, cluster_queue) for ns, name in local_queues.items()),
        )

    def apply(self, *objects: dict) -> None:
        """``kubectl apply`` objects (as dicts), each in the namespace its metadata names, if any."""
        self.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}))

    def stop(self, timeout: float = 15.0) -> None:
        """Stop everything in reverse start order (SIGKILL what outlives ``timeout``); remove what the real
        nodes left: their containers, mounts and network namespaces."""
        self._procs.stop(POD_MAKERS, timeout)
        if self.real_nodes:
            self._drain_real_nodes()
        self._procs.stop(timeout=timeout)
        for node in self.real_nodes:
            realnode.kill_shims(node)
        if self.network:
            realnode.remove_state(realnode.state_root(self.network.slot))
        self.real_nodes = []
        self.node_store = None
        if self.network:
            self.network.close()
            self.network = None

    def _drain_real_nodes(self) -> None:
        """Delete the real nodes' pods and give their kubelets a moment to stop them (sandboxes, volumes) as
        they would; then kill whatever containers are left."""
        if self._api_alive():
            for node in self.real_nodes:
                self.kubectl(
                    "delete",
                    "pods",
                    "-A",
                    f"--field-selector=spec.nodeName={node.name}",
                    "--grace-period=0",
                    "--force",
                    "--wait=false",
                    check=False,
                )

        def containers_left() -> bool:
            return any(n.ctr("tasks", "ls", "-q", check=False).stdout.strip() for n in self.real_nodes)

        with contextlib.suppress(TimeoutError):
            wait_for(lambda: not containers_left(), 20, "the real nodes' containers to stop")
        for node in self.real_nodes:
            realnode.remove_containers(node)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pids(self) -> list[int]:
        """Process ids of the running components."""
        return self._procs.pids

    # ------------------------------------------------------------------------------------------- helpers
    def env(self) -> dict[str, str]:
        """The process environment with this cluster's kubeconfig and binaries first on PATH."""
        helm_home = self.dir / "helm"
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
            "HELM_CONFIG_HOME": str(helm_home / "config"),
            "HELM_CACHE_HOME": str(helm_home / "cache"),
            "HELM_DATA_HOME": str(helm_home / "data"),
        }

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
        """Run this cluster's own kubectl (same version as the apiserver) and capture its output."""
        return self._tool("kubectl", args, check, input)

    def helm(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
        """Run helm against this cluster, with helm's own state kept inside the cluster's data dir."""
        return self._tool("helm", args, check, input)

    def kubeconfig_for(self, service_account: str, namespace: str) -> Path:
        """A kubeconfig that authenticates as a ServiceAccount (a real token), to test with only its RBAC."""
        token = self.kubectl("create", "token", service_account, "-n", namespace, "--duration=24h").stdout.strip()
        path = self.dir / f"{namespace}-{service_account}.kubeconfig"
        config = json.loads(self.kubeconfig.read_text())
        config["users"] = [{"name": "admin", "user": {"token": token}}]
        path.write_text(json.dumps(config, indent=2))
        return path

    def node_image(self, name: str) -> str:
        """Image ``name``'s reference on the real nodes, for a pod spec (with ``imagePullPolicy: IfNotPresent`` or
        ``Never``). Every image of ``images.IMAGES`` is there from the start (the nodes' store, nodestore.py),
        also as ``images.local_reference(name)`` (``localhost/longalign-<name>:local``), the name the shipped
        examples use."""
        references = self.node_store.references if self.node_store else {}
        if name not in references:
            raise ValueError(f"no image {name!r} on the real nodes: they hold {', '.join(references) or 'none'}")
        return references[name]

    def set_log(self, namespace: str, pod: str, lines: list[str], container: str | None = None) -> None:
        """Make ``kubectl logs`` of a simulated pod print ``lines``, stamped now (call again to replace them).

        KWOK serves the log from a file in the CRI log format that a Logs object names.
        """
        path = self.dir / "pod-logs" / namespace / f"{pod}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")
        path.write_text("".join(f"{stamp} stdout F {line}\n" for line in lines))
        log = {"logsFile": str(path), **({"containers": [container]} if container else {})}
        self.kubectl(
            "apply",
            "-n",
            namespace,
            "-f",
            "-",
            input=json.dumps(
                {
                    "apiVersion": "kwok.x-k8s.io/v1alpha1",
                    "kind": "Logs",
                    "metadata": {"name": pod},
                    "spec": {"logs": [log]},
                }
            ),
        )

    def create_bound_claims(self, namespace: str, names: tuple[str, ...] = ("models", "data", "checkpoints")) -> None:
        """PersistentVolumeClaims bound to static hostPath volumes, as a storage provisioner would leave them
        (the scheduler does not place pods whose claims are unbound).

        Each volume is a folder under the cluster's data dir, made on first use; every real node sees the same
        folder (only network namespaces differ between nodes), so the volumes are truly ReadWriteMany.
        """
        for name in names:
            pv = f"{namespace}-{name}"[:63]
            folder = self.volume_dir(namespace, name)
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o777)  # a fresh volume any pod's user may write, as a provisioner leaves it
            self.kubectl(
                "create",
                "-f",
                "-",
                input=json.dumps(
                    {
                        "apiVersion": "v1",
                        "kind": "PersistentVolume",
                        "metadata": {"name": pv},
                        "spec": {
                            "capacity": {"storage": "1Gi"},
                            "accessModes": ["ReadWriteMany"],
                            "storageClassName": "",
                            "persistentVolumeReclaimPolicy": "Retain",
                            "hostPath": {"path": str(folder), "type": "DirectoryOrCreate"},
                            "claimRef": {"namespace": namespace, "name": name},
                        },
                    }
                ),
            )
            self.create(
                namespace,
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "metadata": {"name": name},
                    "spec": {
                        "accessModes": ["ReadWriteMany"],
                        "storageClassName": "",
                        "volumeName": pv,
                        "resources": {"requests": {"storage": "1Gi"}},
                    },
                },
            )

    def volume_dir(self, namespace: str, claim: str) -> Path:
        """The folder behind claim ``claim`` of ``create_bound_claims`` (what its pods see at the mount)."""
        return self.dir / "volumes" / f"{namespace}-{claim}"[:63]

    def create(self, namespace: str, *objects: dict) -> None:
        """Create objects (as dicts) in a namespace."""
        self.kubectl(
            "create",
            "-n",
            namespace,
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}),
        )

    def get(self, *args: str) -> dict:
        """``kubectl get ARGS -o json``, parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def _tool(self, name: str, args: tuple[str, ...], check: bool, input: str | None):
        proc = subprocess.run(
            [str(self.bin / name), *args], env=self.env(), input=input, capture_output=True, text=True, timeout=300
        )
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, [name, *args], proc.stdout, proc.stderr)
        return proc

    # ------------------------------------------------------------------------------------------- waits
    def _wait(self, ready, deadline: float, component: str) -> None:
        def up() -> bool:
            self._procs.check()
            return ready()

        try:
            wait_for(up, deadline - time.monotonic(), component)
        except TimeoutError as e:
            raise ClusterError(f"{e}; logs are in {self.dir}") from None

    def _http_ok(self, url: str, pki: PKI | None = None) -> bool:
        ctx = ssl.create_default_context(cafile=str(pki.ca.cert)) if pki else None
        try:
            with urllib.request.urlopen(url, timeout=2, context=ctx) as r:
                return r.status == 200
        except OSError:
            return False

    def _api_alive(self) -> bool:
        return bool(self.api_port) and self.kubectl("get", "--raw", "/readyz", check=False).returncode == 0

    def _nodes_schedulable(self) -> bool:
        out = self.kubectl("get", "nodes", "-o", "json", check=False)
        if out.returncode != 0:
            return False
        nodes = json.loads(out.stdout)["items"]
        return len(nodes) == len(self.nodes) + len(self.real_nodes) and all(
            any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))
            and not any(t["key"].startswith("node.kubernetes.io/") for t in n["spec"].get("taints", []))
            for n in nodes
        )

    def _node_ready(self, name: str) -> bool:
        out = self.kubectl("get", "node", name, "-o", "json", check=False)
        return out.returncode == 0 and any(
            c["type"] == "Ready" and c["status"] == "True" for c in json.loads(out.stdout)["status"]["conditions"]
        )

    def _default_service_account(self) -> bool:
        return self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0
