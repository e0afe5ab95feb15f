"""KWOK: plays the kubelet for simulated nodes (the GPU nodes, and CPU nodes for scale).

Pods on those nodes never run; KWOK moves them through the lifecycle that ``pod-stages.yaml`` describes, so a
test decides whether a pod completes, fails, hangs or cannot pull its image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from localcluster.pki import KeyPair
from localcluster.process import Processes, free_port

HERE = Path(__file__).resolve().parent
POD_CIDR = "10.244.0.0/16"  # addresses KWOK hands its simulated pods; nothing is routed to them
ANNOTATION_SELECTOR = "kwok.x-k8s.io/node=fake"

KWOK_OPTIONS = """\
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokConfiguration
options:
  # With a config file KWOK applies none of its option defaults, and zero parallelism is rejected.
  podPlayStageParallelism: 8
  nodePlayStageParallelism: 4
  nodeLeaseParallelism: 4
  podsOnNodeSyncParallelism: 4
  nodeLeaseDurationSeconds: 40
  enableDebuggingHandlers: true  # container logs (kubectl logs) for simulated pods
"""


@dataclass(frozen=True)
class NodeShape:
    """One kind of simulated node: its name prefix, capacity and labels."""

    prefix: str
    cpu: str
    memory: str
    gpus: int = 0
    labels: dict[str, str] = field(default_factory=dict)


GPU_NODE = NodeShape(
    prefix="gpu-node",
    cpu="192",
    memory="2Ti",
    gpus=8,
    labels={
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
        "nvidia.com/gpu.count": "8",
        "nvidia.com/gpu.memory": "81559",
        "node.kubernetes.io/instance-type": "gpu-8xh100",
    },
)
CPU_NODE = NodeShape(
    prefix="cpu-node",
    cpu="32",
    memory="128Gi",
    labels={"node.kubernetes.io/instance-type": "cpu-32"},
)


def start_kwok(procs: Processes, binaries: Path, data_dir: Path, kubeconfig: Path, serving: KeyPair) -> None:
    """Start KWOK for the nodes annotated ``kwok.x-k8s.io/node: fake`` (the Logs CRD must be served already)."""
    config = data_dir / "kwok.yaml"
    config.write_text(
        "\n---\n".join(
            [
                KWOK_OPTIONS,
                (binaries / "kwok-node-stages.yaml").read_text(),
                (HERE / "pod-stages.yaml").read_text(),
            ]
        )
    )
    # KWOK also plays the kubelet's API (container logs from files named in Logs objects), on loopback.
    kubelet_port = free_port()
    procs.spawn(
        "kwok",
        [
            str(binaries / "kwok"),
            f"--kubeconfig={kubeconfig}",
            f"--config={config}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={ANNOTATION_SELECTOR}",
            f"--cidr={POD_CIDR}",
            "--node-ip=127.0.0.1",  # simulated nodes must never point the apiserver off this machine
            f"--node-port={kubelet_port}",
            f"--server-address=127.0.0.1:{kubelet_port}",
            f"--tls-cert-file={serving.cert}",
            f"--tls-private-key-file={serving.key}",
            "--enable-crds=Logs",
        ],
    )


def fake_node(shape: NodeShape, index: int, zones: tuple[str, ...]) -> dict:
    """The Node object of simulated node ``index`` of ``shape`` (KWOK takes it over by its annotation)."""
    name = f"{shape.prefix}-{index}"
    capacity = {"cpu": shape.cpu, "memory": shape.memory, "pods": "110", "ephemeral-storage": "2Ti"}
    if shape.gpus:
        capacity["nvidia.com/gpu"] = str(shape.gpus)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "topology.kubernetes.io/zone": zones[index % len(zones)],
                "type": "kwok",
                **shape.labels,
            },
        },
        "status": {"capacity": capacity, "allocatable": capacity},
    }
