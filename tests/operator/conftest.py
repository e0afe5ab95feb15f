"""Fixtures for operator tests: the CRD and RBAC installed, the operator running as its ServiceAccount."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from localcluster import LocalCluster, wait_for
from runs import create_claims

REPO = Path(__file__).resolve().parents[2]


class OperatorProcess:
    """`longalign operator` as a real process, authenticated as the ServiceAccount of manifests/rbac."""

    def __init__(self, kubeconfig: Path, log: Path) -> None:
        self.kubeconfig, self.log = kubeconfig, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "LONGALIGN_RECONCILE_INTERVAL": "1"}
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "longalign_operator.cli", "operator"],
                                         env=env, stdout=log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        """Stop it abruptly, as a node failure or an OOM kill would."""
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()


@pytest.fixture(scope="session")
def operator(cluster: LocalCluster, tmp_path_factory):
    """The CRD and RBAC manifests applied, and the operator running with only the rights they grant."""
    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "manifests" / "crd"))
    wait_for(lambda: cluster.kubectl("get", "lar", "-A", check=False).returncode == 0, 30, "the CRD to be served")
    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "manifests" / "rbac"))
    kubeconfig = cluster.kubeconfig_for("longalign-operator", "longalign-system")
    op = OperatorProcess(kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log")
    op.start()
    yield op
    op.stop()


@pytest.fixture
def volumes(cluster: LocalCluster, namespace: str) -> str:
    """The namespace, with the claims the runs in these tests name, bound."""
    create_claims(cluster, namespace)
    return namespace
