"""Shared fixtures: the local control plane (one per test session) and a fresh namespace per test."""

from __future__ import annotations

import re
import time
import uuid

import pytest
from localcluster import LocalCluster, wait_for


@pytest.fixture(scope="session")
def cluster(tmp_path_factory) -> LocalCluster:
    """A real control plane with 8 GPU and 2 CPU KWOK nodes, fresh for this session, stopped at its end."""
    t0 = time.monotonic()
    with LocalCluster(data_dir=tmp_path_factory.mktemp("cluster")) as c:
        print(f"\nlocal control plane ready in {time.monotonic() - t0:.1f} s; KUBECONFIG={c.kubeconfig}")
        yield c


@pytest.fixture
def namespace(cluster: LocalCluster, request) -> str:
    """A namespace of its own for one test, deleted (and waited for) afterwards."""
    base = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    name = f"{base}-{uuid.uuid4().hex[:5]}"
    cluster.kubectl("create", "namespace", name)
    # Pods are refused until the controller manager has made the namespace's default ServiceAccount.
    wait_for(lambda: cluster.kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0,
             30, f"the default ServiceAccount in {name}")
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false")
    wait_for(lambda: cluster.kubectl("get", "namespace", name, check=False).returncode != 0,
             120, f"namespace {name} to be deleted")

