"""The project's operator installed on the local control plane: the CRD and RBAC manifests applied, and
``longalign operator`` running as a real process with only the rights its ServiceAccount is granted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from localcluster.cluster import LocalCluster, free_port, wait_for

REPO = Path(__file__).resolve().parents[2]


class OperatorProcess:
    """``longalign operator`` as a process, authenticated as the ServiceAccount of manifests/rbac."""

    def __init__(self, kubeconfig: Path, log: Path, reconcile_interval: float = 1.0) -> None:
        self.kubeconfig, self.log, self.interval = kubeconfig, log, reconcile_interval
        self.proc: subprocess.Popen[bytes] | None = None
        self.liveness_port, self.metrics_port = free_port(), free_port()

    def argv(self) -> list[str]:
        """The operator's command line."""
        return [
            sys.executable,
            "-m",
            "longalign_operator.cli",
            "operator",
            "--metrics-port",
            str(self.metrics_port),
            "--liveness",
            f"http://127.0.0.1:{self.liveness_port}/healthz",
        ]

    def _started(self) -> subprocess.Popen[bytes]:
        if self.proc is None:
            raise RuntimeError("the operator process was never started")
        return self.proc

    def start(self) -> None:
        """Start the operator (again)."""
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "LONGALIGN_RECONCILE_INTERVAL": str(self.interval)}
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(self.argv(), env=env, stdout=log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        """Stop it abruptly, as a node failure or an OOM kill would."""
        proc = self._started()
        proc.kill()
        proc.wait()

    def stop(self) -> None:
        """Stop it as Kubernetes would: SIGTERM, then SIGKILL after a grace period."""
        proc = self._started()
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()


def install_manifests(cluster: LocalCluster) -> None:
    """Apply manifests/crd and manifests/rbac and wait until LongAlignRuns are served."""
    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "manifests" / "crd"))
    wait_for(lambda: cluster.kubectl("get", "lar", "-A", check=False).returncode == 0, 30, "the CRD to be served")
    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "manifests" / "rbac"))


def install_operator(cluster: LocalCluster) -> OperatorProcess:
    """Apply the manifests and start the operator as its ServiceAccount."""
    install_manifests(cluster)
    kubeconfig = cluster.kubeconfig_for("longalign-operator", "longalign-system")
    op = OperatorProcess(kubeconfig, cluster.dir / "operator.log")
    op.start()
    return op
