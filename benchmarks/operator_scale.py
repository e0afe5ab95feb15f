"""Operator at scale on the local control plane: many runs, each a training group of many pods.

    PYTHONPATH=hack .venv/bin/python benchmarks/operator_scale.py --runs 200 --pods-per-run 16             # burst
    PYTHONPATH=hack .venv/bin/python benchmarks/operator_scale.py --runs 200 --pods-per-run 16 --rate 2    # paced
    PYTHONPATH=hack .venv/bin/python benchmarks/operator_scale.py --runs 200 --pods-per-run 16 --pod-seconds 60

Starts a fresh control plane with KWOK GPU nodes, installs the operator as it ships (its ServiceAccount, default
reconcile interval), creates the runs (all at once, or paced with --rate), and prints:
- run created -> all its pods created: p50 / p99 over runs (watch events: the run's first, its last pod's first),
  split into run created -> its training Job created (the operator's part) and Job -> last pod (the Job
  controller's part);
- time until every run is Succeeded;
- the operator process's CPU time and peak RSS.
KWOK pods finish at once unless --pod-seconds says otherwise, so the figures measure the operator and the control
plane, not training.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

import urllib3
from kubernetes import client, config, watch

from localcluster import LocalCluster, wait_for
from localcluster.operator_process import OperatorProcess, install_manifests

NS = "scale"


def run_object(i: int, pods: int, pod_seconds: float) -> dict:
    training = {"datasetPath": "/data/d.jsonl", "nodes": pods, "gpusPerNode": 1}
    if pod_seconds:  # KWOK's stage for Job pods waits this long before it completes them (hack/localcluster)
        training["pod"] = {"annotations": {"sim.longalign.dev/run-duration": f"{pod_seconds}s"}}
    return {
        "apiVersion": "longalign.dev/v1alpha1",
        "kind": "LongAlignRun",
        "metadata": {"name": f"run-{i:04d}"},
        "spec": {
            "image": "trainer:1",
            "baseModelPath": "/models/m",
            "storage": {
                "models": {"claimName": "models"},
                "data": {"claimName": "data"},
                "checkpoints": {"claimName": "checkpoints"},
            },
            "training": training,
        },
    }


def percentiles(values: list[float]) -> list[float]:
    """The 1st..99th percentiles (index 49 is the median, 98 the 99th)."""
    values = sorted(values)
    return statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else values * 99


def proc_usage(pid: int) -> tuple[float, int]:
    """(CPU seconds, peak RSS bytes) of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks (100 Hz)
    peak = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmHWM:")
    )
    return cpu, peak * 1024


