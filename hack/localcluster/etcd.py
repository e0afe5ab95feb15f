"""etcd: the cluster's storage, on loopback."""

from __future__ import annotations

from pathlib import Path

from localcluster.process import Processes, free_port


def start_etcd(procs: Processes, binaries: Path, data_dir: Path) -> int:
    """Start etcd with its data in ``data_dir``; returns its client port (health: ``/health``)."""
    client, peer = free_port(), free_port()
    procs.spawn(
        "etcd",
        [
            str(binaries / "etcd"),
            "--name=local",
            f"--data-dir={data_dir}",
            f"--listen-client-urls=http://127.0.0.1:{client}",
            f"--advertise-client-urls=http://127.0.0.1:{client}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=local=http://127.0.0.1:{peer}",
            "--unsafe-no-fsync",
            "--log-level=warn",
        ],
    )
    return client
