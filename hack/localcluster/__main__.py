"""Command line of the local control plane.

    python -m localcluster demo   # start, install the project's CRDs, show the GPU nodes, stop
    python -m localcluster up     # start and keep running until Ctrl-C; prints how to point kubectl at it
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

from localcluster.cluster import LocalCluster, bin_dir

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "manifests" / "crd"
NODE_COLUMNS = ("custom-columns=NAME:.metadata.name,READY:.status.conditions[?(@.type=='Ready')].status,"
                "GPUS:.status.allocatable.nvidia\\.com/gpu,PRODUCT:.metadata.labels.nvidia\\.com/gpu\\.product,"
                "CPU:.status.allocatable.cpu,MEMORY:.status.allocatable.memory,"
                "ZONE:.metadata.labels.topology\\.kubernetes\\.io/zone")


def install_crds(cluster: LocalCluster) -> list[str]:
    """Apply every CRD the project ships and wait until each is Established; return their names."""
    files = sorted(CRD_DIR.glob("*.yaml")) if CRD_DIR.is_dir() else []
    names = []
    for f in files:
        name = cluster.kubectl("apply", "--server-side", "-f", str(f), "-o", "name").stdout.strip()
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s", name)
        names.append(name)
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["demo", "up"])
    parser.add_argument("--gpu-nodes", type=int, default=8, help="simulated 8-GPU nodes (default 8)")
    parser.add_argument("--cpu-nodes", type=int, default=2, help="simulated CPU-only nodes (default 2)")
    parser.add_argument("--data-dir", type=Path,
                        help="where state, logs and the kubeconfig go (default: a temp dir, removed after `demo`)")
    args = parser.parse_args(argv)

    binaries = bin_dir()
    if args.command == "demo" and args.data_dir is None:
        scratch = tempfile.TemporaryDirectory(prefix="longalign-demo-")
        args.data_dir = Path(scratch.name)
    t0 = time.monotonic()
    with LocalCluster(binaries, args.data_dir, gpu_nodes=args.gpu_nodes, cpu_nodes=args.cpu_nodes) as cluster:
        print(f"control plane ready in {time.monotonic() - t0:.1f} s; kubeconfig: {cluster.kubeconfig}")
        crds = install_crds(cluster)
        print("installed: " + (", ".join(crds) if crds else f"no CRDs yet under {CRD_DIR.relative_to(REPO)}/"))
        print(cluster.kubectl("get", "nodes", "-o", NODE_COLUMNS).stdout, end="")
        if args.command == "up":
            print(f"\nexport KUBECONFIG={cluster.kubeconfig} PATH={binaries}:$PATH\n"
                  "running until Ctrl-C (logs in the same folder)", flush=True)
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            try:
                signal.pause()
            except KeyboardInterrupt:
                pass
    print("control plane stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
