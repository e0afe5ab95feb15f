"""Pure builders: the Kubernetes objects of each stage, as plain dicts, from the typed spec.

No I/O and no Kubernetes client here, so every object can be table-tested. Names are deterministic
(``<run>-<stage>-<attempt>``), so a restarted operator finds what it made instead of making it twice; owner
references to the run let Kubernetes delete everything with it.

Inside every stage container the run's volumes are mounted at fixed places, and the spec's paths refer to them:
``/models``, ``/data``, ``/checkpoints``, ``/results``, ``/documents``.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from longalign_operator.spec import (
    DAY,
    GROUP,
    KIND,
    MOUNTS,
    POD_NAME_ENV,
    TRAINING_GRACE_S,
    VERSION,
    LongAlignRunSpec,
    PodOptions,
    StageOptions,
)
from longalign_trainer.contract import JUDGE_KEY_ENV, TEACHER_URL_ENV

LABEL_RUN = f"{GROUP}/run"
LABEL_STAGE = f"{GROUP}/stage"
LABEL_ATTEMPT = f"{GROUP}/attempt"
KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
KUEUE_PRIORITY = "kueue.x-k8s.io/priority-class"
CONFIG_DIR = "/etc/longalign"
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
MASTER_PORT = 29500
VLLM_PORT = 8000
RAY_PORT = 6379
MAX_ATTEMPTS = 999
"""Attempts of one stage at most (the planner fails the stage beyond): the attempt number is part of names."""

STAGE_SHORT = {"dataGeneration": "datagen", "training": "train", "evaluation": "eval"}
STAGE_COMMAND = {"dataGeneration": "datagen", "training": "train", "evaluation": "eval"}


@dataclass(frozen=True)
class Run:
    """The identity of a LongAlignRun that its children point back to."""

    name: str
    namespace: str
    uid: str
    labels: dict[str, str]
    spec: LongAlignRunSpec

    def owner(self) -> dict[str, Any]:
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def attempt_name(run: str, stage: str, attempt: int) -> str:
    """Name of one attempt of a stage: ``<run>-train-2``.

    >>> attempt_name("llama-64k", "training", 2)
    'llama-64k-train-2'
    """
    return f"{run}-{STAGE_SHORT[stage]}-{attempt}"


def output_dir(run: Run) -> str:
    """The run's folder on its checkpoints volume: training's checkpoints and export, the stages' logs."""
    return f"{MOUNTS['checkpoints']}/{run.name}"


def teacher_name(run: str) -> str:
    """Name of the teacher servers' StatefulSet and headless Service."""
    return f"{run}-teacher"


def _labels(run: Run, stage: str, attempt: int | None = None) -> dict[str, str]:
    labels = {LABEL_RUN: run.name, LABEL_STAGE: stage, "app.kubernetes.io/managed-by": "longalign-operator"}
    if attempt is not None:
        labels[LABEL_ATTEMPT] = str(attempt)
    if KUEUE_QUEUE in run.labels:
        labels[KUEUE_QUEUE] = run.labels[KUEUE_QUEUE]
        if run.spec.workload_priority_class:
            labels[KUEUE_PRIORITY] = run.spec.workload_priority_class
    return labels


def _meta(run: Run, name: str, stage: str, attempt: int | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": run.namespace,
        "labels": _labels(run, stage, attempt),
        "ownerReferences": [run.owner()],
    }


