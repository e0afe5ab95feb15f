"""The LongAlignRun spec: one typed model, validated once, then trusted.

The CRD's OpenAPI schema is generated from these models (``crd.py``), so the apiserver and the operator can
never disagree about a field. Cross-field rules live in ``RULES``: each is a CEL expression that the apiserver
enforces at ``kubectl apply`` and the same check in Python that ``validate()`` applies for the local runner;
a test runs every rule through both.

Field names are camelCase on the wire (as Kubernetes users expect) and snake_case in Python.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from longalign_trainer.contract import OPERATOR_ENV, SECRET_ENV

GROUP = "longalign.dev"
VERSION = "v1alpha1"
KIND = "LongAlignRun"
PLURAL = "longalignruns"
SHORT_NAMES = ["lar"]

Quantity = int | str  # a Kubernetes resource quantity: 8, "500m", "64Gi"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
"""What Kubernetes accepts as the name of a claim, Secret, ServiceAccount or PriorityClass."""
MAX_TOKENS = 1_048_576
"""Longest sequence, pack or document any field may ask for (2^20 tokens): beyond the longest context any
model trained or served on today's GPUs uses (a pack is one sequence's activations on one GPU). A training
pack may be ``sequenceParallelSize`` times longer: its GPUs share it."""
MAX_SEQUENCE_PARALLEL = 16
"""Largest SP group: the GPUs of one node."""
DAY = 86_400
TRAINING_GRACE_S = 300
"""terminationGracePeriodSeconds of a training attempt's pods before the trainer has measured what stopping
costs (README: Preemption says where it comes from)."""
RENDEZVOUS_ENV = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "WORLD_SIZE",
    "NNODES",
    "NODE_RANK",
    "RANK",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
)
"""Set by the operator on training pods (torchrun's rendezvous); a user variable of the same name breaks it."""
POD_NAME_ENV = "LONGALIGN_POD_NAME"
"""The pod's own name (the downward API), which a teacher pod's compile cache folder is named by."""
RESERVED_ENV = (*OPERATOR_ENV, *RENDEZVOUS_ENV, "POD_INDEX", POD_NAME_ENV)
"""Every variable the operator sets on some stage pod: no stage's ``pod.env`` may name one."""
TEACHER_FLAGS = (
    "model",
    "served-model-name",
    "max-model-len",
    "tensor-parallel-size",
    "pipeline-parallel-size",
    "distributed-executor-backend",
    "port",
)
"""The vLLM flags of a teacher pod's command that the teacher's fields set (the pipeline and executor ones: a
multi-node replica's, added by ``longalign teacher-server``)."""
TEACHER_FLAG_PATTERN = "^(-tp|-pp|--(" + "|".join(f.replace("-", "[-_]") for f in TEACHER_FLAGS) + "))(=.*)?$"
"""An argument that sets one of ``TEACHER_FLAGS`` (vLLM also takes underscores and -tp/-pp), for CEL and Python."""
GPU_RESOURCE = "nvidia.com/gpu"
MOUNTS = {
    "models": "/models",
    "data": "/data",
    "checkpoints": "/checkpoints",
    "results": "/results",
    "documents": "/documents",
}
"""Where every stage container mounts the run's volumes (``storage``); every path in the spec is below one."""
VolumePath = Annotated[str, Field(min_length=2, max_length=4096, pattern=r"^/(" + "|".join(MOUNTS) + r")(/.*)?$")]
"""A path inside a stage's pod: below one of the run's mounts (a path anywhere else does not exist there)."""


class Model(BaseModel):
    """Base of every spec model: camelCase aliases, unknown fields rejected, documented fields."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", use_attribute_docstrings=True, frozen=True
    )


class SecretKeyRef(Model):
    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    """Name of a Secret in the run's namespace."""
    key: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")
    """Key inside the Secret."""


class VolumeSource(Model):
    claim_name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    """A PersistentVolumeClaim in the run's namespace."""
    sub_path: str | None = None
    """Folder inside the claim to use instead of its root."""


class EnvVar(Model):
    """An environment variable of a stage's pods (a Kubernetes EnvVar)."""

    name: str = Field(min_length=1, max_length=256, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    value: str | None = None
    """Plain text, stored in the run and its Jobs: never a secret (use valueFrom)."""
    value_from: dict[str, Any] | None = None
    """A Kubernetes EnvVarSource, e.g. {secretKeyRef: {name, key}}."""


class PodOptions(Model):
    """What users set on the pods of a stage; passed through to the pod spec unchanged."""

    resources: dict[str, dict[str, Quantity]] | None = None
    """Container resources (requests/limits) besides the GPUs the stage asks for itself."""
    node_selector: dict[str, str] | None = None
    tolerations: list[dict[str, Any]] | None = None
    affinity: dict[str, Any] | None = None
    priority_class_name: str | None = Field(default=None, max_length=253, pattern=DNS_SUBDOMAIN)
    service_account_name: str | None = Field(default=None, max_length=253, pattern=DNS_SUBDOMAIN)
    """Account the stage's pods run as; it needs no Kubernetes API rights (its token is not mounted)."""
    env: list[EnvVar] | None = Field(default=None, max_length=128)
    """Extra environment variables; not those the operator sets (``RESERVED_ENV``), and secrets
    (``SECRET_ENV``) only through ``valueFrom``."""
    labels: dict[str, Annotated[str, Field(max_length=63)]] | None = None
    """Extra labels on the stage's pods; not under ``longalign.dev/`` (the operator's own, which find the pods)."""
    annotations: dict[str, str] | None = None
    """Extra annotations on the stage's pods."""


class StageOptions(Model):
    """Knobs every stage has: on/off, retries, deadlines and its pods."""

    enabled: bool = True
    backoff_limit: int = Field(default=2, ge=0, le=100)
    """Retries of the stage after a failure before the run fails."""
    startup_deadline_seconds: int = Field(default=1800, ge=30, le=7 * DAY)
    """How long the stage's pods may stay unscheduled or unable to start (e.g. ImagePullBackOff) before
    the attempt is torn down and counted as failed."""
    active_deadline_seconds: int | None = Field(default=None, ge=60, le=90 * DAY)
    """Longest time one attempt may run."""
    stall_seconds: int = Field(default=1800, ge=60, le=7 * DAY)
    """A running stage that reports no progress for this long is marked Stalled."""
    pod: PodOptions = PodOptions()
    settings: dict[str, Any] | None = None
    """Settings of the stage command itself (its own config keys, snake_case, as the example config that
    ``longalign <stage> --help`` names shows them), merged into the stage's config file over what the operator
    derives from this spec, e.g. ``{engine: {concurrency: 8}}``; the stage refuses an unknown key when it starts
    (exit code 2)."""


class Teacher(Model):
    """The model that writes the instruction data, served by vLLM."""

    model_path: VolumePath
    """Folder of the teacher model on the models volume."""
    served_name: str = Field(default="teacher", min_length=1, max_length=253)
    replicas: int = Field(default=1, ge=1, le=64)
    gpus_per_replica: int = Field(default=8, ge=1, le=16)
    """GPUs per pod of a replica (tensor parallel)."""
    nodes_per_replica: int = Field(default=1, ge=1, le=16)
    """Pods (one per node) per replica: more than one forms a Ray cluster, pipeline parallel across the pods."""
    max_model_len: int = Field(default=65536, ge=1024, le=MAX_TOKENS)
    image: str | None = None
    """vLLM image; default: the run's image."""
    extra_args: list[Annotated[str, Field(max_length=1024)]] = Field(default_factory=list, max_length=64)
    """More vLLM server arguments, after the operator's own, e.g. ``["--gpu-memory-utilization", "0.85"]`` or
    ``["--enforce-eager"]`` (no torch.compile and CUDA graphs: a faster start, slower tokens); not the flags the
    fields above set: --model, --served-model-name, --max-model-len, --tensor-parallel-size, --port and, for a
    multi-node replica, --pipeline-parallel-size and --distributed-executor-backend."""


class ShortDataMix(Model):
    path: VolumePath
    """JSONL of short general chat data on the data volume."""
    ratio: float = Field(gt=0, le=10)
    """Short samples per long sample."""


class DataGeneration(StageOptions):
    teacher: Teacher | None = None
    documents_path: VolumePath = "/documents"
    """Folder of long documents (.txt, .md, .jsonl, .parquet) on the documents volume."""
    task_types: list[Literal["general", "summary", "reasoning", "extraction", "comparison", "code"]] = Field(
        default=["general", "summary", "reasoning", "extraction"], min_length=1, max_length=6
    )
    samples_per_document: int = Field(default=1, ge=1, le=20)
    min_document_tokens: int = Field(default=8192, ge=1, le=MAX_TOKENS)
    max_document_tokens: int = Field(default=65536, ge=1, le=MAX_TOKENS)
    short_data: ShortDataMix | None = None

    def required_teacher(self) -> Teacher:
        """The teacher, which ``parse`` requires whenever data generation is enabled."""
        if self.teacher is None:
            raise ValueError("spec.dataGeneration.teacher: required when dataGeneration is enabled")
        return self.teacher


class DeepSpeed(Model):
    zero_stage: Literal[1, 2, 3] | None = None
    """Unset: the trainer takes the fastest stage its memory estimate fits (ZeRO-2 before ZeRO-3), and
    status.results.zeroStage says which."""
    offload_optimizer: bool = False
    offload_params: bool = False
    """Only with ZeRO stage 3."""


class Optimizer(Model):
    learning_rate: float = Field(default=2e-5, gt=0, le=1)
    weight_decay: float = Field(default=0.0, ge=0, le=1)
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)


class Training(StageOptions):
    dataset_path: VolumePath | None = None
    """Bring your own LongAlign JSONL (on the data volume) instead of generating it."""
    nodes: int = Field(default=1, ge=1, le=512)
    gpus_per_node: int = Field(default=8, ge=1, le=16)
    deepspeed: DeepSpeed = DeepSpeed()
    sequence_parallel_size: int = Field(default=1, ge=1, le=MAX_SEQUENCE_PARALLEL)
    """Sequence parallelism: each pack is split along the sequence over this many GPUs of a node (data
    parallelism over the rest); must divide gpusPerNode. Attention runs as Ulysses (an all-to-all of heads)
    where the size divides the model's attention and key/value heads, else with all-gathered keys and values
    (any head count; the trainer's setting sequence_parallel_attention, in settings, can force either).
    maxTokensPerPack may grow with it: at most 1048576 tokens per GPU of the group."""
    max_tokens_per_pack: int = Field(default=65536, ge=128, le=MAX_TOKENS * MAX_SEQUENCE_PARALLEL, multiple_of=128)
    """Tokens per pack, a multiple of 128: at most 1048576 × sequenceParallelSize."""
    batching: Literal["packing", "sorted", "naive"] = "packing"
    """packing: sequences packed up to maxTokensPerPack; sorted: batches of similar length; naive: padded."""
    loss_weighting: bool = True
    """LongAlign's loss weighting: every sequence counts equally, however it was packed."""
    global_batch_size: int = Field(default=8, ge=1, le=65536)
    """Sequences per optimiser step."""
    epochs: int = Field(default=2, ge=1, le=100)
    optimizer: Optimizer = Optimizer()
    gradient_checkpointing: bool = True
    checkpoint_every_steps: int = Field(default=100, ge=1, le=1_000_000)
    termination_grace_period_seconds: int | None = Field(default=None, ge=30, le=DAY)
    """How long a training pod asked to stop (Kueue preempting it, a node drained) has to write its checkpoint
    of the current step before it is killed: the trainer checkpoints on SIGTERM. Unset: 300 s until the trainer
    has measured its slowest step and checkpoint, then twice their sum plus 30 s for each later attempt
    (README: Preemption); a longer one delays whoever preempted the run."""


class JudgeOptions(Model):
    endpoint: str = Field(pattern=r"^https?://")
    """OpenAI-compatible base URL of the judge, e.g. https://api.openai.com/v1."""
    model: str = Field(min_length=1)
    api_key_secret_ref: SecretKeyRef | None = None
    """Secret holding the judge's API key; never put the key itself in the spec."""


class LongBenchChat(Model):
    path: VolumePath
    """The cases on the data volume: the published test_cases.json (a JSON list) or JSONL (idx, prompt, query,
    answer)."""
    few_shot_path: VolumePath | None = None
    """few_shots.json: 3 scored example answers per case."""
    judge_prompt: Literal["published", "ours"] = "published"
    """published: LongBench-Chat's own judge prompt, used exactly as THUDM/LongAlign's LongBench_Chat/eval.py
    does (needs promptPath and fewShotPath; scores compare with the paper's); ours: this project's rewording."""
    prompt_path: VolumePath | None = None
    """prompt_fs.txt of THUDM/LongAlign's LongBench_Chat/ (bring it: it is not shipped)."""


class Needle(Model):
    context_lengths: list[Annotated[int, Field(ge=1, le=MAX_TOKENS)]] = Field(
        default=[1000, 8000, 16000, 32000, 60000], min_length=1, max_length=64
    )
    depths_percent: list[Annotated[int, Field(ge=0, le=100)]] = Field(
        default=[10, 30, 50, 70, 90], min_length=1, max_length=101
    )


class Evaluation(StageOptions):
    checkpoint_path: VolumePath | None = None
    """Evaluate this existing checkpoint (on the checkpoints volume) instead of the one training produces."""
    gpus: int = Field(default=1, ge=1, le=16)
    long_bench_chat: LongBenchChat | None = None
    needle: Needle | None = None
    judge: JudgeOptions | None = None


class Storage(Model):
    models: VolumeSource
    """Holds the base model (and the teacher)."""
    data: VolumeSource
    """Generated and provided datasets, benchmarks."""
    checkpoints: VolumeSource
    results: VolumeSource | None = None
    """Evaluation results; default: the checkpoints volume."""
    documents: VolumeSource | None = None
    """Long documents for data generation; default: the data volume."""

    def mounts(self) -> dict[str, VolumeSource]:
        """The claim (and sub-path) behind each of the pods' mounts, defaults applied."""
        return {
            "models": self.models,
            "data": self.data,
            "checkpoints": self.checkpoints,
            "results": self.results or self.checkpoints,
            "documents": self.documents or self.data,
        }


class LongAlignRunSpec(Model):
    """A LongAlign run: generate long instruction data, train on it, evaluate the result."""

    base_model_path: VolumePath
    """Folder of the model to align, on the models volume."""
    image: str = Field(min_length=1)
    """The trainer image that runs every stage."""
    image_pull_secrets: list[Annotated[str, Field(max_length=253, pattern=DNS_SUBDOMAIN)]] | None = Field(
        default=None, max_length=16
    )
    storage: Storage
    data_generation: DataGeneration = DataGeneration(enabled=False)
    training: Training = Training()
    evaluation: Evaluation = Evaluation(enabled=False)
    workload_priority_class: str | None = Field(default=None, max_length=253, pattern=DNS_SUBDOMAIN)
    """Kueue's WorkloadPriorityClass for the run's Jobs (label kueue.x-k8s.io/priority-class): within a queue, a
    higher priority is admitted first and may preempt lower ones. Takes effect with the run's label
    kueue.x-k8s.io/queue-name."""
    suspend: bool = False
    """Stop the active stage's pods (releasing their GPUs); set back to false to continue from the last checkpoint."""
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0, le=365 * DAY)
    """Delete the finished run (and everything it made) this long after it succeeded or failed."""


