"""Command line of the local control plane.

    python -m localcluster demo   # start, show the nodes, run manifests/examples/tiny-cluster.yaml on the real
                                  #   nodes through the helm-installed operator, stop
    python -m localcluster up     # start, install the CRD and RBAC, keep running until Ctrl-C (prints how to use it)

Both start the real nodes too (they need root; `up --real-nodes 0` leaves them out, `demo` needs them), with
every image of images.py on them (built first where missing: nodestore.py).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import tempfile
import time
from pathlib import Path

from localcluster import tiny_run
from localcluster.cluster import LocalCluster, bin_dir
from localcluster.operator_process import install_manifests

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = tiny_run.EXAMPLE
NODE_COLUMNS = (
    "custom-columns=NAME:.metadata.name,READY:.status.conditions[?(@.type=='Ready')].status,"
    "GPUS:.status.allocatable.nvidia\\.com/gpu,PRODUCT:.metadata.labels.nvidia\\.com/gpu\\.product,"
    "CPU:.status.allocatable.cpu,MEMORY:.status.allocatable.memory,"
    "ZONE:.metadata.labels.topology\\.kubernetes\\.io/zone,TYPE:.metadata.labels.type,"
    "INTERNAL-IP:.status.addresses[?(@.type=='InternalIP')].address"
)


def demo_run(cluster: LocalCluster) -> None:
    """The tiny example on the real nodes, through the helm-installed operator, shown as it goes."""
    namespace = "default"
    t0 = time.monotonic()
    pod = tiny_run.install_operator_chart(cluster, namespace)
    print(f"operator (helm release longalign) Ready on {pod['spec']['nodeName']}", flush=True)
    resource = tiny_run.example()
    tiny_run.prepare_namespace(cluster, namespace, resource)
    print(f"volumes filled with tiny stand-ins, judge starting; kubectl apply -f {EXAMPLE.relative_to(REPO)}")
    cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLE))
    tiny_run.follow(cluster, namespace, resource["metadata"]["name"], show=lambda line: print("  " + line, flush=True))
    print(cluster.kubectl("get", "lar", "-n", namespace, "-o", "wide").stdout, end="")
    print(cluster.kubectl("get", "jobs,pods", "-n", namespace, "-o", "wide").stdout, end="")
    print(f"demo done in {time.monotonic() - t0:.0f} s", flush=True)


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
        "--data-dir",
        type=Path,
        help="where state, logs and the kubeconfig go (default: a temp dir, removed after `demo`)",
    )
    args = parser.parse_args(argv)

    if args.command == "demo" and args.real_nodes < 2:
        parser.error("demo runs a 2-pod training group on the real nodes: --real-nodes must be at least 2")
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
        for name, reference in cluster.node_store.references.items() if cluster.node_store else ():
            print(f"image {name} on the real nodes: {reference}", flush=True)
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