def _volumes(spec: LongAlignRunSpec, config_map: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The run's volumes and their mounts; plus the stage config's ConfigMap and /dev/shm when given."""
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    claims: dict[str, str] = {}
    for role, src in spec.storage.mounts().items():
        volume = claims.setdefault(src.claim_name, f"vol-{len(claims)}")
        if not any(v["name"] == volume for v in volumes):
            volumes.append({"name": volume, "persistentVolumeClaim": {"claimName": src.claim_name}})
        mount: dict[str, Any] = {"name": volume, "mountPath": MOUNTS[role]}
        if src.sub_path:
            mount["subPath"] = src.sub_path
        mounts.append(mount)
    if config_map:
        volumes.append({"name": "config", "configMap": {"name": config_map}})
        mounts.append({"name": "config", "mountPath": CONFIG_DIR, "readOnly": True})
    # NCCL and vLLM need far more shared memory than a container's default 64 MiB.
    volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
    mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    return volumes, mounts


def _env(options: PodOptions) -> list[dict[str, Any]]:
    """The user's variables of a stage's pods, as EnvVar objects."""
    return [e.model_dump(mode="json", by_alias=True, exclude_none=True) for e in options.env or []]


COMPILE_CACHES = {
    "training": ("TORCHINDUCTOR_CACHE_DIR", "compile-cache/training"),
    "evaluation": ("VLLM_CACHE_ROOT", "compile-cache/evaluation"),
    "teacher": ("VLLM_CACHE_ROOT", f"compile-cache/$({POD_NAME_ENV})"),
}
"""The variable that places each compiler's cache, and the folder under the run's output folder."""


def compile_cache_env(run: Run, consumer: str, options: PodOptions) -> list[dict[str, Any]]:
    """Where the compilers in a stage's pods keep what they built: on the run's checkpoints volume, which outlives
    the pods (their defaults, in /tmp and ~/.cache, go with the container), so a retried or preempted attempt
    does not compile again: torch.compile's fused kernels in training's first step, vLLM's model before it
    serves. A teacher pod has a folder of its own (its stable name); a training attempt's pods share one
    (Inductor writes its entries atomically). Nothing when the user's pod env sets the variable."""
    variable, folder = COMPILE_CACHES[consumer]
    if any(e.name == variable for e in options.env or []):
        return []
    own_name = [{"name": POD_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
    return [*(own_name if POD_NAME_ENV in folder else []), {"name": variable, "value": f"{output_dir(run)}/{folder}"}]


def _resources(options: PodOptions, gpus: int) -> dict[str, Any]:
    """The user's requests/limits (quantities as strings, as the API wants them) plus the stage's GPUs."""
    resources = {
        kind: {name: str(q) for name, q in amounts.items()} for kind, amounts in (options.resources or {}).items()
    }
    if gpus:
        resources.setdefault("limits", {})["nvidia.com/gpu"] = str(gpus)
    return resources


def pod_template(
    run: Run,
    stage: str,
    attempt: int,
    options: StageOptions,
    *,
    command: list[str],
    env: list[dict[str, Any]],
    gpus: int,
    config_map: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The pod template of a stage's pods: the run's image, volumes, config, GPUs and the user's pod options."""
    spec = run.spec
    pod = options.pod
    volumes, mounts = _volumes(spec, config_map)
    container = {
        "name": STAGE_SHORT[stage],
        "image": spec.image,
        "command": command,
        "env": [*env, *_env(pod)],
        "volumeMounts": mounts,
        "resources": _resources(pod, gpus),
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    template_meta = {"labels": {**(pod.labels or {}), **_labels(run, stage, attempt)}}
    if pod.annotations:
        template_meta["annotations"] = dict(pod.annotations)
    pod_spec = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": volumes,
        **(extra or {}),
        **_placement(run, pod),
    }
    pod_spec["automountServiceAccountToken"] = False  # stages need no API access
    return {"metadata": template_meta, "spec": pod_spec}


def _placement(run: Run, pod: PodOptions) -> dict[str, Any]:
    """The pod-spec fields the user sets for a stage's pods (only those set), plus the run's pull secrets."""
    fields = {
        "nodeSelector": pod.node_selector,
        "tolerations": pod.tolerations,
        "affinity": pod.affinity,
        "priorityClassName": pod.priority_class_name,
        "serviceAccountName": pod.service_account_name,
        "imagePullSecrets": [{"name": n} for n in run.spec.image_pull_secrets or []],
    }
    return {key: value for key, value in fields.items() if value}


def stage_config(run: Run, stage: str, attempt: int) -> dict[str, Any]:
    """The stage-config file the stage command reads (``longalign <stage> --config``)."""
    spec = run.spec
    section = {"dataGeneration": spec.data_generation, "training": spec.training, "evaluation": spec.evaluation}[stage]
    body = section.model_dump(
        mode="json",
        by_alias=True,
        exclude={
            "pod",
            "enabled",
            "backoff_limit",
            "startup_deadline_seconds",
            "active_deadline_seconds",
            "stall_seconds",
            "settings",
            "termination_grace_period_seconds",
        },
        exclude_none=True,
    )
    body = merge(body, section.settings or {})
    data_dir = f"{MOUNTS['data']}/{run.name}"
    # Stages hand over through the volumes: generation writes DATA/data.jsonl, training exports OUTPUT/model.
    if stage == "training" and "datasetPath" not in body:
        body["datasetPath"] = f"{data_dir}/data.jsonl"
    if stage == "evaluation" and "checkpointPath" not in body:
        body["checkpointPath"] = f"{output_dir(run)}/model"
    return {
        "stage": stage,
        "run": run.name,
        "attempt": attempt,
        "baseModelPath": spec.base_model_path,
        "outputDir": output_dir(run),
        "resultsDir": f"{MOUNTS['results']}/{run.name}",
        "dataDir": data_dir,
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        stage: body,
    }


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in, nested mappings merged key by key.

    >>> merge({"teacher": {"modelPath": "/m"}, "seed": 1}, {"teacher": {"temperature": 1.0}})
    {'teacher': {'modelPath': '/m', 'temperature': 1.0}, 'seed': 1}
    """
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def config_map(run: Run, stage: str, attempt: int) -> dict[str, Any]:
    """The ConfigMap holding one attempt's stage config."""
    name = attempt_name(run.name, stage, attempt)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(run, name, stage, attempt),
        "data": {"config.json": json.dumps(stage_config(run, stage, attempt), indent=2, sort_keys=True)},
    }


def _job(
    run: Run, stage: str, attempt: int, options: StageOptions, template: dict[str, Any], **spec: Any
) -> dict[str, Any]:
    name = attempt_name(run.name, stage, attempt)
    job_spec = {"backoffLimit": 0, "template": template, **spec}
    if options.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = options.active_deadline_seconds
    if KUEUE_QUEUE in run.labels:
        job_spec["suspend"] = True  # Kueue admits the Job by unsuspending it
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": _meta(run, name, stage, attempt), "spec": job_spec}


def stage_command(stage: str) -> list[str]:
    return ["longalign", STAGE_COMMAND[stage], "--config", f"{CONFIG_DIR}/config.json"]


def single_pod_job(
    run: Run, stage: str, attempt: int, gpus: int, env: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The Job of a one-pod stage (data generation, evaluation)."""
    options = getattr(run.spec, {"dataGeneration": "data_generation", "evaluation": "evaluation"}[stage])
    name = attempt_name(run.name, stage, attempt)
    template = pod_template(
        run, stage, attempt, options, command=stage_command(stage), env=env or [], gpus=gpus, config_map=name
    )
    return _job(run, stage, attempt, options, template)


def training_service(run: Run) -> dict[str, Any]:
    """Headless Service giving training pods stable DNS names (``<job>-<index>.<service>``)."""
    name = f"{run.name}-train"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(run, name, "training"),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {LABEL_RUN: run.name, LABEL_STAGE: "training"},
            "ports": [{"name": "rendezvous", "port": MASTER_PORT}],
        },
    }


def training_grace_seconds(configured: int | None, stop_s: float | None) -> int:
    """The training pods' terminationGracePeriodSeconds: ``configured`` (the spec's), else 300 s until the
    trainer has measured what stopping costs (``stop_s``: its slowest step plus its slowest checkpoint write),
    then twice that plus 30 s for the processes to stop, at least 60 s.

    >>> [training_grace_seconds(c, s) for c, s in ((None, None), (None, 2.4), (None, 200.2), (120, 2.4))]
    [300, 60, 431, 120]
    """
    if configured is not None:
        return configured
    if stop_s is None:
        return TRAINING_GRACE_S
    return min(DAY, max(60, math.ceil(2 * stop_s + 30)))


def training_job(run: Run, attempt: int, stop_s: float | None = None) -> dict[str, Any]:
    """The training pod group: an Indexed Job of ``nodes`` pods, all-or-nothing (any failure fails the group);
    ``stop_s`` sets its grace period (``training_grace_seconds``)."""
    t = run.spec.training
    name = attempt_name(run.name, "training", attempt)
    service = f"{run.name}-train"
    env: list[dict[str, Any]] = [
        {"name": "MASTER_ADDR", "value": f"{name}-0.{service}"},
        {"name": "MASTER_PORT", "value": str(MASTER_PORT)},
        {"name": "NNODES", "value": str(t.nodes)},
        {"name": "LOCAL_WORLD_SIZE", "value": str(t.gpus_per_node)},
        {"name": "WORLD_SIZE", "value": str(t.nodes * t.gpus_per_node)},
        {
            "name": "NODE_RANK",
            "valueFrom": {
                "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
            },
        },
        *compile_cache_env(run, "training", t.pod),
    ]
    # Static rendezvous: the pod of index 0 hosts the store because of its index. (c10d's backend decides by
    # resolving MASTER_ADDR, the pod's own DNS name, which its headless Service may not publish yet when the
    # container starts: the master then waited as a client like the others, and the attempt failed.) Every pod
    # retries the name until it resolves and waits for the others as long as the operator waits for the pods
    # to start (a master may start minutes later: its node's GPUs held by the previous attempt's stopping pod).
    command = [
        "torchrun",
        f"--nnodes={t.nodes}",
        f"--nproc-per-node={t.gpus_per_node}",
        "--node-rank=$(NODE_RANK)",
        "--rdzv-backend=static",
        "--rdzv-endpoint=$(MASTER_ADDR):$(MASTER_PORT)",
        f"--rdzv-conf=timeout={t.startup_deadline_seconds}",
        "--no-python",
        *stage_command("training"),
    ]
    template = pod_template(
        run,
        "training",
        attempt,
        t,
        command=command,
        env=env,
        gpus=t.gpus_per_node,
        config_map=name,
        extra={
            "subdomain": service,
            "terminationGracePeriodSeconds": training_grace_seconds(t.termination_grace_period_seconds, stop_s),
        },
    )
    return _job(
        run, "training", attempt, t, template, completionMode="Indexed", completions=t.nodes, parallelism=t.nodes
    )


def teacher_objects(run: Run) -> list[dict[str, Any]]:
    """The teacher's vLLM servers and their headless Service: a StatefulSet of ``replicas`` pods, one stable
    name each, or of ``replicas × nodesPerReplica`` pods when a replica spans several nodes: then each group of
    ``nodesPerReplica`` consecutive ordinals forms a Ray cluster led by its first (``longalign teacher-server``).
    """
    dg = run.spec.data_generation
    teacher = run.spec.data_generation.required_teacher()
    nodes = teacher.nodes_per_replica
    name = teacher_name(run.name)
    selector = {LABEL_RUN: run.name, LABEL_STAGE: "teacher"}
    vllm = [
        "python",
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        teacher.model_path,
        "--served-model-name",
        teacher.served_name,
        "--max-model-len",
        str(teacher.max_model_len),
        "--tensor-parallel-size",
        str(teacher.gpus_per_replica),
        "--port",
        str(VLLM_PORT),
        "--enable-prefix-caching",
        *teacher.extra_args,
    ]
    ports = [{"name": "http", "containerPort": VLLM_PORT}]
    env = [*compile_cache_env(run, "teacher", dg.pod), *_env(dg.pod)]
    probe: dict[str, Any] = {"httpGet": {"path": "/health", "port": VLLM_PORT}}
    if nodes > 1:
        group = [
            "longalign",
            "teacher-server",
            "--nodes",
            str(nodes),
            "--gpus",
            str(teacher.gpus_per_replica),
            "--leader",
            f"{name}-{{index}}.{name}.{run.namespace}.svc",
        ]
        vllm = [*group, "--", *vllm]
        probe = {"exec": {"command": [*group, "--probe"]}}
        ports.append({"name": "ray", "containerPort": RAY_PORT})
        env.append(
            {
                "name": "POD_INDEX",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}},
            }
        )
    volumes, mounts = _volumes(run.spec, None)
    container = {
        "name": "vllm",
        "image": teacher.image or run.spec.image,
        "command": vllm,
        "env": env,
        "volumeMounts": mounts,
        "resources": _resources(dg.pod, teacher.gpus_per_replica),
        "ports": ports,
        "readinessProbe": {**probe, "periodSeconds": 10, "timeoutSeconds": 5},
    }
    pod_spec = {
        "containers": [container],
        "volumes": volumes,
        **_placement(run, dg.pod),
        "automountServiceAccountToken": False,
    }
    meta = _meta(run, name, "teacher")
    servers = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": meta,
        "spec": {
            "replicas": teacher.replicas * nodes,
            "serviceName": name,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": selector},
            "template": {"metadata": {"labels": {**(dg.pod.labels or {}), **meta["labels"]}}, "spec": pod_spec},
        },
    }
    # Not-ready pods must resolve too: a replica's pods find their leader before its server is up.
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(run, name, "teacher"),
        "spec": {
            "clusterIP": "None",
            "selector": selector,
            "publishNotReadyAddresses": True,
            "ports": [{"name": p["name"], "port": p["containerPort"]} for p in ports],
        },
    }
    return [servers, service]


def teacher_urls(run: Run) -> str:
    """The OpenAI-compatible base URL of each teacher replica (its leader pod), comma-separated.

    The generator sends all requests about one document to one replica, so that replica's prefix cache
    reuses the document; a load-balanced Service would scatter them.

    >>> from longalign_operator.spec import parse
    >>> spec = parse({"image": "i", "baseModelPath": "/models/m", "dataGeneration": {"teacher": {
    ...     "modelPath": "/models/t", "replicas": 2, "nodesPerReplica": 2}}, "storage": {"models": {"claimName": "m"},
    ...     "data": {"claimName": "d"}, "checkpoints": {"claimName": "c"}}})
    >>> teacher_urls(Run("r", "ns", "uid", {}, spec))
    'http://r-teacher-0.r-teacher.ns.svc:8000/v1,http://r-teacher-2.r-teacher.ns.svc:8000/v1'
    """
    name = teacher_name(run.name)
    teacher = run.spec.data_generation.required_teacher()
    return ",".join(
        f"http://{name}-{i * teacher.nodes_per_replica}.{name}.{run.namespace}.svc:{VLLM_PORT}/v1"
        for i in range(teacher.replicas)
    )


def judge_env(run: Run) -> list[dict[str, Any]]:
    """The judge's API key, from the Secret the spec names (never from the spec itself)."""
    judge = run.spec.evaluation.judge
    if judge is None or judge.api_key_secret_ref is None:
        return []
    ref = judge.api_key_secret_ref
    return [{"name": JUDGE_KEY_ENV, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}]


def stage_objects(run: Run, stage: str, attempt: int, stop_s: float | None = None) -> list[dict[str, Any]]:
    """Everything one attempt of a stage needs, in creation order (``stop_s``: ``training_grace_seconds``)."""
    objects = [config_map(run, stage, attempt)]
    if stage == "dataGeneration":
        objects += teacher_objects(run)
        objects.append(
            single_pod_job(run, stage, attempt, gpus=0, env=[{"name": TEACHER_URL_ENV, "value": teacher_urls(run)}])
        )
    elif stage == "training":
        objects += [training_service(run), training_job(run, attempt, stop_s)]
    else:
        ev = run.spec.evaluation
        env = [*judge_env(run), *compile_cache_env(run, "evaluation", ev.pod)]
        objects.append(single_pod_job(run, stage, attempt, gpus=ev.gpus, env=env))
    return objects


# ------------------------------------------------------------------------------------------ names that must fit
DNS_LABEL = 63
"""Longest Service name, pod hostname and label value Kubernetes accepts."""
REVISION_HASH = 10
"""Characters of the hash the StatefulSet controller appends to its name in its pods' controller-revision-hash."""
RUN_NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
"""A run's name names its Services, so it must be a DNS-1035 label: a letter first, no dots."""


def capped_names(run: Run) -> dict[str, str]:
    """Each name and label value of the run's children that Kubernetes caps at 63 characters, by what it is:
    those the builders write (Services, labels) and those Kubernetes derives from them (an Indexed Job's pod
    hostnames and job-name label, a StatefulSet's pod names and controller-revision-hash label)."""
    out: dict[str, str] = {}
    for stage in STAGE_SHORT:
        if not getattr(run.spec, {"dataGeneration": "data_generation"}.get(stage, stage)).enabled:
            continue
        for obj in stage_objects(run, stage, MAX_ATTEMPTS):
            kind, name, spec = obj["kind"], obj["metadata"]["name"], obj.get("spec", {})
            if kind == "Service":
                out[f"Service {name}"] = name
            labels = {**obj["metadata"]["labels"], **spec.get("template", {}).get("metadata", {}).get("labels", {})}
            out.update({f"label {key} of {kind} {name}": value for key, value in labels.items()})
            if kind == "Job":
                out[f"label job-name of Job {name}'s pods"] = name
                if spec.get("completionMode") == "Indexed":
                    host = f"{name}-{spec['completions'] - 1}"
                    out[f"hostname {host} of Job {name}'s last pod"] = host
            if kind == "StatefulSet":
                pod = f"{name}-{spec['replicas'] - 1}"
                out[f"name of StatefulSet {name}'s last pod"] = pod
                out[f"label controller-revision-hash of StatefulSet {name}'s pods"] = f"{name}-{'h' * REVISION_HASH}"
    return out


@functools.cache
def run_name_limit() -> tuple[int, str, str]:
    """The longest run name whose children can all exist, with what limits it: (length, what, its suffix).

    Computed from the builders for the largest run the spec allows (every stage, the most teacher pods and
    training nodes, the last attempt)."""
    from longalign_operator.spec import Model, Teacher, Training, parse

    def most(model: type[Model], field: str) -> int:
        return int(next(m.le for m in model.model_fields[field].metadata if getattr(m, "le", None) is not None))

    name = "n" * 20
    spec = parse(
        {
            "image": "i",
            "baseModelPath": "/models/m",
            "storage": {"models": {"claimName": "m"}, "data": {"claimName": "d"}, "checkpoints": {"claimName": "c"}},
            "dataGeneration": {
                "teacher": {
                    "modelPath": "/models/t",
                    "replicas": most(Teacher, "replicas"),
                    "nodesPerReplica": most(Teacher, "nodes_per_replica"),
                }
            },
            "training": {"nodes": most(Training, "nodes")},
            "evaluation": {"needle": {}},
        }
    )
    names = capped_names(Run(name, "ns", "uid", {}, spec))
    what, longest = max(((w, v) for w, v in names.items() if v.startswith(name)), key=lambda item: len(item[1]))
    return DNS_LABEL - (len(longest) - len(name)), what.replace(name, "<name>"), longest.removeprefix(name)


def run_name_problems(name: str) -> list[tuple[str, str]]:
    """What is wrong with a run's name, as (field, message) pairs naming the limit; empty when it is fine."""
    limit, what, _ = run_name_limit()
    problems = []
    if len(name) > limit:
        problems.append(("metadata.name", RUN_NAME_MESSAGES["length"].format(limit=limit, what=what)))
    if not re.fullmatch(RUN_NAME_PATTERN, name):
        problems.append(("metadata.name", RUN_NAME_MESSAGES["pattern"]))
    return problems


RUN_NAME_MESSAGES = {
    "length": "must be at most {limit} characters: the longest name made from it, the {what}, must fit in 63",
    "pattern": "must start with a lowercase letter and hold only lowercase letters, digits and "
    "'-' (it names the run's Services)",
}
