"""The operator drives runs on the real control plane; KWOK plays the pods, and each pod's termination message
carries the summary a real stage would write."""

from __future__ import annotations

import json
import urllib.request
from collections import Counter

import pytest
from runs import apply_run, events, run_status, wait_phase

from localcluster import LocalCluster, wait_for
from longalign_operator.builders import run_name_limit

pytestmark = pytest.mark.cluster

SUMMARY = "sim.longalign.dev/termination-message"
OUTCOME = "sim.longalign.dev/outcome"
DURATION = "sim.longalign.dev/run-duration"
BASE = {
    "image": "ghcr.io/example/longalign-trainer:0.1.0",
    "baseModelPath": "/models/llama-8b",
    "storage": {
        "models": {"claimName": "models"},
        "data": {"claimName": "data"},
        "checkpoints": {"claimName": "checkpoints"},
    },
}
TRAIN_SUMMARY = {
    "stage": "train",
    "ok": True,
    "final_loss": 1.23,
    "tokens_per_s": 35100.0,
    "export": "/checkpoints/r/model",
    "steps": 40,
}


def training(dataset: bool = True, **pod) -> dict:
    """Training on 2 nodes x 8 GPUs, on its own dataset unless ``dataset`` is False (data generation feeds it)."""
    return {
        **({"datasetPath": "/data/longalign-10k.jsonl"} if dataset else {}),
        "nodes": 2,
        "gpusPerNode": 8,
        "pod": {"annotations": {SUMMARY: json.dumps(TRAIN_SUMMARY), **pod.pop("annotations", {})}, **pod},
    }


def jobs(cluster: LocalCluster, ns: str, stage: str) -> list[dict]:
    return cluster.get("jobs", "-n", ns, "-l", f"longalign.dev/stage={stage}")["items"]


