"""Start one pod of a multi-node teacher replica: the pods of a replica form a Ray cluster, and its leader runs
vLLM's OpenAI server on it with the Ray executor (tensor parallel within a pod, pipeline parallel across pods).

    longalign teacher-server --nodes 2 --gpus 8 --leader 'r-teacher-{index}.r-teacher.ns.svc' -- \\
        python -m vllm.entrypoints.openai.api_server --model /models/teacher ...
    longalign teacher-server --nodes 2 --leader ... --probe      # the pods' readiness probe

The pod's ordinal in its StatefulSet comes from ``$POD_INDEX`` (the operator sets it from the pod's
``apps.kubernetes.io/pod-index`` label). Ordinals ``k*nodes .. k*nodes+nodes-1`` form replica ``k``; the first is
its leader. The leader starts the Ray head, waits until all the replica's pods have joined, then becomes the
vLLM server. The others join the leader's Ray cluster and stay in it; when the leader is not up yet (it may
start last) or goes away, they retry, so a restarted leader gets its pods back.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from typing import NamedTuple, NoReturn

RAY_PORT = 6379
JOIN_RETRY_S = 5.0
WAIT_FOR_NODES_S = 1800.0


class Role(NamedTuple):
    """Where one pod stands in its replica."""

    rank: int
    """0 for the replica's leader."""
    leader: str
    """The leader's host name."""


def role(index: int, nodes: int, leader_template: str) -> Role:
    """The role of the pod with StatefulSet ordinal ``index``.

    >>> role(5, 2, "r-teacher-{index}.r-teacher.ns.svc")
    Role(rank=1, leader='r-teacher-4.r-teacher.ns.svc')
    >>> role(4, 2, "r-teacher-{index}.r-teacher.ns.svc").rank
    0
    """
    rank = index % nodes
    return Role(rank=rank, leader=leader_template.format(index=index - rank))


def ray_head_command(gpus: int) -> list[str]:
    """Start the replica's Ray head in the background (``ray start`` returns once it is up)."""
    return ["ray", "start", "--head", f"--port={RAY_PORT}", f"--num-gpus={gpus}", "--disable-usage-stats"]


def ray_worker_command(leader: str, gpus: int) -> list[str]:
    """Join the leader's Ray cluster and stay in the foreground until it goes away."""
    return ["ray", "start", f"--address={leader}:{RAY_PORT}", f"--num-gpus={gpus}", "--block", "--disable-usage-stats"]


def server_command(vllm: list[str], nodes: int) -> list[str]:
    """The vLLM server command, run on the replica's Ray cluster.

    >>> server_command(["python", "-m", "vllm.entrypoints.openai.api_server", "--tensor-parallel-size", "8"], 2)[-4:]
    ['--distributed-executor-backend', 'ray', '--pipeline-parallel-size', '2']
    """
    return [*vllm, "--distributed-executor-backend", "ray", "--pipeline-parallel-size", str(nodes)]


def alive_nodes() -> int:
    """Nodes of the local Ray cluster that are alive."""
    import ray

    ray.init(address="auto", logging_level="ERROR", log_to_driver=False)
    try:
        return sum(1 for node in ray.nodes() if node.get("Alive"))
    finally:
        ray.shutdown()


def lead(nodes: int, gpus: int, vllm: list[str]) -> int:
    """Leader: Ray head, wait for the replica's pods, then exec the vLLM server."""
    subprocess.run(ray_head_command(gpus), check=True)
    deadline = time.monotonic() + WAIT_FOR_NODES_S
    while (joined := alive_nodes()) < nodes:
        if time.monotonic() > deadline:
            print(f"teacher-server: only {joined}/{nodes} pods joined in {WAIT_FOR_NODES_S:.0f} s", file=sys.stderr)
            return 1
        print(f"teacher-server: {joined}/{nodes} pods in the Ray cluster; waiting", flush=True)
        time.sleep(JOIN_RETRY_S)
    command = server_command(vllm, nodes)
    print("teacher-server: all pods joined; starting " + " ".join(command), flush=True)
    os.execvp(command[0], command)
    return 1  # not reached


def follow(leader: str, gpus: int) -> NoReturn:
    """Worker: stay in the leader's Ray cluster, joining again whenever it is not (yet) there."""
    while True:
        code = subprocess.run(ray_worker_command(leader, gpus)).returncode
        print(
            f"teacher-server: ray exited with {code} (leader {leader} not up yet or gone); retrying in "
            f"{JOIN_RETRY_S:.0f} s",
            flush=True,
        )
        time.sleep(JOIN_RETRY_S)


def ready(rank: int, leader: str, port: int) -> bool:
    """Readiness: the leader answers vLLM's /health; a worker is in its leader's Ray cluster."""
    if rank == 0:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                return response.status == 200
        except OSError:
            return False
    return (
        subprocess.run(["ray", "health-check", f"--address={leader}:{RAY_PORT}"], capture_output=True).returncode == 0
    )


def add_arguments(parser) -> None:
    """Arguments of ``longalign teacher-server``."""
    parser.add_argument("--nodes", type=int, required=True, help="pods per replica")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs per pod")
    parser.add_argument(
        "--leader", required=True, help="the leader's host name, with {index} for its StatefulSet ordinal"
    )
    parser.add_argument("--port", type=int, default=8000, help="the vLLM server's port (for --probe)")
    parser.add_argument("--probe", action="store_true", help="exit 0 when this pod is ready")
    parser.add_argument("vllm", nargs="*", help="after --: the vLLM server command")


def run(args) -> int:
    """``longalign teacher-server``: lead or join this pod's replica."""
    index = os.environ.get("POD_INDEX")
    if index is None or not index.isdigit():
        print("teacher-server: POD_INDEX must hold this pod's StatefulSet ordinal", file=sys.stderr)
        return 2
    me = role(int(index), args.nodes, args.leader)
    if args.probe:
        return 0 if ready(me.rank, me.leader, args.port) else 1
    if me.rank == 0:
        if not args.vllm:
            print("teacher-server: the vLLM server command goes after --", file=sys.stderr)
            return 2
        return lead(args.nodes, args.gpus, args.vllm)
    return follow(me.leader, args.gpus)