def _has(path: str) -> str:
    """CEL that is true when every step of ``path`` (dotted, below spec) is set."""
    parts = path.split(".")
    return " && ".join("has(self." + ".".join(parts[: i + 1]) + ")" for i in range(len(parts)))


def _stage_on(stage: str, default_present: bool) -> str:
    """CEL for 'this stage is enabled', applying the model's defaults to absent fields."""
    enabled = f"(!has(self.{stage}.enabled) || self.{stage}.enabled)"
    return f"(!has(self.{stage}) || {enabled})" if default_present else f"(has(self.{stage}) && {enabled})"


STAGE_ATTRS = {"dataGeneration": "data_generation", "training": "training", "evaluation": "evaluation"}
DATAGEN_ON = _stage_on("dataGeneration", default_present=False)
TRAINING_ON = _stage_on("training", default_present=True)
EVALUATION_ON = _stage_on("evaluation", default_present=False)


@dataclass(frozen=True)
class Rule:
    """A cross-field rule: enforced by the apiserver through ``cel`` and by ``validate()`` through ``check``."""

    field: str
    """camelCase path, below spec, of the field the message is about ("" for the spec itself)."""
    cel: str
    message: str
    check: Callable[[LongAlignRunSpec], bool]


RULES: list[Rule] = [
    Rule(
        "",
        f"{DATAGEN_ON} || {TRAINING_ON} || {EVALUATION_ON}",
        "at least one of dataGeneration, training and evaluation must be enabled",
        lambda s: s.data_generation.enabled or s.training.enabled or s.evaluation.enabled,
    ),
    Rule(
        "dataGeneration.teacher",
        f"!{DATAGEN_ON} || {_has('dataGeneration.teacher')}",
        "required when dataGeneration is enabled: the model (on the models volume) that writes the data",
        lambda s: not s.data_generation.enabled or s.data_generation.teacher is not None,
    ),
    Rule(
        "dataGeneration.teacher.extraArgs",
        f"!({_has('dataGeneration.teacher.extraArgs')})"
        f" || self.dataGeneration.teacher.extraArgs.all(a, !a.matches('{TEACHER_FLAG_PATTERN}'))",
        "must not set --" + ", --".join(TEACHER_FLAGS) + ": the operator sets them from the teacher's modelPath, "
        "servedName, maxModelLen, gpusPerReplica and nodesPerReplica (set those instead)",
        lambda s: (
            (t := s.data_generation.teacher) is None or not any(re.match(TEACHER_FLAG_PATTERN, a) for a in t.extra_args)
        ),
    ),
    Rule(
        "dataGeneration.maxDocumentTokens",
        f"!({_has('dataGeneration.minDocumentTokens')}) || !({_has('dataGeneration.maxDocumentTokens')})"
        " || self.dataGeneration.minDocumentTokens <= self.dataGeneration.maxDocumentTokens",
        "must be at least minDocumentTokens",
        lambda s: s.data_generation.min_document_tokens <= s.data_generation.max_document_tokens,
    ),
    Rule(
        "training.datasetPath",
        f"!{TRAINING_ON} || {DATAGEN_ON} || ({_has('training.datasetPath')})",
        "required when training is enabled and dataGeneration is not: bring a LongAlign JSONL on the data "
        "volume, or enable dataGeneration",
        lambda s: not s.training.enabled or s.data_generation.enabled or s.training.dataset_path is not None,
    ),
    Rule(
        "training.datasetPath",
        f"!({DATAGEN_ON} && {TRAINING_ON} && {_has('training.datasetPath')})",
        "must not be set when dataGeneration is enabled: training reads the data generation writes "
        "(/data/<run>/data.jsonl); disable dataGeneration to train on your own file",
        lambda s: not (s.data_generation.enabled and s.training.enabled and s.training.dataset_path is not None),
    ),
    Rule(
        "training.sequenceParallelSize",
        f"!({_has('training.sequenceParallelSize')})"
        " || (has(self.training.gpusPerNode) ? self.training.gpusPerNode : 8)"
        " % self.training.sequenceParallelSize == 0",
        "must divide gpusPerNode: sequence parallelism stays inside a node (its all-to-all runs every layer)",
        lambda s: s.training.gpus_per_node % s.training.sequence_parallel_size == 0,
    ),
    Rule(
        "training.maxTokensPerPack",
        f"!({_has('training.maxTokensPerPack')}) || self.training.maxTokensPerPack <= {MAX_TOKENS}"
        " * (has(self.training.sequenceParallelSize) ? self.training.sequenceParallelSize : 1)",
        f"must be at most {MAX_TOKENS} × sequenceParallelSize ({MAX_TOKENS} tokens per GPU of a pack's group); "
        "raise sequenceParallelSize for longer packs",
        lambda s: s.training.max_tokens_per_pack <= MAX_TOKENS * s.training.sequence_parallel_size,
    ),
    Rule(
        "training.deepspeed.offloadParams",
        f"!({_has('training.deepspeed.offloadParams')}) || !self.training.deepspeed.offloadParams"
        " || (has(self.training.deepspeed.zeroStage) && self.training.deepspeed.zeroStage == 3)"
        " || !has(self.training.deepspeed.zeroStage)",
        "needs zeroStage 3 (only ZeRO-3 partitions parameters)",
        lambda s: not s.training.deepspeed.offload_params or s.training.deepspeed.zero_stage in (3, None),
    ),
    Rule(
        "evaluation.checkpointPath",
        f"!{EVALUATION_ON} || {TRAINING_ON} || ({_has('evaluation.checkpointPath')})",
        "required when evaluation is enabled and training is not: the checkpoint to evaluate",
        lambda s: not s.evaluation.enabled or s.training.enabled or s.evaluation.checkpoint_path is not None,
    ),
    Rule(
        "evaluation.checkpointPath",
        f"!({TRAINING_ON} && {EVALUATION_ON} && {_has('evaluation.checkpointPath')})",
        "must not be set when training is enabled: evaluation evaluates the model training exports "
        "(/checkpoints/<run>/model); disable training to evaluate an existing checkpoint",
        lambda s: not (s.training.enabled and s.evaluation.enabled and s.evaluation.checkpoint_path is not None),
    ),
    Rule(
        "evaluation",
        f"!{EVALUATION_ON} || has(self.evaluation.longBenchChat) || has(self.evaluation.needle)",
        "needs a benchmark when enabled: set longBenchChat and/or needle",
        lambda s: (
            not s.evaluation.enabled or s.evaluation.long_bench_chat is not None or s.evaluation.needle is not None
        ),
    ),
    Rule(
        "evaluation.longBenchChat.promptPath",
        f"!{EVALUATION_ON} || !has(self.evaluation.longBenchChat)"
        " || (has(self.evaluation.longBenchChat.judgePrompt) && self.evaluation.longBenchChat.judgePrompt == 'ours')"
        " || (has(self.evaluation.longBenchChat.promptPath) && has(self.evaluation.longBenchChat.fewShotPath))",
        "the published judge prompt needs promptPath (LongBench_Chat's prompt_fs.txt) and fewShotPath "
        "(its few_shots.json) on the data volume; or set judgePrompt: ours",
        lambda s: (
            not s.evaluation.enabled
            or (lbc := s.evaluation.long_bench_chat) is None
            or lbc.judge_prompt == "ours"
            or (lbc.prompt_path is not None and lbc.few_shot_path is not None)
        ),
    ),
    Rule(
        "evaluation.judge",
        f"!{EVALUATION_ON} || !has(self.evaluation.longBenchChat)"
        " || (has(self.evaluation.judge) && has(self.evaluation.judge.apiKeySecretRef))",
        "longBenchChat needs a judge with apiKeySecretRef (the judge's API key comes from a Secret)",
        lambda s: (
            not s.evaluation.enabled
            or s.evaluation.long_bench_chat is None
            or (s.evaluation.judge is not None and s.evaluation.judge.api_key_secret_ref is not None)
        ),
    ),
]