def test_a_run_goes_through_every_stage_to_succeeded(cluster, operator, volumes):
    ns = volumes
    # The longest name the CRD accepts: every child, the teacher's pods and their revision labels too, can exist.
    full = "full-" + "x" * (run_name_limit()[0] - len("full-"))
    spec = {
        **BASE,
        "dataGeneration": {
            "teacher": {"modelPath": "/models/teacher-70b", "replicas": 2, "gpusPerReplica": 8},
            "pod": {"annotations": {SUMMARY: '{"samples": 120}', DURATION: "2s"}},
        },
        "training": training(dataset=False, annotations={DURATION: "2s"}),
        "evaluation": {
            "needle": {},
            "longBenchChat": {
                "path": "/data/longbench-chat/test_cases.json",
                "fewShotPath": "/data/longbench-chat/few_shots.json",
                "promptPath": "/data/longbench-chat/prompt_fs.txt",
            },
            "judge": {
                "endpoint": "https://judge.example/v1",
                "model": "judge",
                "apiKeySecretRef": {"name": "judge", "key": "api-key"},
            },
            "pod": {"annotations": {SUMMARY: '{"longbench_chat_score": 6.4, "needle_accuracy": 0.9}'}},
        },
    }
    apply_run(cluster, ns, full, spec)

    # While data is generated, the teacher servers run on GPU nodes behind a Service.
    wait_phase(cluster, ns, full, "GeneratingData")
    servers = wait_for(lambda: cluster.get("statefulsets", "-n", ns)["items"], 30, "the teacher servers")[0]
    assert servers["spec"]["replicas"] == 2
    assert cluster.get("service", f"{full}-teacher", "-n", ns)["spec"]["ports"][0]["port"] == 8000
    teachers = wait_for(
        lambda: len(p := cluster.get("pods", "-n", ns, "-l", "longalign.dev/stage=teacher")["items"]) == 2 and p,
        30,
        "the teacher pods",
    )
    assert sorted(p["metadata"]["name"] for p in teachers) == [f"{full}-teacher-0", f"{full}-teacher-1"]
    [generator] = wait_for(
        lambda: cluster.get("pods", "-n", ns, "-l", f"job-name={full}-datagen-1")["items"], 30, "the generator pod"
    )
    env = {e["name"]: e.get("value") for e in generator["spec"]["containers"][0]["env"]}
    assert env["LONGALIGN_TEACHER_URL"].split(",") == [
        f"http://{full}-teacher-{i}.{full}-teacher.{ns}.svc:8000/v1" for i in range(2)
    ]

    status = wait_phase(cluster, ns, full, "Succeeded", timeout=120)
    assert status["results"] == {
        "samplesGenerated": 120,
        "finalLoss": 1.23,
        "tokensPerSecond": 35100.0,
        "checkpointPath": "/checkpoints/r/model",
        "lastCheckpointStep": 40,
        "longBenchChatScore": 6.4,
        "needleAccuracy": 0.9,
    }
    for stage in ("dataGeneration", "training", "evaluation"):
        assert status["stages"][stage]["state"] == "Succeeded"
        assert status["stages"][stage]["attempts"] == 1
    assert {c["type"]: c["status"] for c in status["conditions"]}["Succeeded"] == "True"

    # The teacher servers were removed once generation ended.
    wait_for(
        lambda: not cluster.get("statefulsets,pods", "-n", ns, "-l", "longalign.dev/stage=teacher")["items"],
        60,
        "the teacher servers to be removed",
    )

    # Training ran as one group of 2 pods x 8 GPUs with the rendezvous wiring torchrun needs.
    [job] = jobs(cluster, ns, "training")
    assert (job["spec"]["completionMode"], job["spec"]["completions"]) == ("Indexed", 2)
    pods = cluster.get("pods", "-n", ns, "-l", f"job-name={full}-train-1")["items"]
    assert len({p["spec"]["nodeName"] for p in pods}) == 2
    assert all(p["spec"]["nodeName"].startswith("gpu-node-") for p in pods)
    env = {e["name"]: e.get("value") for e in pods[0]["spec"]["containers"][0]["env"]}
    assert env["MASTER_ADDR"] == f"{full}-train-1-0.{full}-train" and env["WORLD_SIZE"] == "16"

    row = cluster.kubectl("get", "lar", full, "-n", ns).stdout.splitlines()[1].split()
    assert row[1] == "Succeeded" and row[-3:-1] == ["1.23", "6.40"]  # LOSS, SCORE
    # Every Event is a real transition, from the operator by name.
    posted = cluster.get("events", "-n", ns, "--field-selector", f"involvedObject.name={full}")["items"]
    # Normal Events are the transitions (a stage done in a blink may not be seen Running); a Warning names a real
    # trouble on the way, e.g. StageQueued while the scheduler has not yet seen the claims bound, and the stage
    # may then go on Starting. A pod ending before its Job adds nothing (the unit tests show the order).
    troubles = sum(e["type"] == "Warning" for e in posted)
    normal = Counter(e["reason"] for e in posted if e["type"] == "Normal")
    assert normal - Counter({"StageRunning": 3, "StageStarting": troubles}) == Counter(
        {"StageStarted": 3, "StageSucceeded": 3, "Succeeded": 1}
    ), posted
    assert {(e["source"]["component"], e["reportingComponent"]) for e in posted} == {("longalign-operator",) * 2}


def test_a_failing_stage_is_retried_up_to_its_backoff_limit_then_the_run_fails_with_the_reason(
    cluster, operator, volumes
):
    ns = volumes
    spec = {
        **BASE,
        "training": {
            **training(
                labels={OUTCOME: "fail"},
                annotations={"sim.longalign.dev/exit-code": "7", SUMMARY: "torch.OutOfMemoryError: CUDA out of memory"},
            ),
            "backoffLimit": 1,
        },
    }
    apply_run(cluster, ns, "oom", spec)
    status = wait_phase(cluster, ns, "oom", "Failed", timeout=120)
    stage = status["stages"]["training"]
    assert (stage["state"], stage["attempts"], stage["failures"]) == ("Failed", 2, 2)
    failed = cluster.get("pods", "-n", ns, "-l", "job-name=oom-train-2")["items"]
    assert stage["reason"] == "ContainerFailed"
    assert stage["message"] in [
        f"pod {p['metadata']['name']} exited with code 7; last output: torch.OutOfMemoryError: CUDA out of memory"
        for p in failed
    ]
    assert sorted(j["metadata"]["name"] for j in jobs(cluster, ns, "training")) == ["oom-train-1", "oom-train-2"]
    assert {c["type"]: c["status"] for c in status["conditions"]}["Failed"] == "True"
    assert {"StageRetrying", "StageFailed"} <= set(events(cluster, ns, "oom"))


