"""Cluster DNS: CoreDNS as a process in a network namespace of its own, the kubelets' ``clusterDNS``.

A process rather than a Deployment on the real nodes: it needs no image (none can be pulled here), it answers
before the first pod starts, and its address is fixed, so no ``kube-dns`` Service is needed in between.
It serves only ``cluster.local`` (and reverse lookups) from the API; it forwards nothing anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

from localcluster.network import Namespace
from localcluster.pki import PKI
from localcluster.process import Processes

CLUSTER_DOMAIN = "cluster.local"
USER = "system:longalign:coredns"
# What CoreDNS's kubernetes plugin reads (the ClusterRole its own manifests ship).
RBAC = [
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "longalign:coredns"},
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["endpoints", "services", "pods", "namespaces"],
                "verbs": ["list", "watch"],
            },
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
        ],
    },
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "longalign:coredns"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "longalign:coredns"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}],
    },
]


def rbac_manifest() -> str:
    """The ClusterRole and binding CoreDNS's user needs, as a List to ``kubectl apply``."""
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": RBAC})


def start_coredns(procs: Processes, binaries: Path, pki: PKI, netns: Namespace, server: str, data_dir: Path) -> None:
    """Start CoreDNS in ``netns``, on port 53 of its address, authenticated by a client certificate."""
    data_dir.mkdir(parents=True, exist_ok=True)
    kubeconfig = pki.kubeconfig(data_dir / "kubeconfig", server, pair=pki.client("coredns", USER))
    corefile = data_dir / "Corefile"
    corefile.write_text(f"""\
.:53 {{
    bind {netns.address}
    errors
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
}}
""")
    procs.spawn("coredns", [str(binaries / "coredns"), "-conf", str(corefile)], netns=netns.path)
