"""What the status tells people, and how the planner names the cause of a failed attempt: pure, no cluster."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from test_plan_and_builders import STORAGE, T0, advance, make_run

from longalign_operator import builders
from longalign_operator.builders import Run
from longalign_operator.plan import JobView, Observed, PodView, plan
from longalign_operator.spec import parse

TEACHER = {"modelPath": "/models/t", "replicas": 2}


def running(name: str = "r-train-1", *pods: PodView, **progress) -> JobView:
    return JobView(
        name, "Active", pods=pods or (PodView(f"{name}-0", "Running", node="gpu-node-0", ready=True),), **progress
    )


def test_the_longest_run_name_is_derived_from_the_children_and_every_child_fits_at_it():
    limit, what, suffix = builders.run_name_limit()
    assert what == "label controller-revision-hash of StatefulSet <name>-teacher's pods"
    assert (limit, suffix) == (63 - len("-teacher-") - builders.REVISION_HASH, "-teacher-" + "h" * 10)
    spec = parse(
        {
            "image": "i",
            "baseModelPath": "/models/m",
            "storage": STORAGE,
            "evaluation": {"needle": {}},
            "dataGeneration": {"teacher": {"modelPath": "/models/t", "replicas": 64, "nodesPerReplica": 16}},
            "training": {"nodes": 512},
        }
    )
    for length, fits in ((limit, True), (limit + 1, False)):
        names = builders.capped_names(Run("a" * length, "ns", "u", {}, spec))
        assert all(len(v) <= 63 for v in names.values()) is fits
    assert builders.run_name_problems("a" * limit) == []
    assert builders.run_name_problems("a" * (limit + 1)) == [
        (
            "metadata.name",
            (
                f"must be at most {limit} characters: the longest name made from it, the label "
                "controller-revision-hash of StatefulSet <name>-teacher's pods, must fit in 63"
            ),
        )
    ]
    assert [m for _, m in builders.run_name_problems("1st.run")] == [
        (
            "must start with a lowercase letter and hold only lowercase letters, digits and '-' (it names the run's "
            "Services)"
        )
    ]


def test_every_pod_the_operator_creates_mounts_no_service_account_token():
    run = make_run(dataGeneration={"teacher": TEACHER}, training={}, evaluation={"needle": {}})
    templates = [
        obj["spec"]["template"]["spec"]
        for stage in ("dataGeneration", "training", "evaluation")
        for obj in builders.stage_objects(run, stage, 1)
        if obj["kind"] in ("Job", "StatefulSet")
    ]
    assert len(templates) == 4
    assert all(t["automountServiceAccountToken"] is False for t in templates)


def test_the_status_rounds_for_people_and_keeps_full_precision_for_machines():
    run = make_run(evaluation={"needle": {}})
    _, status = advance(run, {})
    assert {c["type"]: c["status"] for c in status["conditions"]}["Succeeded"] == "Unknown"
    assert status["attempt"] == 1
    line = {
        "longalign": "progress",
        "stage": "train",
        "done": 10,
        "total": 40,
        "unit": "steps",
        "rate": 0.01,
        "eta_s": 6745.678912,
        "metrics": {"loss": 6.940693378448486, "tokens_per_s": 35100.5, "mfu": 0.4, "lr": 2e-5, "grad_norm": 0.75},
    }
    _, status = advance(
        run, status, [running(progress=line, progress_time="2026-11-23T12:01:00Z")], now=T0 + timedelta(minutes=1)
    )
    st = status["stages"]["training"]
    assert (status["loss"], st["etaSeconds"], status["eta"]) == ("6.941", 6746, "1h52m")
    assert st["metrics"] == {"loss": 6.940693378448486, "tokensPerS": 35100.5, "mfu": 0.4, "lr": 2e-5, "gradNorm": 0.75}
    done = JobView(
        "r-train-1",
        "Complete",
        pods=(PodView("r-train-1-0", "Succeeded", termination_message='{"final_loss": 1.234567}'),),
    )
    _, status = advance(run, status, [done])
    assert (status["loss"], status["results"]["finalLoss"], status["attempt"]) == ("1.235", 1.234567, 1)
    evaluated = JobView(
        "r-eval-1",
        "Complete",
        pods=(PodView("r-eval-1-x", "Succeeded", termination_message='{"longbench_chat_score": 6.123456789}'),),
    )
    _, status = advance(run, status, [evaluated])
    assert (status["score"], status["results"]["longBenchChatScore"]) == ("6.12", 6.123456789)
    assert {c["type"]: c["status"] for c in status["conditions"]}["Succeeded"] == "True"
    assert "attempt" not in status


def test_every_event_is_a_real_transition():
    run = make_run()
    p, status = advance(run, {})
    reasons = [e.reason for e in p.events]
    steps = [
        JobView("r-train-1", "Active"),  # created, no pods yet
        running(),
        running("r-train-1", PodView("r-train-1-0", "Succeeded")),  # the pod ended, the Job not yet complete
        JobView("r-train-1", "Complete", pods=(PodView("r-train-1-0", "Succeeded"),)),
    ]
    for job in steps:
        p, status = advance(run, status, [job])
        reasons += [e.reason for e in p.events]
    assert reasons == ["StageStarted", "StageRunning", "StageSucceeded", "Succeeded"]


NODE_UP = {"gpu-node-0": "True", "gpu-node-1": "True"}


@pytest.mark.parametrize(
    "pod, nodes, reason, message",
    [
        (
            PodView("r-train-1-1", "Running", node="gpu-node-9"),
            NODE_UP,
            "NodeLost",
            "node gpu-node-9 was deleted while pod r-train-1-1 ran on it",
        ),
        (
            PodView("r-train-1-1", "Running", node="gpu-node-1"),
            {**NODE_UP, "gpu-node-1": "Unknown"},
            "NodeLost",
            "node gpu-node-1 stopped reporting (Ready: Unknown) while pod r-train-1-1 ran on it",
        ),
        (
            PodView("r-train-1-1", "Running", node="gpu-node-1", deleted=True),
            NODE_UP,
            "PodDeleted",
            "pod r-train-1-1 was deleted before it finished",
        ),
        (
            PodView(
                "r-train-1-1",
                "Running",
                node="gpu-node-1",
                deleted=True,
                disruption=("EvictionByEvictionAPI", "Eviction API: evicting"),
            ),
            NODE_UP,
            "PodEvicted",
            "pod r-train-1-1: Eviction API: evicting",
        ),
        (
            PodView(
                "r-train-1-1",
                "Running",
                node="gpu-node-1",
                deleted=True,
                disruption=("DeletionByPodGC", "PodGC: node no longer exists"),
            ),
            NODE_UP,
            "NodeLost",
            "pod r-train-1-1: PodGC: node no longer exists",
        ),
    ],
)
def test_a_lost_pod_ends_the_attempt_at_once_naming_the_cause(pod, nodes, reason, message):
    run = make_run(training={"datasetPath": "/data/d.jsonl", "nodes": 2, "backoffLimit": 1})
    _, status = advance(run, {})
    job = running("r-train-1", PodView("r-train-1-0", "Running", node="gpu-node-0"), pod)
    p = plan(Observed(run=run, status=status, generation=1, now=T0, jobs={job.name: job}, nodes=nodes))
    assert ("Job", "r-train-1") in p.delete
    assert [e.message for e in p.events if e.reason == "StageRetrying"] == [
        f"training: attempt 1 failed ({reason}: {message}); retrying (1/1 retries used)"
    ]
    assert p.status.stages.training.attempts == 2


def test_nodes_not_watched_are_no_signal():
    run = make_run()
    _, status = advance(run, {})
    job = running("r-train-1", PodView("r-train-1-0", "Running", node="gpu-node-0"))
    assert not plan(Observed(run=run, status=status, generation=1, now=T0, jobs={job.name: job}, nodes=None)).delete


@pytest.mark.parametrize(
    "pod, reason, message",
    [
        (
            PodView(
                "r-train-1-0",
                "Failed",
                termination_message="Traceback ...\nRuntimeError: NCCL timeout",
                exit_code=1,
                exit_reason="Error",
            ),
            "ContainerFailed",
            "pod r-train-1-0 exited with code 1; last output: Traceback ...\nRuntimeError: NCCL timeout",
        ),
        (  # a stage's summary: its error whole, and the exit code it states (torchrun's container exits 1)
            PodView(
                "r-train-1-1",
                "Failed",
                termination_message=json.dumps(
                    {"ok": False, "status": "volume_full", "exit_code": 4, "error": "checkpoint step-8 did not fit"}
                ),
                exit_code=1,
                exit_reason="Error",
            ),
            "VolumeFull",
            "pod r-train-1-1 exited with code 4: checkpoint step-8 did not fit",
        ),
        (
            PodView("r-train-1-0", "Failed", exit_code=137, exit_reason="OOMKilled"),
            "OOMKilled",
            "pod r-train-1-0 exited with code 137",
        ),
        (
            PodView("r-train-1-0", "Failed", disruption=("Evicted", "The node was low on resource: memory.")),
            "PodEvicted",
            "pod r-train-1-0: The node was low on resource: memory.",
        ),
    ],
)
def test_a_failed_job_names_its_pods_cause_not_backoff_limit_exceeded(pod, reason, message):
    run = make_run(training={"datasetPath": "/data/d.jsonl", "backoffLimit": 0})
    _, status = advance(run, {})
    failed = JobView(
        "r-train-1", "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit", pods=(pod,)
    )
    p, status = advance(run, status, [failed])
    assert (status["stages"]["training"]["reason"], status["stages"]["training"]["message"]) == (reason, message)
    assert status["message"] == f"training failed after 1 attempt(s): {reason}: {message}"
    assert not p.delete  # the failed Job and its pods stay for `kubectl logs`


def test_of_the_failed_pods_the_one_stating_a_stop_is_the_cause_not_those_whose_peers_went():
    run = make_run(training={"datasetPath": "/data/d.jsonl", "backoffLimit": 0})
    _, status = advance(run, {})
    peer_gone = PodView(
        "r-train-1-0",
        "Failed",
        termination_message=json.dumps({"ok": False, "error": "DistBackendError: Connection closed by peer"}),
        exit_code=1,
    )
    full = PodView(
        "r-train-1-1",
        "Failed",
        termination_message=json.dumps({"ok": False, "status": "volume_full", "exit_code": 4, "error": "no room"}),
        exit_code=1,
    )
    failed = JobView("r-train-1", "Failed", "BackoffLimitExceeded", "backoff limit", pods=(peer_gone, full))
    _, status = advance(run, status, [failed])
    training = status["stages"]["training"]
    assert (training["state"], training["reason"]) == ("Failed", "VolumeFull")
    assert training["message"] == "pod r-train-1-1 exited with code 4: no room"


def test_a_pod_that_failed_in_a_job_not_yet_failed_waits_for_the_job():
    run = make_run()
    _, status = advance(run, {})
    job = running("r-train-1", PodView("r-train-1-0", "Failed", exit_code=1))
    p, _ = advance(run, status, [job])
    assert not p.delete and not p.create


def test_the_jobs_own_reason_wins_when_it_is_not_the_backoff_limit():
    run = make_run(training={"datasetPath": "/data/d.jsonl", "backoffLimit": 0})
    _, status = advance(run, {})
    late = JobView(
        "r-train-1",
        "Failed",
        "DeadlineExceeded",
        "Job was active longer than specified deadline",
        pods=(PodView("r-train-1-0", "Running", deleted=True),),
    )
    _, status = advance(run, status, [late])
    assert status["stages"]["training"]["reason"] == "DeadlineExceeded"


def test_the_teachers_pods_are_watched_like_the_stages_own():
    run = make_run(dataGeneration={"teacher": TEACHER, "startupDeadlineSeconds": 600, "backoffLimit": 0}, training={})
    _, status = advance(run, {})
    generator = running("r-datagen-1")
    stuck = PodView("r-teacher-1", "Pending", "ImagePullBackOff", 'Back-off pulling image "vllm:1"')

    def step(servers, seconds):
        p = plan(
            Observed(
                run=run,
                status=status,
                generation=1,
                now=T0 + timedelta(seconds=seconds),
                jobs={generator.name: generator},
                servers=servers,
            )
        )
        return p, p.status.model_dump(mode="json", by_alias=True, exclude_none=True)

    _, seen = step((PodView("r-teacher-0", "Running", ready=True),), 10)
    assert seen["stages"]["dataGeneration"]["message"] == "1 of 2 teacher pods exist"
    _, seen = step((PodView("r-teacher-0", "Running", ready=True), PodView("r-teacher-1", "Running")), 10)
    assert seen["stages"]["dataGeneration"]["message"] == "1 of 2 teacher servers ready"
    p, seen = step((PodView("r-teacher-0", "Running", ready=True), stuck), 10)
    assert (seen["stages"]["dataGeneration"]["state"], seen["stages"]["dataGeneration"]["reason"]) == (
        "Starting",
        "ImagePullBackOff",
    )
    assert [(e.type, e.reason) for e in p.events] == [("Warning", "StageStarting")]
    p, seen = step((PodView("r-teacher-0", "Running", ready=True), stuck), 601)
    assert seen["phase"] == "Failed" and ("Job", "r-datagen-1") in p.delete
    assert seen["stages"]["dataGeneration"]["message"] == (
        'not all pods running after 601 s (ImagePullBackOff: r-teacher-1: Back-off pulling image "vllm:1")'
    )
    _, seen = step((PodView("r-teacher-0", "Running", ready=True), PodView("r-teacher-1", "Running", ready=True)), 10)
    assert seen["stages"]["dataGeneration"]["state"] == "Running"


def test_a_group_runs_only_once_all_its_pods_do():
    run = make_run(training={"datasetPath": "/data/d.jsonl", "nodes": 2})
    _, status = advance(run, {})
    one_of_two = running("r-train-1", PodView("r-train-1-0", "Running"))
    _, status = advance(run, status, [one_of_two])
    assert status["stages"]["training"]["state"] == "Starting"
    _, status = advance(
        run, status, [running("r-train-1", PodView("r-train-1-0", "Running"), PodView("r-train-1-1", "Running"))]
    )
    assert status["stages"]["training"]["state"] == "Running"