def test_a_missing_volume_claim_holds_the_run_until_it_appears(cluster, operator, namespace):
    apply_run(cluster, namespace, "waiting", {**BASE, "training": training()})
    status = wait_for(lambda: run_status(cluster, namespace, "waiting").get("message"), 30, "a status message")
    assert "PersistentVolumeClaim 'models' (spec.storage.models.claimName)" in status
    assert run_status(cluster, namespace, "waiting")["phase"] == "Pending"
    assert not jobs(cluster, namespace, "training")
    cluster.create_bound_claims(namespace)
    wait_phase(cluster, namespace, "waiting", "Succeeded")


def test_a_gang_that_cannot_fit_holds_no_gpus_past_its_startup_deadline(cluster, operator, volumes):
    ns = volumes
    # Pods that do fit would train for a long while, holding their GPUs.
    spec = {
        **BASE,
        "training": {
            **training(annotations={DURATION: "600s"}),
            "nodes": 9,
            "startupDeadlineSeconds": 30,
            "backoffLimit": 0,
        },
    }
    apply_run(cluster, ns, "too-big", spec)
    wait_for(
        lambda: (
            run_status(cluster, ns, "too-big").get("stages", {}).get("training", {}).get("reason") == "Unschedulable"
        ),
        60,
        "the training stage to report Unschedulable",
    )
    assert run_status(cluster, ns, "too-big")["stages"]["training"]["state"] == "Queued"
    status = wait_phase(cluster, ns, "too-big", "Failed", timeout=90)
    assert status["stages"]["training"]["reason"] == "StartupDeadlineExceeded"
    wait_for(
        lambda: not cluster.get("pods", "-n", ns, "-l", "longalign.dev/run=too-big")["items"],
        60,
        "every pod of the gang (and the GPUs they held) to be released",
    )


def test_suspend_releases_the_pods_and_resume_starts_a_new_attempt(cluster, operator, volumes):
    ns = volumes
    apply_run(cluster, ns, "pausable", {**BASE, "training": training(labels={OUTCOME: "hang"})})
    wait_for(
        lambda: run_status(cluster, ns, "pausable").get("stages", {}).get("training", {}).get("state") == "Running",
        60,
        "training to run",
    )
    cluster.kubectl("patch", "lar", "pausable", "-n", ns, "--type=merge", "-p", '{"spec": {"suspend": true}}')
    status = wait_phase(cluster, ns, "pausable", "Suspended")
    assert {c["type"]: c["status"] for c in status["conditions"]}["Suspended"] == "True"
    wait_for(
        lambda: not cluster.get("pods", "-n", ns, "-l", "longalign.dev/run=pausable")["items"],
        60,
        "the training pods to be deleted",
    )
    cluster.kubectl("patch", "lar", "pausable", "-n", ns, "--type=merge", "-p", '{"spec": {"suspend": false}}')
    try:
        wait_for(
            lambda: (
                run_status(cluster, ns, "pausable")["stages"]["training"].get("attempts") == 2
                and run_status(cluster, ns, "pausable")["stages"]["training"]["state"] == "Running"
            ),
            60,
            "a second attempt to run",
        )
    except TimeoutError as e:
        raise AssertionError(f"{e}: {run_status(cluster, ns, 'pausable')}") from None
    assert run_status(cluster, ns, "pausable")["stages"]["training"]["failures"] == 0


def test_a_restarted_operator_continues_without_duplicates(cluster, operator, volumes):
    ns = volumes
    apply_run(cluster, ns, "steady", {**BASE, "training": training(annotations={DURATION: "10s"})})
    wait_for(
        lambda: run_status(cluster, ns, "steady").get("stages", {}).get("training", {}).get("state") == "Running",
        60,
        "training to run",
    )
    operator.kill()
    try:
        operator.start()
        status = wait_phase(cluster, ns, "steady", "Succeeded", timeout=120)
    finally:
        if operator.proc.poll() is not None:
            operator.start()
    assert status["stages"]["training"]["attempts"] == 1
    assert [j["metadata"]["name"] for j in jobs(cluster, ns, "training")] == ["steady-train-1"]
    assert len(cluster.get("pods", "-n", ns, "-l", "job-name=steady-train-1")["items"]) == 2