def _cel_list(names: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{n}'" for n in names) + "]"


def _pod_rules(stage: str, attr: str) -> list[Rule]:
    """Rules on one stage's pod options: no variable the operator sets, no secret in plain text, no GPUs (the
    stage's own fields size those)."""
    env, resources = f"{stage}.pod.env", f"{stage}.pod.resources"

    def env_of(s: LongAlignRunSpec) -> list[EnvVar]:
        return getattr(s, attr).pod.env or []

    def resources_of(s: LongAlignRunSpec) -> dict[str, dict[str, Quantity]]:
        return getattr(s, attr).pod.resources or {}

    gpus = {
        "dataGeneration": "dataGeneration.teacher.gpusPerReplica",
        "training": "training.gpusPerNode",
        "evaluation": "evaluation.gpus",
    }[stage]
    labels = f"{stage}.pod.labels"
    return [
        Rule(
            labels,
            f"!({_has(labels)}) || self.{labels}.all(k, !k.startsWith('{GROUP}/'))",
            f"must not use the prefix {GROUP}/: the operator's own labels find the stage's pods",
            lambda s: all(not k.startswith(f"{GROUP}/") for k in getattr(s, attr).pod.labels or {}),
        ),
        Rule(
            env,
            f"!({_has(env)}) || self.{env}.all(e, !(e.name in {_cel_list(RESERVED_ENV)}))",
            f"must not set {', '.join(RESERVED_ENV)}: the operator sets them (the stage contract, torchrun's "
            "rendezvous, a teacher pod's index and name)",
            lambda s: all(e.name not in RESERVED_ENV for e in env_of(s)),
        ),
        Rule(
            env,
            f"!({_has(env)}) || self.{env}.all(e, !(e.name in {_cel_list(SECRET_ENV)}) || !has(e.value))",
            f"{' and '.join(SECRET_ENV)} hold secrets: set them with valueFrom.secretKeyRef, never as value "
            "(the spec is stored in plain text)",
            lambda s: all(e.name not in SECRET_ENV or e.value is None for e in env_of(s)),
        ),
        Rule(
            resources,
            f"!({_has(resources)}) || self.{resources}.all(k, !('{GPU_RESOURCE}' in self.{resources}[k]))",
            f"must not ask for {GPU_RESOURCE}: {gpus} sets the stage's GPUs",
            lambda s: all(GPU_RESOURCE not in amounts for amounts in resources_of(s).values()),
        ),
    ]


RULES += [rule for stage, attr in STAGE_ATTRS.items() for rule in _pod_rules(stage, attr)]


class SpecError(ValueError):
    """An invalid spec; ``problems`` lists (field path, message) pairs, each naming the field to fix."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{path}: {msg}" for path, msg in problems))


def parse(spec: dict[str, Any]) -> LongAlignRunSpec:
    """Validate a spec (camelCase dict, as in the resource) and return the typed model, or raise SpecError."""
    try:
        model = LongAlignRunSpec.model_validate(spec)
    except ValidationError as e:
        raise SpecError([(_path(err["loc"]), err["msg"]) for err in e.errors()]) from None
    problems = [(".".join(["spec", rule.field]).rstrip("."), rule.message) for rule in RULES if not rule.check(model)]
    if problems:
        raise SpecError(problems)
    return model


def _path(loc: tuple[str | int, ...]) -> str:
    """A pydantic error location as the resource's field path, e.g. spec.training.nodes or spec.x[2]."""
    out = "spec"
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out
