"""A real node: containerd (runc, CNI bridge) and a kubelet in a network namespace of their own.

The kubelet registers the Node itself, authenticated by a client certificate as ``system:node:<name>``
(so the Node authorizer and NodeRestriction apply to it), serves its API (logs, exec) on its InternalIP with a
certificate the cluster CA signed, and accepts only clients that CA signed, authorized by the apiserver.
Its pods run for real; its containerd starts on a copy of the nodes' image store (``nodestore.py``).

Workarounds this machine kind needs, none visible to what a user deploys:
- ``runc-wrapper``: the VM gives root no CAP_SYS_RESOURCE, so a negative ``oom_score_adj`` (the kubelet asks
  -998 for pod sandboxes, -997 for Guaranteed pods) is refused and runc fails with "can't get final child's PID
  from pipe". containerd runs runc through a wrapper that raises a negative ``oomScoreAdj`` to 0.
- the node lives in a network namespace: the kubelet refuses a loopback node IP, and without an InternalIP the
  apiserver cannot reach it for logs and exec.
- no QoS cgroups (``cgroupsPerQOS: false``): two kubelets on one host would each remove the other's pod cgroups.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from localcluster.network import Namespace
from localcluster.pki import PKI
from localcluster.process import ClusterError, Processes, wait_for

CNI_BIN_DIR = "/usr/lib/cni"  # Debian's containernetworking-plugins
TAINT = "longalign.dev/real-node"  # real nodes take only pods that tolerate it, so KWOK's pods never land there
LABEL = {"type": "real"}  # KWOK's nodes carry type=kwok
STATE_ROOT = Path("/run/longalign")
CONTAINERD_NAMESPACE = "k8s.io"  # the kubelet's (CRI's) containerd namespace
UNUSED_SNAPSHOTTERS = ", ".join(
    f'"io.containerd.snapshotter.v1.{name}"' for name in ("btrfs", "zfs", "devmapper", "aufs")
)
"""containerd's snapshotters besides overlayfs, disabled (as TOML list items): they only log errors here."""

RUNC_WRAPPER = """\
#!/bin/sh
# runc, with a negative oomScoreAdj in the bundle's config.json (create/run) or the --process file (exec) raised
# to 0: this machine kind refuses negative oom_score_adj to root. Written by hack/localcluster/realnode.py.
prev=
for arg in "$@"; do
  case $prev in
    --bundle|-b) f="$arg/config.json" ;;
    --process|-p) f="$arg" ;;
    *) f= ;;
  esac
  [ -n "$f" ] && [ -f "$f" ] && sed -i 's/"oomScoreAdj":-[0-9]*/"oomScoreAdj":0/' "$f"
  prev=$arg
done
exec runc "$@"
"""


@dataclass
class RealNode:
    """One real node: its name, network namespace and state folder (under ``state_root``)."""

    name: str
    netns: Namespace
    dir: Path

    @property
    def socket(self) -> Path:
        return self.dir / "containerd.sock"

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``ctr`` against this node's containerd, in the Kubernetes namespace."""
        proc = subprocess.run(
            ["ctr", "--address", str(self.socket), "--namespace", CONTAINERD_NAMESPACE, *args],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)} on {self.name} failed: {proc.stderr.strip()}")
        return proc


def state_root(slot: int) -> Path:
    """Where the real nodes of network slot ``slot`` keep their state (containerd's images and containers, the
    kubelet's pods): a short path, as the kubelet's and containerd's unix sockets may not exceed 104 characters
    (test data folders are deeper). Logs stay in the cluster's data dir."""
    return STATE_ROOT / str(slot)


def remove_state(folder: Path) -> None:
    """Unmount whatever is mounted below ``folder`` (first: a bind-mounted volume must not be emptied), then
    remove it."""
    unmount_under(folder)
    shutil.rmtree(folder, ignore_errors=True)


def check_host() -> None:
    """Raise ClusterError naming what this host lacks to run real nodes."""
    if os.geteuid() != 0:
        raise ClusterError(
            "real nodes need root (network namespaces, containerd); start with real_nodes=0 "
            "(python -m localcluster --real-nodes 0) to run without them"
        )
    missing = [tool for tool in ("containerd", "ctr", "runc", "nsenter", "ip", "iptables") if not shutil.which(tool)]
    missing += [str(p) for p in (Path(CNI_BIN_DIR) / "bridge", Path(CNI_BIN_DIR) / "host-local") if not p.exists()]
    if missing:
        raise ClusterError(
            f"real nodes need {', '.join(missing)}: install them with hack/host-packages.sh "
            "(or start with real_nodes=0)"
        )