def test_a_finished_run_is_deleted_with_its_children_after_its_ttl(cluster, operator, volumes):
    ns = volumes
    apply_run(cluster, ns, "short-lived", {**BASE, "training": training(), "ttlSecondsAfterFinished": 2})
    last = {}

    def gone() -> bool:
        found = cluster.kubectl("get", "lar", "short-lived", "-n", ns, "-o", "json", check=False)
        if found.returncode == 0:
            run = json.loads(found.stdout)
            last.update(
                status=run.get("status"),
                deletionTimestamp=run["metadata"].get("deletionTimestamp"),
                finalizers=run["metadata"].get("finalizers"),
            )
        return found.returncode != 0

    try:
        wait_for(gone, 90, "the run to be deleted after its TTL")
    except TimeoutError as e:
        raise AssertionError(f"{e}: {json.dumps(last)}; events {events(cluster, ns, 'short-lived')}") from None
    wait_for(
        lambda: not cluster.get("jobs,configmaps,services", "-n", ns, "-l", "longalign.dev/run=short-lived")["items"],
        90,
        "its children to be garbage-collected",
    )


def test_live_progress_from_the_lead_pods_log_reaches_the_status_and_the_columns(cluster, operator, volumes):
    ns = volumes
    apply_run(cluster, ns, "watched", {**BASE, "training": training(labels={OUTCOME: "hang"})})
    [lead] = wait_for(
        lambda: cluster.get(
            "pods", "-n", ns, "-l", "job-name=watched-train-1,batch.kubernetes.io/job-completion-index=0"
        )["items"],
        60,
        "the lead training pod",
    )
    wait_for(
        lambda: cluster.get("pod", lead["metadata"]["name"], "-n", ns)["status"].get("phase") == "Running",
        60,
        "the lead pod to run",
    )
    line = {
        "longalign": "progress",
        "stage": "train",
        "done": 45,
        "total": 100,
        "unit": "steps",
        "rate": 0.05,
        "eta_s": 4800.0,
        "metrics": {"loss": 1.83, "tokens_per_s": 35100.0, "mfu": 0.46},
    }
    cluster.set_log(ns, lead["metadata"]["name"], ["[rank0] loading model", json.dumps(line), "step 45 done"])
    status = wait_for(
        lambda: (s := run_status(cluster, ns, "watched")).get("progress") == "45%" and s,
        60,
        "the progress to reach the status",
    )
    assert status["eta"] == "1h20m"
    assert status["stages"]["training"]["metrics"] == {"loss": 1.83, "tokensPerS": 35100.0, "mfu": 0.46}
    row = cluster.kubectl("get", "lar", "watched", "-n", ns, "-o", "wide").stdout.splitlines()[1].split()
    # NAME PHASE STAGE ATTEMPT PROGRESS ETA LOSS SCORE (empty: no evaluation yet) SUCCEEDED MESSAGE AGE
    assert row[1:10] == ["Training", "training", "1", "45%", "1h20m", "1.83", "Unknown", "training:", "running"]


def test_metrics_and_liveness_report_the_runs(cluster, operator, volumes):
    ns = volumes
    apply_run(cluster, ns, "counted", {**BASE, "training": {**training(labels={OUTCOME: "fail"}), "backoffLimit": 1}})
    wait_phase(cluster, ns, "counted", "Failed", timeout=120)

    def metric(text: str, name: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))

    text = wait_for(
        lambda: (
            (t := _get(f"http://127.0.0.1:{operator.metrics_port}/metrics"))
            and metric(t, 'longalign_runs{phase="Failed"}') >= 1
            and t
        ),
        30,
        "the metrics to count the run",
    )
    assert metric(text, 'longalign_stage_retries_total{stage="training"}') >= 1
    assert metric(text, 'longalign_stage_duration_seconds_count{outcome="Failed",stage="training"}') >= 1
    health = json.loads(_get(f"http://127.0.0.1:{operator.liveness_port}/healthz"))
    assert health["reconcile"]["runs"] >= 1 and health["reconcile"]["seconds_since_last_reconcile"] < 30


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()
