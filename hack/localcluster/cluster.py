"""A real Kubernetes control plane on this machine, with simulated GPU nodes, for tests and demos.

It runs the genuine binaries (built by ``build.sh`` from Go modules): etcd, kube-apiserver (TLS, RBAC,
service-account signing), kube-controller-manager (Jobs -> Pods, garbage collection, ServiceAccounts),
kube-scheduler, and KWOK, which plays the kubelet for fake nodes. Pods are scheduled for real; KWOK then
moves them through the lifecycle that ``pod-stages.yaml`` describes, so a test decides whether a pod
completes, fails, hangs or cannot pull its image.

Every process is started in its own process group with a parent-death signal, and ``stop()`` ends them in
reverse order with a timeout, so nothing outlives the cluster even when a test run is killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ADMIN_TOKEN = "longalign-admin-token"  # noqa: S105 - a throwaway credential of a throwaway cluster
# An address outside every private range and never routed, used only as the apiserver's advertised
# address: the apiserver needs one on a host without a default route, and loopback is rejected there.
ADVERTISE_ADDRESS = "192.0.2.10"
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.0/16"


@dataclass(frozen=True)
class NodeShape:
    """One kind of simulated node: its name prefix, capacity and labels."""

    prefix: str
    cpu: str
    memory: str
    gpus: int = 0
    labels: dict[str, str] = field(default_factory=dict)


GPU_NODE = NodeShape(
    prefix="gpu-node",
    cpu="192",
    memory="2Ti",
    gpus=8,
    labels={
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
        "nvidia.com/gpu.count": "8",
        "nvidia.com/gpu.memory": "81559",
        "node.kubernetes.io/instance-type": "gpu-8xh100",
    },
)
CPU_NODE = NodeShape(
    prefix="cpu-node",
    cpu="32",
    memory="128Gi",
    labels={"node.kubernetes.io/instance-type": "cpu-32"},
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """Runs in each child before exec: own process group, and SIGTERM if the parent dies."""
    os.setsid()
    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    """Call ``predicate`` until it returns something truthy and return that; TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def bin_dir() -> Path:
    """Build (once, cached outside the repo) and return the directory holding the cluster's binaries."""
    out = subprocess.run(
        ["bash", str(HERE / "build.sh")], check=True, stdout=subprocess.PIPE, text=True
    ).stdout
    return Path(out.strip().splitlines()[-1])


class ClusterError(RuntimeError):
    """The control plane did not come up; the message names the component and its log file."""


