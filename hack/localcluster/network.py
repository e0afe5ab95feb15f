"""The real nodes' network: a bridge on the host and a network namespace per node, all made by the harness.

Each cluster takes a free *slot* s (a lock file held while it runs, so clusters started side by side never share
names or addresses): bridge ``labr<s>`` with 10.250.<s>.1/24 on the host (the apiserver's address), and per
namespace a veth pair whose inner end gets 10.250.<s>.<n> and whose outer end joins the bridge. Node i's pods
get 10.<200+s>.<i>.0/24. Every namespace, and the host, has a route to each node's pod range via that node's
address, and nothing else: there is no default route anywhere, so no packet can leave for an address the
harness did not make. The host forwards nothing (pod-to-pod traffic between nodes is switched by the bridge).
"""

from __future__ import annotations

import fcntl
import ipaddress
import subprocess
from dataclasses import dataclass
from pathlib import Path

SLOTS = 50  # 10.200.0.0/16 ... 10.249.0.0/16 hold the pod ranges
LOCK_DIR = Path("/tmp/longalign-cluster-slots")
NETNS_DIR = Path("/var/run/netns")


def ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``ip ARGS`` on the host, or inside the named network namespace."""
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return proc


@dataclass(frozen=True)
class Namespace:
    """A network namespace of the harness: its name, address on the bridge, and the pod range it serves."""

    name: str
    address: str
    pod_cidr: str | None = None

    @property
    def path(self) -> Path:
        return NETNS_DIR / self.name


class BridgeNetwork:
    """The bridge and namespaces of one cluster; ``close()`` removes all of them and releases the slot."""

    def __init__(self) -> None:
        LOCK_DIR.mkdir(exist_ok=True)
        for slot in range(SLOTS):
            lock = open(LOCK_DIR / f"{slot}.lock", "w")  # noqa: SIM115 - held until close()
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                continue
            self.slot, self._lock = slot, lock
            break
        else:
            raise RuntimeError(f"all {SLOTS} network slots are taken (lock files in {LOCK_DIR})")
        self.bridge = f"labr{self.slot}"
        self.subnet = ipaddress.ip_network(f"10.250.{self.slot}.0/24")
        self.host_address = str(self.subnet[1])
        self.cluster_cidr = f"10.{200 + self.slot}.0.0/16"
        self.namespaces: list[Namespace] = []
        self._remove_leftovers()  # of a cluster that held this slot and was killed before it cleaned up
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.host_address}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    def add(self, role: str, host_number: int, pod_range: int | None = None) -> Namespace:
        """A namespace ``la<slot><role>`` at 10.250.<slot>.<host_number>, serving pod range ``pod_range`` if given."""
        ns = Namespace(
            f"la{self.slot}{role}",
            str(self.subnet[host_number]),
            f"10.{200 + self.slot}.{pod_range}.0/24" if pod_range is not None else None,
        )
        outer, inner = f"{ns.name}h", f"{ns.name}c"
        ip("netns", "add", ns.name)
        ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        ip("link", "set", inner, "netns", ns.name)
        ip("link", "set", outer, "master", self.bridge, "up")
        ip("link", "set", "lo", "up", netns=ns.name)
        ip("addr", "add", f"{ns.address}/24", "dev", inner, netns=ns.name)
        ip("link", "set", inner, "up", netns=ns.name)
        self.namespaces.append(ns)
        return ns

    def route_pod_ranges(self) -> None:
        """Routes to every node's pod range via that node, in every namespace (but the node's own) and the host."""
        nodes = [(n, n.pod_cidr) for n in self.namespaces if n.pod_cidr]
        for where in [None, *self.namespaces]:
            for node, pod_cidr in nodes:
                if where is not node:
                    ip(
                        "route",
                        "replace",
                        pod_cidr,
                        "via",
                        node.address,
                        *(() if where else ("dev", self.bridge)),
                        netns=where.name if where else None,
                    )

    def close(self) -> None:
        """Remove the namespaces (their veths go with them) and the bridge, and release the slot."""
        self._remove_leftovers()
        self.namespaces.clear()
        self._lock.close()

    def _remove_leftovers(self) -> None:
        prefix = f"la{self.slot}"
        if NETNS_DIR.is_dir():
            for path in NETNS_DIR.iterdir():
                rest = path.name[len(prefix) :]
                if path.name.startswith(prefix) and rest and not rest[0].isdigit():
                    ip("netns", "delete", path.name, check=False)
        ip("link", "delete", self.bridge, check=False)
