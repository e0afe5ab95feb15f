"""The project's local Kubernetes cluster (real binaries, KWOK GPU nodes, real CPU nodes); see cluster.py."""

from localcluster.cluster import ClusterError, LocalCluster, bin_dir, wait_for

__all__ = ["ClusterError", "LocalCluster", "bin_dir", "wait_for"]
