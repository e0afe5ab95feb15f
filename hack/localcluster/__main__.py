"""Command line of the local control plane.

    python -m localcluster demo   # start, show the nodes, install the operator, take a run to the end, stop
    python -m localcluster up     # start, install the CRD and RBAC, keep running until Ctrl-C (prints how to use it)

Both start the real nodes too (--real-nodes 0 leaves them out; they need root).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import tempfile
import time
from pathlib import Path

from localcluster.cluster import LocalCluster, bin_dir, wait_for
from localcluster.operator_process import install_manifests, install_operator

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "manifests" / "examples" / "tiny-run.yaml"
NODE_COLUMNS = (
    "custom-columns=NAME:.metadata.name,READY:.status.conditions[?(@.type=='Ready')].status,"
    "GPUS:.status.allocatable.nvidia\\.com/gpu,PRODUCT:.metadata.labels.nvidia\\.com/gpu\\.product,"
    "CPU:.status.allocatable.cpu,MEMORY:.status.allocatable.memory,"
    "ZONE:.metadata.labels.topology\\.kubernetes\\.io/zone,TYPE:.metadata.labels.type,"
    "INTERNAL-IP:.status.addresses[?(@.type=='InternalIP')].address"
)


def demo_run(cluster: LocalCluster) -> None:
    """Install the operator (as its ServiceAccount) and take the tiny example run to its end, showing it."""
    operator = install_operator(cluster)
    try:
        print(f"\noperator running (log: {operator.log}); kubectl apply -f {EXAMPLE.relative_to(REPO)}")
        cluster.create_bound_claims("default")
        cluster.kubectl("apply", "-n", "default", "-f", str(EXAMPLE))
        seen: list[str] = []

        def finished() -> bool:
            row = cluster.kubectl("get", "lar", "tiny", "-n", "default", "--no-headers").stdout.strip()
            if row and (not seen or row.split()[1:3] != seen[-1].split()[1:3]):
                seen.append(row)
                print("  " + row, flush=True)
            return len(row.split()) > 1 and row.split()[1] in ("Succeeded", "Failed")

        wait_for(finished, 180, "the tiny run to finish", interval=0.5)
        print(cluster.kubectl("get", "lar", "-n", "default", "-o", "wide").stdout, end="")
        print(cluster.kubectl("get", "jobs", "-n", "default", "-l", "longalign.dev/run=tiny").stdout, end="")
    finally:
        operator.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m localcluster", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["demo", "up"])
    parser.add_argument("--gpu-nodes", type=int, default=8, help="simulated 8-GPU nodes (default 8)")
    parser.add_argument("--cpu-nodes", type=int, default=2, help="simulated CPU-only nodes (default 2)")
    parser.add_argument(
        "--real-nodes",
        type=int,
        default=2,
        help="real CPU nodes (containerd + kubelet, each in its own network namespace; default 2)",
    )
    parser.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="NAME",
        help="also build (hack/localcluster/images.py) and import this image into the real nodes, "
        "e.g. operator (repeatable; pause and busybox always are)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="where state, logs and the kubeconfig go (default: a temp dir, removed after `demo`)",
    )
    args = parser.parse_args(argv)

    binaries = bin_dir()
    if args.command == "demo" and args.data_dir is None:
        scratch = tempfile.TemporaryDirectory(prefix="longalign-demo-")
        args.data_dir = Path(scratch.name)
    t0 = time.monotonic()
    with LocalCluster(
        binaries, args.data_dir, gpu_nodes=args.gpu_nodes, cpu_nodes=args.cpu_nodes, real_nodes=args.real_nodes
    ) as cluster:
        print(f"cluster ready in {time.monotonic() - t0:.1f} s; kubeconfig: {cluster.kubeconfig}")
        print(cluster.kubectl("get", "nodes", "-o", NODE_COLUMNS).stdout, end="")
        for name in ("busybox", *args.image) if cluster.real_nodes else ():
            print(f"image {name} on the real nodes: {cluster.load_image(name)}", flush=True)
        if args.command == "demo":
            demo_run(cluster)
        else:
            install_manifests(cluster)
            operator = cluster.kubeconfig_for("longalign-operator", "longalign-system")
            print(
                f"installed manifests/crd and manifests/rbac\n\n"
                f"as the operator's ServiceAccount (what manifests/rbac grants it):\n"
                f"  export KUBECONFIG={operator} PATH={binaries}:$PATH\n"
                f"then: longalign operator\n\n"
                f"as cluster admin (everything else, e.g. kubectl apply -f manifests/examples/tiny-run.yaml):\n"
                f"  export KUBECONFIG={cluster.kubeconfig} PATH={binaries}:$PATH\n"
                "running until Ctrl-C (logs in the same folder)",
                flush=True,
            )
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
    print("cluster stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
