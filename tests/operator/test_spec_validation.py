"""Impossible specs are refused, naming the field to fix: by the apiserver at `kubectl apply` (schema + CEL),
and identically by the operator's own model (what `longalign run` uses without a cluster)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from longalign_operator import crd
from longalign_operator.builders import run_name_limit
from longalign_operator.spec import SpecError, parse

REPO = Path(__file__).resolve().parents[2]

VALID = {
    "image": "ghcr.io/example/longalign-trainer:0.1.0",
    "baseModelPath": "/models/llama-8b",
    "storage": {
        "models": {"claimName": "models"},
        "data": {"claimName": "data"},
        "checkpoints": {"claimName": "checkpoints"},
    },
    "training": {"datasetPath": "/data/longalign-10k.jsonl"},
}
TEACHER = {"modelPath": "/models/teacher-70b"}
JUDGE = {
    "endpoint": "https://api.openai.com/v1",
    "model": "gpt-4o",
    "apiKeySecretRef": {"name": "judge", "key": "api-key"},
}


def spec_with(**changes) -> dict:
    """VALID with top-level keys replaced (None deletes the key)."""
    spec = copy.deepcopy(VALID)
    for key, value in changes.items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    return spec


# (case id, spec, field path the error must name)
BAD_SPECS = [
    ("no-image", spec_with(image=None), "spec.image"),
    (
        "no-storage-for-checkpoints",
        spec_with(storage={"models": {"claimName": "m"}, "data": {"claimName": "d"}}),
        "spec.storage.checkpoints",
    ),
    (
        "empty-claim-name",
        spec_with(storage={**VALID["storage"], "data": {"claimName": ""}}),
        "spec.storage.data.claimName",
    ),
    ("zero-nodes", spec_with(training={**VALID["training"], "nodes": 0}), "spec.training.nodes"),
    ("zero-gpus-per-node", spec_with(training={**VALID["training"], "gpusPerNode": 0}), "spec.training.gpusPerNode"),
    (
        "unknown-zero-stage",
        spec_with(training={**VALID["training"], "deepspeed": {"zeroStage": 4}}),
        "spec.training.deepspeed.zeroStage",
    ),
    (
        "pack-not-multiple-of-128",
        spec_with(training={**VALID["training"], "maxTokensPerPack": 65000}),
        "spec.training.maxTokensPerPack",
    ),
    ("unknown-batching", spec_with(training={**VALID["training"], "batching": "bucketed"}), "spec.training.batching"),
    (
        "negative-learning-rate",
        spec_with(training={**VALID["training"], "optimizer": {"learningRate": -1e-5}}),
        "spec.training.optimizer.learningRate",
    ),
    (
        "offload-params-without-zero3",
        spec_with(training={**VALID["training"], "deepspeed": {"zeroStage": 2, "offloadParams": True}}),
        "spec.training.deepspeed.offloadParams",
    ),
    ("training-without-data", spec_with(training={"nodes": 2}), "spec.training.datasetPath"),
    ("nothing-enabled", spec_with(training={"enabled": False}), "spec"),
    ("datagen-without-teacher", spec_with(dataGeneration={"enabled": True}), "spec.dataGeneration.teacher"),
    (
        "teacher-without-gpus",
        spec_with(dataGeneration={"teacher": {**TEACHER, "gpusPerReplica": 0}}),
        "spec.dataGeneration.teacher.gpusPerReplica",
    ),
    (
        "unknown-task-type",
        spec_with(dataGeneration={"teacher": TEACHER, "taskTypes": ["poetry"]}),
        "spec.dataGeneration.taskTypes[0]",
    ),
    (
        "document-range-inverted",
        spec_with(dataGeneration={"teacher": TEACHER, "minDocumentTokens": 64000, "maxDocumentTokens": 8000}),
        "spec.dataGeneration.maxDocumentTokens",
    ),
    ("eval-without-benchmark", spec_with(evaluation={"judge": JUDGE}), "spec.evaluation"),
    (
        "longbench-without-judge-secret",
        spec_with(
            evaluation={
                "longBenchChat": {"path": "/data/lbc.jsonl"},
                "judge": {"endpoint": "https://judge.example/v1", "model": "judge"},
            }
        ),
        "spec.evaluation.judge",
    ),
    (
        "judge-endpoint-not-a-url",
        spec_with(
            evaluation={"longBenchChat": {"path": "/data/lbc.jsonl"}, "judge": {**JUDGE, "endpoint": "judge:8000"}}
        ),
        "spec.evaluation.judge.endpoint",
    ),
    (
        "eval-only-without-checkpoint",
        spec_with(training={"enabled": False}, evaluation={"needle": {}}),
        "spec.evaluation.checkpointPath",
    ),
    ("negative-backoff", spec_with(training={**VALID["training"], "backoffLimit": -1}), "spec.training.backoffLimit"),
    ("negative-ttl", spec_with(ttlSecondsAfterFinished=-5), "spec.ttlSecondsAfterFinished"),
    ("unknown-field", spec_with(training={**VALID["training"], "learningRate": 1e-5}), "spec.training.learningRate"),
]


def training_with(**fields) -> dict:
    return spec_with(training={**VALID["training"], **fields})


def pod(**options) -> dict:
    return {"pod": options}


RESERVED = (
    "must not set LONGALIGN_TERMINATION_MESSAGE_PATH, LONGALIGN_TEACHER_URL, LONGALIGN_JUDGE_API_KEY, "
    "MASTER_ADDR, MASTER_PORT, WORLD_SIZE, NNODES, NODE_RANK, RANK, LOCAL_RANK, LOCAL_WORLD_SIZE, POD_INDEX, "
    "LONGALIGN_POD_NAME: the operator sets them (the stage contract, torchrun's rendezvous, a teacher pod's index "
    "and name)"
)
SECRET = (
    "LONGALIGN_JUDGE_API_KEY and OPENAI_API_KEY hold secrets: set them with valueFrom.secretKeyRef, never as "
    "value (the spec is stored in plain text)"
)
FROM_SECRET = {"secretKeyRef": {"name": "teacher", "key": "api-key"}}
# (case id, spec, field path, what the message must say): the same words from the model and from kubectl.
REFUSED_SAYING = [
    (
        "generated-and-own-dataset",
        spec_with(dataGeneration={"teacher": TEACHER}),
        "spec.training.datasetPath",
        (
            "must not be set when dataGeneration is enabled: training reads the data generation writes "
            "(/data/<run>/data.jsonl); disable dataGeneration to train on your own file"
        ),
    ),
    (
        "trained-and-own-checkpoint",
        spec_with(evaluation={"checkpointPath": "/checkpoints/x", "needle": {}}),
        "spec.evaluation.checkpointPath",
        (
            "must not be set when training is enabled: evaluation evaluates the model "
            "training exports (/checkpoints/<run>/model); disable training to evaluate an existing checkpoint"
        ),
    ),
    (
        "pack-no-gpu-group-holds",
        training_with(maxTokensPerPack=1_000_000_000),
        "spec.training.maxTokensPerPack",
        "less than or equal to 16777216",
    ),
    (
        "pack-longer-than-its-sp-group-holds",
        training_with(maxTokensPerPack=2_097_152 + 128, sequenceParallelSize=2),
        "spec.training.maxTokensPerPack",
        "must be at most 1048576 × sequenceParallelSize (1048576 tokens per GPU of a pack's group); raise "
        "sequenceParallelSize for longer packs",
    ),
    (
        "sp-group-across-nodes",
        training_with(gpusPerNode=8, sequenceParallelSize=3),
        "spec.training.sequenceParallelSize",
        "must divide gpusPerNode: sequence parallelism stays inside a node",
    ),
    (
        "sp-group-larger-than-the-default-node",
        training_with(sequenceParallelSize=16),
        "spec.training.sequenceParallelSize",
        "must divide gpusPerNode",
    ),
    (
        "teacher-context-no-gpu-holds",
        spec_with(training={}, dataGeneration={"teacher": {**TEACHER, "maxModelLen": 4_194_304}}),
        "spec.dataGeneration.teacher.maxModelLen",
        "less than or equal to 1048576",
    ),
    (
        "needle-context-no-gpu-holds",
        spec_with(evaluation={"needle": {"contextLengths": [8000, 10**9]}}),
        "spec.evaluation.needle.contextLengths[1]",
        "less than or equal to 1048576",
    ),
    (
        "batch-of-millions",
        training_with(globalBatchSize=10**7),
        "spec.training.globalBatchSize",
        "less than or equal to 65536",
    ),
    (
        "startup-deadline-of-years",
        training_with(startupDeadlineSeconds=10**9),
        "spec.training.startupDeadlineSeconds",
        "less than or equal to 604800",
    ),
    (
        "ttl-of-decades",
        spec_with(ttlSecondsAfterFinished=10**9),
        "spec.ttlSecondsAfterFinished",
        "less than or equal to 31536000",
    ),
    (
        "rendezvous-env-overridden",
        training_with(**pod(env=[{"name": "MASTER_ADDR", "value": "elsewhere"}])),
        "spec.training.pod.env",
        RESERVED,
    ),
    (
        "judge-key-overriding-the-secret",
        spec_with(
            evaluation={"needle": {}, **pod(env=[{"name": "LONGALIGN_JUDGE_API_KEY", "valueFrom": FROM_SECRET}])}
        ),
        "spec.evaluation.pod.env",
        RESERVED,
    ),
    (
        "teacher-key-in-plain-text",
        spec_with(
            training={}, dataGeneration={"teacher": TEACHER, **pod(env=[{"name": "OPENAI_API_KEY", "value": "sk-123"}])}
        ),
        "spec.dataGeneration.pod.env",
        SECRET,
    ),
    (
        "gpus-through-resources",
        training_with(**pod(resources={"limits": {"nvidia.com/gpu": 4}})),
        "spec.training.pod.resources",
        "must not ask for nvidia.com/gpu: training.gpusPerNode sets the stage's GPUs",
    ),
    (
        "claim-name-not-a-name",
        spec_with(storage={**VALID["storage"], "data": {"claimName": "Team_A data"}}),
        "spec.storage.data.claimName",
        "should match",
    ),
    (
        "path-outside-the-mounts",
        training_with(datasetPath="/mnt/nfs/longalign.jsonl"),
        "spec.training.datasetPath",
        "'^/(models|data|checkpoints|results|documents)(/.*)?$'",
    ),
    (
        "relative-model-path",
        spec_with(baseModelPath="llama-8b"),
        "spec.baseModelPath",
        "'^/(models|data|checkpoints|results|documents)(/.*)?$'",
    ),
    (
        "published-judge-without-its-prompt",
        spec_with(
            training={"enabled": False},
            evaluation={
                "checkpointPath": "/checkpoints/final",
                "longBenchChat": {"path": "/data/lbc/test_cases.json"},
                "judge": JUDGE,
            },
        ),
        "spec.evaluation.longBenchChat.promptPath",
        (
            "the published judge prompt needs promptPath (LongBench_Chat's prompt_fs.txt) and fewShotPath (its "
            "few_shots.json) on the data volume; or set judgePrompt: ours"
        ),
    ),
    (
        "teacher-arg-of-the-operators-own",
        spec_with(training={}, dataGeneration={"teacher": {**TEACHER, "extraArgs": ["--enforce-eager", "-tp=4"]}}),
        "spec.dataGeneration.teacher.extraArgs",
        "must not set --model, --served-model-name, --max-model-len, --tensor-parallel-size, --pipeline-parallel-size, "
        "--distributed-executor-backend, --port: the operator sets them from the teacher's modelPath, servedName, "
        "maxModelLen, gpusPerReplica and nodesPerReplica (set those instead)",
    ),
    (
        "teacher-context-through-an-arg",
        spec_with(training={}, dataGeneration={"teacher": {**TEACHER, "extraArgs": ["--max_model_len", "8192"]}}),
        "spec.dataGeneration.teacher.extraArgs",
        "the operator sets them from the teacher's modelPath",
    ),
    (
        "label-of-the-operators-own",
        training_with(**pod(labels={"longalign.dev/run": "other"})),
        "spec.training.pod.labels",
        ("must not use the prefix longalign.dev/: the operator's own labels find the stage's pods"),
    ),
]

GOOD_SPECS = [
    ("byo-dataset-training-only", VALID),
    (
        "full-pipeline",
        spec_with(
            training={},
            dataGeneration={"teacher": {**TEACHER, "replicas": 2}},
            evaluation={
                "longBenchChat": {
                    "path": "/data/lbc/test_cases.json",
                    "fewShotPath": "/data/lbc/few_shots.json",
                    "promptPath": "/data/lbc/prompt_fs.txt",
                },
                "needle": {},
                "judge": JUDGE,
            },
        ),
    ),
    (
        "our-judge-prompt",
        spec_with(
            training={"enabled": False},
            evaluation={
                "checkpointPath": "/checkpoints/final",
                "longBenchChat": {"path": "/data/lbc.jsonl", "judgePrompt": "ours"},
                "judge": JUDGE,
            },
        ),
    ),
    (
        "evaluate-existing-checkpoint",
        spec_with(training={"enabled": False}, evaluation={"checkpointPath": "/checkpoints/final", "needle": {}}),
    ),
    (
        "teacher-with-more-vllm-args",
        spec_with(
            training={},
            dataGeneration={
                "teacher": {
                    **TEACHER,
                    "extraArgs": [
                        "--enforce-eager",
                        "--model-impl",
                        "transformers",
                        "--gpu-memory-utilization",
                        "0.85",
                    ],
                }
            },
        ),
    ),
    ("zero3-offload", spec_with(training={**VALID["training"], "deepspeed": {"offloadParams": True}})),
    ("two-million-tokens-over-2-gpus", training_with(maxTokensPerPack=2_097_152, sequenceParallelSize=2)),
    ("sp-16-on-a-16-gpu-node", training_with(gpusPerNode=16, sequenceParallelSize=16)),
    (
        "teacher-key-from-a-secret",
        spec_with(
            training={},
            dataGeneration={
                "teacher": TEACHER,
                **pod(
                    env=[{"name": "OPENAI_API_KEY", "valueFrom": FROM_SECRET}, {"name": "HF_HUB_OFFLINE", "value": "1"}]
                ),
            },
        ),
    ),
]


def lar(name: str, spec: dict) -> dict:
    return {"apiVersion": "longalign.dev/v1alpha1", "kind": "LongAlignRun", "metadata": {"name": name}, "spec": spec}


@pytest.mark.parametrize("case, spec, field", BAD_SPECS, ids=[c[0] for c in BAD_SPECS])
def test_the_model_refuses_a_bad_spec_naming_the_field(case, spec, field):
    with pytest.raises(SpecError) as e:
        parse(spec)
    assert field in [path for path, _ in e.value.problems], e.value.problems


@pytest.mark.parametrize("case, spec, field, message", REFUSED_SAYING, ids=[c[0] for c in REFUSED_SAYING])
def test_the_model_refuses_a_bad_spec_naming_the_field_and_the_limit(case, spec, field, message):
    with pytest.raises(SpecError) as e:
        parse(spec)
    assert any(path == field and message in text for path, text in e.value.problems), e.value.problems


@pytest.mark.parametrize("case, spec", GOOD_SPECS, ids=[c[0] for c in GOOD_SPECS])
def test_the_model_accepts_good_specs(case, spec):
    parse(spec)


def test_the_shipped_crd_is_generated_from_the_models():
    shipped = (REPO / "manifests" / "crd" / "longalignruns.yaml").read_text()
    assert shipped == crd.render(), "regenerate: python -m longalign_operator.crd > manifests/crd/longalignruns.yaml"


def test_the_charts_crd_is_generated_from_the_models():
    shipped = (REPO / "charts" / "longalign-operator" / "templates" / "crd.yaml").read_text()
    assert shipped == crd.render_helm(), (
        "regenerate: python -m longalign_operator.crd --helm > charts/longalign-operator/templates/crd.yaml"
    )


@pytest.fixture(scope="module")
def crd_installed(cluster):
    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "manifests" / "crd" / "longalignruns.yaml"))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd/longalignruns.longalign.dev")
    return cluster


@pytest.mark.cluster
def test_kubectl_apply_refuses_every_bad_spec_naming_the_field(crd_installed, namespace):
    for case, spec, field in BAD_SPECS:
        out = crd_installed.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(lar(case, spec)), check=False)
        assert out.returncode != 0, f"{case}: accepted by the apiserver"
        # kubectl names the field either "spec.x.y: Invalid value" or 'unknown field "spec.x.y"'.
        assert f"{field}:" in out.stderr or f'"{field}"' in out.stderr, f"{case}: {out.stderr}"


@pytest.mark.cluster
def test_kubectl_apply_refuses_each_bad_spec_saying_why(crd_installed, namespace):
    for case, spec, field, message in REFUSED_SAYING:
        out = crd_installed.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(lar(case, spec)), check=False)
        assert out.returncode != 0, f"{case}: accepted by the apiserver"
        line = next((text for text in out.stderr.split(f"{field}:")[1:] if message in text.split(", spec.")[0]), None)
        assert line is not None, f"{case}: {out.stderr}"


@pytest.mark.cluster
def test_kubectl_apply_refuses_run_names_whose_children_cannot_exist(crd_installed, namespace):
    limit, what, _ = run_name_limit()
    full = spec_with(training={}, dataGeneration={"teacher": TEACHER}, evaluation={"needle": {}})
    out = crd_installed.kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(lar("a" * limit, full))
    )
    assert "created (server dry run)" in out.stdout
    for name, message in [
        (
            "a" * (limit + 1),
            (f"must be at most {limit} characters: the longest name made from it, the {what}, must fit in 63"),
        ),
        (
            "run.v2",
            (
                "must start with a lowercase letter and hold only lowercase letters, digits and '-' (it names "
                "the run's Services)"
            ),
        ),
    ]:
        out = crd_installed.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(lar(name, full)), check=False)
        assert out.returncode != 0 and "metadata.name: Invalid value: " in out.stderr, out.stderr
        assert message in out.stderr, out.stderr


@pytest.mark.cluster
def test_kubectl_apply_accepts_good_specs_and_get_shows_the_columns(crd_installed, namespace):
    for case, spec in GOOD_SPECS:
        crd_installed.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(lar(case, spec)))
    table = crd_installed.kubectl("get", "lar", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "STAGE", "ATTEMPT", "PROGRESS", "ETA", "LOSS", "SCORE", "AGE"]
    assert sorted(line.split()[0] for line in table[1:]) == sorted(c for c, _ in GOOD_SPECS)


@pytest.mark.cluster
@pytest.mark.parametrize("example", sorted((REPO / "manifests" / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_example_is_accepted_by_the_apiserver(crd_installed, namespace, example):
    out = crd_installed.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(example))
    assert "created (server dry run)" in out.stdout
    parse(yaml.safe_load(example.read_text())["spec"])