class LocalCluster:
    """etcd + kube-apiserver + controller manager + scheduler + KWOK nodes, started and stopped as one.

    Use as a context manager, or call ``start()`` and ``stop()``. ``kubeconfig`` is an admin kubeconfig
    (group ``system:masters``); ``env()`` gives an environment with ``KUBECONFIG`` and the binaries on PATH.
    """

    def __init__(
        self,
        binaries: Path | None = None,
        data_dir: Path | None = None,
        gpu_nodes: int = 8,
        cpu_nodes: int = 2,
        zones: tuple[str, ...] = ("zone-a", "zone-b"),
    ) -> None:
        self.bin = binaries or bin_dir()
        self.dir = Path(data_dir or tempfile.mkdtemp(prefix="longalign-cluster-"))
        self.nodes = [(GPU_NODE, i) for i in range(gpu_nodes)] + [(CPU_NODE, i) for i in range(cpu_nodes)]
        self.zones = zones
        self.kubeconfig = self.dir / "admin.kubeconfig"
        self.api_port = 0
        self._procs: list[tuple[str, subprocess.Popen]] = []
        self._logs: list = []

    # ----------------------------------------------------------------------------------------- lifecycle
    def start(self, timeout: float = 60.0) -> LocalCluster:
        """Start every component and return once nodes are Ready and schedulable."""
        deadline = time.monotonic() + timeout
        try:
            self._write_certs()
            etcd_port = self._start_etcd()
            self._wait(lambda: self._http_ok(f"http://127.0.0.1:{etcd_port}/health"), deadline, "etcd")
            self._start_apiserver(etcd_port)
            self._wait(lambda: self._http_ok(f"https://127.0.0.1:{self.api_port}/readyz"), deadline,
                       "kube-apiserver")
            self._start_controllers()
            self._create_nodes()
            self._wait(self._nodes_schedulable, deadline, "kwok (nodes Ready, not-ready taint removed)")
            self._wait(self._default_service_account, deadline, "kube-controller-manager (default ServiceAccount)")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Stop components in reverse start order; SIGKILL whatever has not exited within ``timeout``."""
        while self._procs:
            name, proc = self._procs.pop()
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        for f in self._logs:
            f.close()
        self._logs.clear()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pids(self) -> list[int]:
        """Process ids of the running components."""
        return [p.pid for _, p in self._procs]

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

    def set_log(self, namespace: str, pod: str, lines: list[str], container: str | None = None) -> None:
        """Make ``kubectl logs`` of a simulated pod print ``lines``, stamped now (call again to replace them).

        KWOK serves the log from a file in the CRI log format that a Logs object names.
        """
        path = self.dir / "pod-logs" / namespace / f"{pod}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")
        path.write_text("".join(f"{stamp} stdout F {line}\n" for line in lines))
        log = {"logsFile": str(path), **({"containers": [container]} if container else {})}
        self.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps({
            "apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Logs", "metadata": {"name": pod},
            "spec": {"logs": [log]}}))

    def create_bound_claims(self, namespace: str, names: tuple[str, ...] = ("models", "data", "checkpoints")) -> None:
        """PersistentVolumeClaims bound to hostPath volumes, as a storage provisioner would leave them (the
        scheduler does not place pods whose claims are unbound)."""
        for name in names:
            pv = f"{namespace}-{name}"[:63]
            self.kubectl("create", "-f", "-", input=json.dumps({
                "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
                "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                         "persistentVolumeReclaimPolicy": "Delete", "hostPath": {"path": f"/tmp/{pv}"},
                         "claimRef": {"namespace": namespace, "name": name}}}))
            self.create(namespace, {
                "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
                "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv,
                         "resources": {"requests": {"storage": "1Gi"}}}})

    def create(self, namespace: str, *objects: dict) -> None:
        """Create objects (as dicts) in a namespace."""
        self.kubectl("create", "-n", namespace, "-f", "-",
                     input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}))

    def get(self, *args: str) -> dict:
        """``kubectl get ARGS -o json``, parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def _tool(self, name: str, args: tuple[str, ...], check: bool, input: str | None):
        proc = subprocess.run([str(self.bin / name), *args], env=self.env(), input=input,
                              capture_output=True, text=True, timeout=300)
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, [name, *args], proc.stdout, proc.stderr)
        return proc

    # -------------------------------------------------------------------------------------- components
    def _spawn(self, name: str, *args: str) -> None:
        log = open(self.dir / f"{name}.log", "w")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        proc = subprocess.Popen([str(self.bin / name), *args], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        self._procs.append((name, proc))

    def _openssl(self, *args: str) -> None:
        subprocess.run(["openssl", *args], cwd=self.dir, check=True, capture_output=True)

    def _write_certs(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
                      "-subj", "/CN=longalign-local-ca", "-keyout", "ca.key", "-out", "ca.crt")
        self._openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=kube-apiserver",
                      "-keyout", "apiserver.key", "-out", "apiserver.csr")
        (self.dir / "san.ext").write_text(
            f"subjectAltName=IP:127.0.0.1,DNS:localhost,IP:{ADVERTISE_ADDRESS},IP:10.96.0.1,"
            "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\n"
        )
        self._openssl("x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                      "-CAcreateserial", "-days", "3650", "-extfile", "san.ext", "-out", "apiserver.crt")
        self._openssl("genrsa", "-out", "sa.key", "2048")
        self._openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub")
        (self.dir / "tokens.csv").write_text(f'{ADMIN_TOKEN},admin,admin,"system:masters"\n')

    def _start_etcd(self) -> int:
        client, peer = free_port(), free_port()
        self._spawn(
            "etcd", "--name=local", f"--data-dir={self.dir / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{client}", f"--advertise-client-urls=http://127.0.0.1:{client}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}", f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=local=http://127.0.0.1:{peer}", "--unsafe-no-fsync", "--log-level=warn",
        )
        return client

    def _start_apiserver(self, etcd_port: int) -> None:
        self.api_port = free_port()
        d = self.dir
        self._spawn(
            "kube-apiserver", f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1", f"--secure-port={self.api_port}", f"--advertise-address={ADVERTISE_ADDRESS}",
            f"--cert-dir={d / 'apiserver-certs'}", f"--tls-cert-file={d / 'apiserver.crt'}",
            f"--tls-private-key-file={d / 'apiserver.key'}", f"--client-ca-file={d / 'ca.crt'}",
            f"--token-auth-file={d / 'tokens.csv'}", "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={d / 'sa.pub'}", f"--service-account-signing-key-file={d / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}", "--allow-privileged=true", "--v=1",
        )
        self.kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "longalign-local",
            "clusters": [{"name": "longalign-local", "cluster": {
                "server": f"https://127.0.0.1:{self.api_port}", "certificate-authority": str(d / "ca.crt")}}],
            "users": [{"name": "admin", "user": {"token": ADMIN_TOKEN}}],
            "contexts": [{"name": "longalign-local", "context": {"cluster": "longalign-local", "user": "admin"}}],
        }, indent=2))

    def _start_controllers(self) -> None:
        kc = f"--kubeconfig={self.kubeconfig}"
        # Generous client rate limits: the control plane is scenery here, not what the tests measure.
        limits = ("--kube-api-qps=1000", "--kube-api-burst=2000")
        self._spawn(
            "kube-controller-manager", kc, "--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=0",
            "--controllers=*", f"--root-ca-file={self.dir / 'ca.crt'}",
            f"--service-account-private-key-file={self.dir / 'sa.key'}", "--use-service-account-credentials=true",
            f"--service-cluster-ip-range={SERVICE_CIDR}", "--node-monitor-period=1s", *limits, "--v=1",
            # The Job controller syncs 5 Jobs at a time by default; with hundreds of runs starting together it,
            # not the operator, set the pace (benchmarks/operator_scale.py). Large clusters raise it the same way.
            "--concurrent-job-syncs=50",
        )
        self._spawn("kube-scheduler", kc, "--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=0",
                    *limits, "--v=1")
        config = self.dir / "kwok.yaml"
        config.write_text("\n---\n".join([
            KWOK_OPTIONS,
            (self.bin / "kwok-node-stages.yaml").read_text(),
            (HERE / "pod-stages.yaml").read_text(),
        ]))
        # KWOK also plays the kubelet's API (container logs from files named in Logs objects), on loopback.
        self.kubectl("apply", "--server-side", "-f", str(self.bin / "kwok-logs-crd.yaml"))
        wait_for(lambda: self.kubectl("get", "logs.kwok.x-k8s.io", "-A", check=False).returncode == 0, 30,
                 "the KWOK Logs CRD")
        kubelet_port = free_port()
        self._spawn("kwok", kc, f"--config={config}", "--manage-all-nodes=false",
                    "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake", f"--cidr={POD_CIDR}",
                    "--node-ip=127.0.0.1",  # nodes must never point the apiserver off this machine
                    f"--node-port={kubelet_port}", f"--server-address=127.0.0.1:{kubelet_port}",
                    f"--tls-cert-file={self.dir / 'apiserver.crt'}",
                    f"--tls-private-key-file={self.dir / 'apiserver.key'}", "--enable-crds=Logs")

    def _create_nodes(self) -> None:
        items = [self._node(shape, i) for shape, i in self.nodes]
        self.kubectl("create", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))

    def _node(self, shape: NodeShape, index: int) -> dict:
        name = f"{shape.prefix}-{index}"
        capacity = {"cpu": shape.cpu, "memory": shape.memory, "pods": "110", "ephemeral-storage": "2Ti"}
        if shape.gpus:
            capacity["nvidia.com/gpu"] = str(shape.gpus)
        return {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                    "topology.kubernetes.io/zone": self.zones[index % len(self.zones)], "type": "kwok",
                    **shape.labels,
                },
            },
            "status": {"capacity": capacity, "allocatable": capacity},
        }

    # ------------------------------------------------------------------------------------------- waits
    def _wait(self, ready, deadline: float, component: str) -> None:
        def up() -> bool:
            for name, proc in self._procs:
                if proc.poll() is not None:
                    raise ClusterError(f"{name} exited with code {proc.returncode}; see {self.dir / name}.log")
            return ready()

        try:
            wait_for(up, deadline - time.monotonic(), component)
        except TimeoutError as e:
            raise ClusterError(f"{e}; logs are in {self.dir}") from None

    def _http_ok(self, url: str) -> bool:
        ctx = ssl.create_default_context(cafile=str(self.dir / "ca.crt"))
        try:
            with urllib.request.urlopen(url, timeout=2, context=ctx if url.startswith("https") else None) as r:
                return r.status == 200
        except OSError:
            return False

    def _nodes_schedulable(self) -> bool:
        out = self.kubectl("get", "nodes", "-o", "json", check=False)
        if out.returncode != 0:
            return False
        nodes = json.loads(out.stdout)["items"]
        return len(nodes) == len(self.nodes) and all(
            any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))
            and not n["spec"].get("taints")
            for n in nodes
        )

    def _default_service_account(self) -> bool:
        return self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0


KWOK_OPTIONS = """\
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokConfiguration
options:
  # With a config file KWOK applies none of its option defaults, and zero parallelism is rejected.
  podPlayStageParallelism: 8
  nodePlayStageParallelism: 4
  nodeLeaseParallelism: 4
  podsOnNodeSyncParallelism: 4
  nodeLeaseDurationSeconds: 40
  enableDebuggingHandlers: true  # container logs (kubectl logs) for simulated pods
"""
