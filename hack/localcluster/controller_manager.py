"""kube-controller-manager: Jobs -> Pods, garbage collection, namespaces, ServiceAccounts, node lifecycle."""

from __future__ import annotations

from pathlib import Path

from localcluster.apiserver import SERVICE_CIDR
from localcluster.pki import PKI
from localcluster.process import Processes

# Generous client rate limits: the control plane is scenery here, not what the tests measure.
CLIENT_LIMITS = ("--kube-api-qps=1000", "--kube-api-burst=2000")


def start_controller_manager(procs: Processes, binaries: Path, pki: PKI, kubeconfig: Path) -> None:
    """Start kube-controller-manager with the admin kubeconfig (each controller uses its own ServiceAccount)."""
    procs.spawn(
        "kube-controller-manager",
        [
            str(binaries / "kube-controller-manager"),
            f"--kubeconfig={kubeconfig}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--secure-port=0",
            "--controllers=*",
            f"--root-ca-file={pki.ca.cert}",
            f"--service-account-private-key-file={pki.dir / 'sa.key'}",
            "--use-service-account-credentials=true",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--node-monitor-period=1s",
            *CLIENT_LIMITS,
            "--v=1",
            # The Job controller syncs 5 Jobs at a time by default; with hundreds of runs starting together it,
            # not the operator, set the pace (benchmarks/operator_scale.py). Large clusters raise it the same way.
            "--concurrent-job-syncs=50",
        ],
    )
