"""kube-scheduler: real placement (resource requests, node selectors, affinity, taints)."""

from __future__ import annotations

from pathlib import Path

from localcluster.controller_manager import CLIENT_LIMITS
from localcluster.process import Processes


def start_scheduler(procs: Processes, binaries: Path, kubeconfig: Path) -> None:
    """Start kube-scheduler with the admin kubeconfig."""
    procs.spawn(
        "kube-scheduler",
        [
            str(binaries / "kube-scheduler"),
            f"--kubeconfig={kubeconfig}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--secure-port=0",
            *CLIENT_LIMITS,
            "--v=1",
        ],
    )