def watch_first_seen(list_call, args: tuple, seen: dict[str, float], stop: threading.Event, **kwargs) -> None:
    """Record when each object is first seen (by name), re-watching after any interruption."""
    version = None
    while not stop.is_set():
        try:
            # Plain JSON, not the client's models: building a V1Pod per event is slow enough for this thread to
            # fall seconds behind thousands of pod events, which would count as latency.
            for event in watch.Watch().stream(
                list_call, *args, resource_version=version, timeout_seconds=30, deserialize=False, **kwargs
            ):
                meta = event["object"]["metadata"]
                seen.setdefault(meta["name"], time.monotonic())
                version = meta["resourceVersion"]
        except client.exceptions.ApiException as e:
            if e.status != 410:
                raise
            version = None  # too old: list again (names already seen keep their first time)
        except KeyError:  # the client reads an ERROR event's "raw_object", absent without deserializing: 410 too
            version = None
        except urllib3.exceptions.ProtocolError:
            continue  # the stream broke (or the cluster is stopping): watch again from where it was


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--pods-per-run", type=int, default=16)
    parser.add_argument("--gpu-nodes", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument(
        "--rate",
        type=float,
        default=0,
        help="create the runs at this many per second (default 0: all at once, one kubectl create)",
    )
    parser.add_argument(
        "--pod-seconds",
        type=float,
        default=0,
        help="how long each training pod runs (default 0: it completes as soon as it starts, so "
        "completions overlap the creation burst; real training pods run for hours)",
    )
    args = parser.parse_args()

    with LocalCluster(gpu_nodes=args.gpu_nodes, cpu_nodes=0, real_nodes=0) as cluster:
        install_manifests(cluster)
        op = OperatorProcess(
            cluster.kubeconfig_for("longalign-operator", "longalign-system"),
            cluster.dir / "operator.log",
            reconcile_interval=5,
        )
        op.start()
        try:
            cluster.kubectl("create", "namespace", NS)
            wait_for(
                lambda: cluster.kubectl("get", "sa", "default", "-n", NS, check=False).returncode == 0,
                30,
                "the namespace's ServiceAccount",
            )
            cluster.create_bound_claims(NS)
            config.load_kube_config(str(cluster.kubeconfig))
            pods_seen: dict[str, float] = {}
            runs_seen: dict[str, float] = {}
            jobs_seen: dict[str, float] = {}
            stop = threading.Event()
            threading.Thread(
                target=watch_first_seen,
                daemon=True,
                kwargs={"label_selector": "longalign.dev/stage=training"},
                args=(client.BatchV1Api().list_namespaced_job, (NS,), jobs_seen, stop),
            ).start()
            threading.Thread(
                target=watch_first_seen,
                daemon=True,
                kwargs={"label_selector": "longalign.dev/stage=training"},
                args=(client.CoreV1Api().list_namespaced_pod, (NS,), pods_seen, stop),
            ).start()
            threading.Thread(
                target=watch_first_seen,
                daemon=True,
                args=(
                    client.CustomObjectsApi().list_namespaced_custom_object,
                    ("longalign.dev", "v1alpha1", NS, "longalignruns"),
                    runs_seen,
                    stop,
                ),
            ).start()
            time.sleep(1)
            runs = [run_object(i, args.pods_per_run, args.pod_seconds) for i in range(args.runs)]
            t0 = time.monotonic()
            if args.rate:
                api = client.CustomObjectsApi()
                for i, run in enumerate(runs):
                    time.sleep(max(0.0, t0 + i / args.rate - time.monotonic()))
                    api.create_namespaced_custom_object("longalign.dev", "v1alpha1", NS, "longalignruns", run)
            else:
                cluster.kubectl(
                    "create", "-n", NS, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": runs})
                )
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

    # A run's pods are named <run>-train-1-<index>-<suffix>; its clock starts when its creation was seen.
    per_run: dict[str, list[float]] = {}
    for pod, seen in pods_seen.items():
        per_run.setdefault(pod.split("-train-")[0], []).append(seen)
    latencies = sorted(
        max(ts) - runs_seen[run] for run, ts in per_run.items() if len(ts) >= args.pods_per_run and run in runs_seen
    )
    q = percentiles(latencies)
    to_job = percentiles(
        [jobs_seen[f"{run}-train-1"] - runs_seen[run] for run in runs_seen if f"{run}-train-1" in jobs_seen]
    )
    job_to_pods = percentiles(
        [
            max(ts) - jobs_seen[f"{run}-train-1"]
            for run, ts in per_run.items()
            if len(ts) >= args.pods_per_run and f"{run}-train-1" in jobs_seen
        ]
    )
    print(
        f"runs {args.runs} x {args.pods_per_run} training pods on {args.gpu_nodes} KWOK nodes x 8 GPUs, "
        f"each pod running {args.pod_seconds:g} s"
    )
    print(f"creating the runs took {applied - t0:.1f} s; runs with all pods seen: {len(latencies)}/{args.runs}")
    print(f"run created -> all its pods created: p50 {q[49]:.2f} s, p99 {q[98]:.2f} s, max {latencies[-1]:.2f} s")
    print(f"  run created -> Job created (operator): p50 {to_job[49]:.2f} s, p99 {to_job[98]:.2f} s")
    print(
        f"  Job created -> all its pods created (Job controller): p50 {job_to_pods[49]:.2f} s, "
        f"p99 {job_to_pods[98]:.2f} s"
    )
    print(f"apply -> every run Succeeded: {done - t0:.1f} s")
    print(f"operator: CPU {cpu:.1f} s, peak RSS {peak / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
