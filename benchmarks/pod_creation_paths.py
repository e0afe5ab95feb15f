"""How fast a burst of pod groups gets its pods: through Indexed Jobs (the Job controller) or created directly.

    PYTHONPATH=hack .venv/bin/python benchmarks/pod_creation_paths.py                    # both, 200 groups x 16
    PYTHONPATH=hack .venv/bin/python benchmarks/pod_creation_paths.py --paths direct --groups 50
    PYTHONPATH=hack .venv/bin/python benchmarks/pod_creation_paths.py --gpu-nodes 32 --rate 2 --complete

No operator: this measures the path the operator's training groups take today (one Indexed Job per group, whose
pods kube-controller-manager creates in slow-start batches of 1, 2, 4, 8, ...) against the alternative (the
pods created by the client itself, 16 groups at a time, each group's pods in parallel), each on a fresh local
control plane with KWOK GPU nodes (by default enough for every pod to be scheduled and keep running; with
--complete KWOK completes each pod at once, as in operator_scale.py, and the Job path also completes its Jobs).
Groups arrive all at once, or paced with --rate (groups per second, as operator_scale.py paces runs). Prints, per
path, group created -> all its pods created (watch events): p50 / p99 / max.
"""

from __future__ import annotations

import argparse
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from kubernetes import client, config
from operator_scale import percentiles, watch_first_seen

from localcluster import LocalCluster, wait_for

NS = "paths"
HANG = {"sim.longalign.dev/outcome": "hang"}  # KWOK keeps the pod running (hack/localcluster/pod-stages.yaml)
POD_SPEC = {
    "restartPolicy": "Never",
    "containers": [{"name": "train", "image": "trainer:1", "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
}


def measure(
    path: str, groups: int, per_group: int, gpu_nodes: int, rate: float = 0, complete: bool = False
) -> list[float]:
    """Seconds from each group's create call to the last of its pods seen, on a fresh control plane."""
    with LocalCluster(gpu_nodes=gpu_nodes, cpu_nodes=0, real_nodes=0) as cluster:
        cluster.kubectl("create", "namespace", NS)
        wait_for(
            lambda: cluster.kubectl("get", "sa", "default", "-n", NS, check=False).returncode == 0,
            30,
            "the namespace's ServiceAccount",
        )
        config.load_kube_config(str(cluster.kubeconfig))
        core, batch = client.CoreV1Api(), client.BatchV1Api()
        seen: dict[str, float] = {}
        stop = threading.Event()
        threading.Thread(
            target=watch_first_seen,
            daemon=True,
            kwargs={"label_selector": "group"},
            args=(core.list_namespaced_pod, (NS,), seen, stop),
        ).start()
        time.sleep(1)
        started: dict[str, float] = {}
        t0 = time.monotonic()

        def create(i: int) -> None:
            if rate:
                time.sleep(max(0.0, t0 + i / rate - time.monotonic()))
            group = f"g{i:04d}"
            started[group] = time.monotonic()
            template = {"metadata": {"labels": {"group": group, **({} if complete else HANG)}}, "spec": POD_SPEC}
            if path == "job":
                batch.create_namespaced_job(
                    NS,
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "metadata": {"name": group},
                        "spec": {
                            "completionMode": "Indexed",
                            "completions": per_group,
                            "parallelism": per_group,
                            "backoffLimit": 0,
                            "template": template,
                        },
                    },
                )
            else:
                with ThreadPoolExecutor(per_group) as pods:
                    list(
                        pods.map(
                            lambda j: core.create_namespaced_pod(
                                NS,
                                {
                                    "apiVersion": "v1",
                                    "kind": "Pod",
                                    "metadata": {"name": f"{group}-{j}", **template["metadata"]},
                                    "spec": POD_SPEC,
                                },
                            ),
                            range(per_group),
                        )
                    )

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(create, range(groups)))
        wait_for(lambda: len(seen) >= groups * per_group, 900, "every pod to be created", interval=1)
        stop.set()
    last: dict[str, float] = {}
    for pod, t in seen.items():
        group = pod.split("-")[0]  # Job pods: <group>-<index>-<suffix>; direct ones: <group>-<index>
        last[group] = max(last.get(group, 0.0), t)
    return [last[g] - started[g] for g in started]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paths", default="job,direct", help="comma-separated: job, direct")
    parser.add_argument("--groups", type=int, default=200)
    parser.add_argument("--pods-per-group", type=int, default=16)
    parser.add_argument("--gpu-nodes", type=int, default=400, help="KWOK nodes of 8 GPUs (default: room for all)")
    parser.add_argument("--rate", type=float, default=0, help="groups created per second (0: all at once)")
    parser.add_argument("--complete", action="store_true", help="pods complete at once instead of running on")
    args = parser.parse_args()
    for path in args.paths.split(","):
        latencies = measure(path, args.groups, args.pods_per_group, args.gpu_nodes, args.rate, args.complete)
        q = percentiles(latencies)
        arrival = (f"{args.rate:g}/s" if args.rate else "at once") + (", completing" if args.complete else "")
        print(
            f"{path:<7} {args.groups} groups x {args.pods_per_group} pods ({arrival}): group created -> all its "
            f"pods created p50 {q[49]:.2f} s, p99 {q[98]:.2f} s, max {max(latencies):.2f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
