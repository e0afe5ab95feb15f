"""Operator at scale on the local control plane: many runs, each a training group of many pods.

    PYTHONPATH=hack .venv/bin/python benchmarks/operator_scale.py --runs 200 --pods-per-run 16

Starts a fresh control plane with KWOK GPU nodes, installs the operator as it ships (its ServiceAccount, default
reconcile interval), creates every run at once, and prints:
- apply -> all pods of a run created: p50 / p99 over runs (from the apply to the 16th pod's ADDED watch event);
- time until every run is Succeeded;
- the operator process's CPU time and peak RSS.
KWOK pods finish at once, so the figures measure the operator and the control plane, not training.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

from kubernetes import client, config, watch
from localcluster import LocalCluster, wait_for
from localcluster.operator_process import OperatorProcess, install_manifests

NS = "scale"


def run_object(i: int, pods: int) -> dict:
    return {"apiVersion": "longalign.dev/v1alpha1", "kind": "LongAlignRun", "metadata": {"name": f"run-{i:04d}"},
            "spec": {"image": "trainer:1", "baseModelPath": "/models/m",
                     "storage": {"models": {"claimName": "models"}, "data": {"claimName": "data"},
                                 "checkpoints": {"claimName": "checkpoints"}},
                     "training": {"datasetPath": "/data/d.jsonl", "nodes": pods, "gpusPerNode": 1}}}


def proc_usage(pid: int) -> tuple[float, int]:
    """(CPU seconds, peak RSS bytes) of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks (100 Hz)
    peak = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith("VmHWM:"))
    return cpu, peak * 1024


def watch_pods(api: client.CoreV1Api, counts: dict[str, list[float]], stop: threading.Event) -> None:
    """Record the arrival time of every training pod, per run."""
    w = watch.Watch()
    for event in w.stream(api.list_namespaced_pod, NS, label_selector="longalign.dev/stage=training",
                          timeout_seconds=3600):
        if event["type"] == "ADDED":
            counts.setdefault(event["object"].metadata.labels["longalign.dev/run"], []).append(time.monotonic())
        if stop.is_set():
            w.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--pods-per-run", type=int, default=16)
    parser.add_argument("--gpu-nodes", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()

    with LocalCluster(gpu_nodes=args.gpu_nodes, cpu_nodes=0) as cluster:
        install_manifests(cluster)
        op = OperatorProcess(cluster.kubeconfig_for("longalign-operator", "longalign-system"),
                             cluster.dir / "operator.log", reconcile_interval=5)
        op.start()
        try:
            cluster.kubectl("create", "namespace", NS)
            wait_for(lambda: cluster.kubectl("get", "sa", "default", "-n", NS, check=False).returncode == 0, 30,
                     "the namespace's ServiceAccount")
            cluster.create_bound_claims(NS)
            config.load_kube_config(str(cluster.kubeconfig))
            counts: dict[str, list[float]] = {}
            stop = threading.Event()
            watcher = threading.Thread(target=watch_pods, args=(client.CoreV1Api(), counts, stop), daemon=True)
            watcher.start()
            time.sleep(1)
            runs = [run_object(i, args.pods_per_run) for i in range(args.runs)]
            t0 = time.monotonic()
            cluster.kubectl("create", "-n", NS, "-f", "-",
                            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": runs}))
            applied = time.monotonic()

            def all_succeeded() -> bool:
                items = cluster.get("lar", "-n", NS)["items"]
                return sum((r.get("status") or {}).get("phase") == "Succeeded" for r in items) == args.runs

            wait_for(all_succeeded, args.timeout, "every run to succeed", interval=2)
            done = time.monotonic()
            cpu, peak = proc_usage(op.proc.pid)
            stop.set()
        finally:
            op.stop()

    latencies = sorted(ts[args.pods_per_run - 1] - t0 for ts in counts.values() if len(ts) >= args.pods_per_run)
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    print(f"runs {args.runs} x {args.pods_per_run} training pods on {args.gpu_nodes} KWOK nodes x 8 GPUs")
    print(f"create call took {applied - t0:.1f} s; runs with all pods created: {len(latencies)}/{args.runs}")
    print(f"apply -> all pods created: p50 {q[49]:.2f} s, p99 {q[98]:.2f} s, max {latencies[-1]:.2f} s")
    print(f"apply -> every run Succeeded: {done - t0:.1f} s")
    print(f"operator: CPU {cpu:.1f} s, peak RSS {peak / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
