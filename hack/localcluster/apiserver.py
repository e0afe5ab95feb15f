"""kube-apiserver: TLS, Node + RBAC authorization, NodeRestriction, ServiceAccount tokens."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from localcluster.pki import ADMIN_TOKEN, PKI
from localcluster.process import Processes, free_port

SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
# Without real nodes the apiserver listens on loopback only, and still needs an address to advertise (loopback
# is refused): one outside every private range and never routed, which no pod ever sends to (there are none).
UNROUTED_ADVERTISE_ADDRESS = "192.0.2.10"


@dataclass(frozen=True)
class APIServer:
    """Where the apiserver listens and the admin kubeconfig for it."""

    address: str
    port: int
    kubeconfig: Path

    @property
    def url(self) -> str:
        return f"https://{self.address}:{self.port}"


def start_apiserver(
    procs: Processes, binaries: Path, pki: PKI, etcd_port: int, kubeconfig: Path, address: str | None
) -> APIServer:
    """Start kube-apiserver on ``address`` (an address of the harness's node bridge; None: loopback only).

    The address is also the one advertised, so the ``kubernetes`` Service's endpoint is an address the harness
    made. ``kubeconfig``: where the admin kubeconfig goes. The apiserver reaches kubelets (logs, exec) by their
    InternalIP with a client certificate of its own.
    """
    bind = address or "127.0.0.1"
    port = free_port()
    serving = pki.serving(
        "apiserver",
        [bind, "127.0.0.1", KUBERNETES_SERVICE_IP],
        [
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ],
    )
    kubelet_client = pki.client("apiserver-kubelet-client", "kube-apiserver-kubelet-client", ("system:masters",))
    sa = pki.service_account_keys()
    tokens = pki.dir / "tokens.csv"
    tokens.write_text(f'{ADMIN_TOKEN},admin,admin,"system:masters"\n')
    procs.spawn(
        "kube-apiserver",
        [
            str(binaries / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            f"--bind-address={bind}",
            f"--secure-port={port}",
            f"--advertise-address={address or UNROUTED_ADVERTISE_ADDRESS}",
            f"--cert-dir={pki.dir / 'apiserver-certs'}",
            f"--tls-cert-file={serving.cert}",
            f"--tls-private-key-file={serving.key}",
            f"--client-ca-file={pki.ca.cert}",
            f"--token-auth-file={tokens}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--kubelet-client-certificate={kubelet_client.cert}",
            f"--kubelet-client-key={kubelet_client.key}",
            "--kubelet-preferred-address-types=InternalIP",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={sa.cert}",
            f"--service-account-signing-key-file={sa.key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            "--v=1",
        ],
    )
    url = f"https://{bind}:{port}"
    return APIServer(bind, port, pki.kubeconfig(kubeconfig, url, token=ADMIN_TOKEN))
