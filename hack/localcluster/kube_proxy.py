"""kube-proxy (iptables mode) on each real node: Service addresses, in the node's own network namespace."""

from __future__ import annotations

import json
from pathlib import Path

from localcluster.pki import PKI
from localcluster.process import Processes
from localcluster.realnode import RealNode


def start_kube_proxy(
    procs: Processes, binaries: Path, pki: PKI, node: RealNode, server: str, cluster_cidr: str
) -> None:
    """Start kube-proxy for ``node`` in its namespace, as ``system:kube-proxy`` (bound to system:node-proxier)."""
    d = node.dir / "kube-proxy"
    d.mkdir(parents=True, exist_ok=True)
    client = pki.client(f"kube-proxy-{node.name}", "system:kube-proxy")
    config = d / "config.yaml"
    config.write_text(
        json.dumps(
            {
                "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                "kind": "KubeProxyConfiguration",
                "clientConnection": {"kubeconfig": str(pki.kubeconfig(d / "kubeconfig", server, pair=client))},
                "mode": "iptables",
                "hostnameOverride": node.name,
                "bindAddress": node.netns.address,
                "clusterCIDR": cluster_cidr,
                "healthzBindAddress": "127.0.0.1:10256",
                "metricsBindAddress": "127.0.0.1:10249",
                # Zero: leave the host-wide conntrack table size and timeouts alone (a namespace may not set them).
                "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
            },
            indent=2,
        )
    )
    procs.spawn(
        f"kube-proxy-{node.name}", [str(binaries / "kube-proxy"), f"--config={config}", "--v=1"], netns=node.netns.path
    )