def start_containerd(procs: Processes, node: RealNode, pause_image: str, wrapper: Path) -> None:
    """Start the node's containerd in its namespace, with its own root, state, socket and CNI config."""
    d = node.dir / "containerd"
    (d / "cni").mkdir(parents=True, exist_ok=True)
    (d / "cni" / "10-pods.conflist").write_text(
        json.dumps(
            {
                "cniVersion": "0.4.0",
                "name": "pods",
                "plugins": [
                    {
                        "type": "bridge",
                        "bridge": "cni0",
                        "isGateway": True,
                        "ipMasq": False,
                        "hairpinMode": True,
                        "ipam": {
                            "type": "host-local",
                            "ranges": [[{"subnet": node.netns.pod_cidr}]],
                            "routes": [{"dst": "0.0.0.0/0"}],
                            "dataDir": str(d / "ipam"),
                        },
                    }
                ],
            },
            indent=2,
        )
    )
    (d / "config.toml").write_text(f"""\
version = 2
root = "{d / "root"}"
state = "{d / "state"}"
disabled_plugins = [{UNUSED_SNAPSHOTTERS}]
[grpc]
  address = "{node.socket}"
[ttrpc]
  address = "{node.dir / "ttrpc.sock"}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d / "opt"}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause_image}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{wrapper}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{d / "cni"}"
""")
    procs.spawn(f"containerd-{node.name}", ["containerd", "--config", str(d / "config.toml")], netns=node.netns.path)


def write_runc_wrapper(path: Path) -> Path:
    """Write the runc wrapper (see the module docstring) and return its path."""
    path.write_text(RUNC_WRAPPER)
    path.chmod(0o755)
    return path


def start_kubelet(procs: Processes, binaries: Path, pki: PKI, node: RealNode, server: str, cluster_dns: str) -> None:
    """Start the node's kubelet in its namespace; it registers the Node (tainted, labelled ``type=real``)."""
    d = node.dir / "kubelet"
    d.mkdir(parents=True, exist_ok=True)
    client = pki.client(f"kubelet-{node.name}", f"system:node:{node.name}", ("system:nodes",))
    serving = pki.serving(f"kubelet-serving-{node.name}", [node.netns.address], [node.name])
    kubeconfig = pki.kubeconfig(d / "kubeconfig", server, pair=client)
    config = d / "config.yaml"
    config.write_text(
        json.dumps(
            {
                "apiVersion": "kubelet.config.k8s.io/v1beta1",
                "kind": "KubeletConfiguration",
                "address": node.netns.address,
                "port": 10250,
                "readOnlyPort": 0,
                "healthzBindAddress": "127.0.0.1",
                "healthzPort": 10248,
                "tlsCertFile": str(serving.cert),
                "tlsPrivateKeyFile": str(serving.key),
                "authentication": {
                    "anonymous": {"enabled": False},
                    "webhook": {"enabled": True},
                    "x509": {"clientCAFile": str(pki.ca.cert)},
                },
                "authorization": {"mode": "Webhook"},
                "containerRuntimeEndpoint": f"unix://{node.socket}",
                "cgroupDriver": "cgroupfs",
                # Two kubelets on one host must not share the QoS cgroups: each would remove the other's pod cgroups
                # as orphans. Without them every container still gets its own cgroup (with its limits) from runc.
                "cgroupsPerQOS": False,
                "enforceNodeAllocatable": [],
                "failSwapOn": False,
                "clusterDNS": [cluster_dns],
                "clusterDomain": "cluster.local",
                "resolvConf": "",
                "podLogsDir": str(node.dir / "pod-logs"),
                "volumePluginDir": str(d / "volume-plugins"),
                "maxPods": 30,
                "serializeImagePulls": False,
                # The host's disk is shared with everything else on it: never evict or collect images for its sake.
                "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
                "imageGCHighThresholdPercent": 100,
                "imageGCLowThresholdPercent": 99,
                "rotateCertificates": False,
                "serverTLSBootstrap": False,
            },
            indent=2,
        )
    )
    procs.spawn(
        f"kubelet-{node.name}",
        [
            str(binaries / "kubelet"),
            f"--config={config}",
            f"--kubeconfig={kubeconfig}",
            f"--root-dir={d / 'root'}",
            f"--hostname-override={node.name}",
            f"--node-ip={node.netns.address}",
            f"--node-labels={','.join(f'{k}={v}' for k, v in LABEL.items())}",
            f"--register-with-taints={TAINT}=true:NoSchedule",
            "--v=1",
        ],
        netns=node.netns.path,
    )


def wait_for_containerd(procs: Processes, node: RealNode, timeout: float) -> None:
    """Until the node's containerd answers."""

    def up() -> bool:
        procs.check()
        return node.socket.exists() and node.ctr("version", check=False).returncode == 0

    wait_for(up, timeout, f"containerd of {node.name}")


def remove_containers(node: RealNode) -> None:
    """Kill and delete every task (container, pod sandbox) the node's containerd still runs."""
    tasks = node.ctr("tasks", "ls", "-q", check=False).stdout.split()
    for task in tasks:
        node.ctr("tasks", "kill", "--signal", "SIGKILL", task, check=False)
    for task in tasks:
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.ctr("tasks", "delete", "--force", task, check=False)


def kill_shims(node: RealNode) -> None:
    """SIGKILL the containerd shims started for this node (they outlive containerd), found by its socket path."""
    marker = str(node.socket).encode()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"containerd-shim" in cmdline and marker in cmdline:
                os.kill(int(pid), signal.SIGKILL)


def unmount_under(folder: Path) -> None:
    """Lazily unmount every mount below ``folder`` (container root filesystems, pod volumes), deepest first."""
    prefix = str(folder.resolve()) + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point.startswith(prefix):
            points.append(point)
    for point in sorted(set(points), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
