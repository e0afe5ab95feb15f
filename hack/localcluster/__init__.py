"""The project's local Kubernetes control plane (real binaries, KWOK GPU nodes); see cluster.py."""

from localcluster.cluster import ClusterError, LocalCluster, bin_dir, wait_for

__all__ = ["ClusterError", "LocalCluster", "bin_dir", "wait_for"]
