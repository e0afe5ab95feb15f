"""Fixtures for operator tests: the CRD and RBAC installed, the operator running as its ServiceAccount."""

from __future__ import annotations

import pytest

from localcluster import LocalCluster
from localcluster.operator_process import install_operator


@pytest.fixture(scope="session")
def operator(cluster: LocalCluster):
    """The CRD and RBAC manifests applied, and the operator running with only the rights they grant."""
    op = install_operator(cluster)
    yield op
    op.stop()


@pytest.fixture
def volumes(cluster: LocalCluster, namespace: str) -> str:
    """The namespace, with the claims the runs in these tests name, bound."""
    cluster.create_bound_claims(namespace)
    return namespace
