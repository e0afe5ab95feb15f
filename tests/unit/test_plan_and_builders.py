"""The planner and builders are pure: their decisions and objects are checked here without a cluster."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from longalign_operator import builders
from longalign_operator.builders import Run
from longalign_operator.plan import JobView, Observed, PodView, WorkloadView, plan
from longalign_operator.spec import parse

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
STORAGE = {
    "models": {"claimName": "models"},
    "data": {"claimName": "data", "subPath": "team-a"},
    "checkpoints": {"claimName": "ckpt"},
}


def make_run(labels=None, **spec) -> Run:
    # Training reads the generated data when there is data generation, else a file of its own.
    body = {
        "image": "trainer:1",
        "baseModelPath": "/models/m",
        "storage": STORAGE,
        "training": {} if "dataGeneration" in spec else {"datasetPath": "/data/d.jsonl"},
        **spec,
    }
    return Run(name="r", namespace="ns", uid="u-1", labels=labels or {}, spec=parse(body))


def observe(run: Run, status=None, jobs=(), now=T0, missing=()) -> Observed:
    return Observed(
        run=run, status=status or {}, generation=1, now=now, jobs={j.name: j for j in jobs}, missing=tuple(missing)
    )


def env_of(obj: dict) -> list[dict]:
    """The environment of the first container of a Job's or StatefulSet's pods."""
    return obj["spec"]["template"]["spec"]["containers"][0]["env"]


def advance(run: Run, status: dict, jobs=(), now=T0):
    p = plan(observe(run, status, jobs, now))
    return p, p.status.model_dump(mode="json", by_alias=True, exclude_none=True)


def test_training_group_is_an_indexed_job_with_rendezvous_env_and_the_users_pod_options():
    run = make_run(
        labels={"kueue.x-k8s.io/queue-name": "gpus"},
        imagePullSecrets=["regcred"],
        training={
            "datasetPath": "/data/d.jsonl",
            "nodes": 4,
            "gpusPerNode": 8,
            "activeDeadlineSeconds": 3600,
            "startupDeadlineSeconds": 900,
            "pod": {
                "nodeSelector": {"nvidia.com/gpu.product": "H100"},
                "priorityClassName": "high",
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                "resources": {"requests": {"memory": "800Gi", "cpu": 96}},
                "env": [{"name": "NCCL_DEBUG", "value": "WARN"}],
                "labels": {"team": "a"},
                "annotations": {"note": "x"},
            },
        },
    )
    job = builders.training_job(run, 3)
    assert job["metadata"]["name"] == "r-train-3"
    assert job["metadata"]["ownerReferences"][0] == {
        "apiVersion": "longalign.dev/v1alpha1",
        "kind": "LongAlignRun",
        "name": "r",
        "uid": "u-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"], spec["backoffLimit"]) == (
        "Indexed",
        4,
        4,
        0,
    )
    assert spec["suspend"] is True and job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpus"
    assert spec["activeDeadlineSeconds"] == 3600
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == "r-train" and pod["restartPolicy"] == "Never"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "H100"} and pod["priorityClassName"] == "high"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    [c] = pod["containers"]
    assert c["resources"] == {"requests": {"memory": "800Gi", "cpu": "96"}, "limits": {"nvidia.com/gpu": "8"}}
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}
    assert env["MASTER_ADDR"] == "r-train-3-0.r-train" and env["WORLD_SIZE"] == "32"
    assert env["NODE_RANK"] == {
        "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
    }
    assert env["NCCL_DEBUG"] == "WARN"
    assert c["command"][:2] == ["torchrun", "--nnodes=4"] and c["command"][-3:] == [
        "train",
        "--config",
        "/etc/longalign/config.json",
    ]
    # The pod of index 0 hosts the rendezvous by its index, not by resolving its own DNS name (which may not be
    # published yet), and every pod waits for the others as long as the operator waits for the pods to start.
    args = c["command"][1 : c["command"].index("--no-python")]
    assert args == [
        "--nnodes=4",
        "--nproc-per-node=8",
        "--node-rank=$(NODE_RANK)",
        "--rdzv-backend=static",
        "--rdzv-endpoint=$(MASTER_ADDR):$(MASTER_PORT)",
        "--rdzv-conf=timeout=900",
    ]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/data"]["subPath"] == "team-a" and "/dev/shm" in mounts and "/checkpoints" in mounts
    assert spec["template"]["metadata"]["labels"]["team"] == "a"
    assert spec["template"]["metadata"]["annotations"] == {"note": "x"}


def test_a_new_run_starts_its_first_enabled_stage_and_records_the_attempt():
    p, status = advance(make_run(), {})
    assert status["phase"] == "Training" and status["stages"]["training"]["attempts"] == 1
    assert [(o["kind"], o["metadata"]["name"]) for o in p.create] == [
        ("ConfigMap", "r-train-1"),
        ("Service", "r-train"),
        ("Job", "r-train-1"),
    ]
    # The same snapshot gives the same decisions: a restarted operator creates nothing new.
    again, _ = advance(make_run(), {})
    assert again.create == p.create


def test_a_completed_stage_records_its_summary_and_the_next_stage_starts_in_the_same_pass():
    run = make_run(evaluation={"needle": {}})
    _, status = advance(run, {})
    done = JobView(
        "r-train-1",
        "Complete",
        pods=(
            PodView(
                "r-train-1-0",
                "Succeeded",
                termination_message=json.dumps(
                    {
                        "final_loss": 1.5,
                        "export": "/c/model",
                        "sequence_parallel_size": 2,
                        "sequence_parallel_attention": "allgather_kv",
                    }
                ),
            ),
        ),
    )
    p, status = advance(run, status, [done])
    assert status["stages"]["training"]["state"] == "Succeeded"
    assert status["results"] == {
        "finalLoss": 1.5,
        "checkpointPath": "/c/model",
        "sequenceParallelSize": 2,
        "sequenceParallelAttention": "allgather_kv",
    }
    assert status["phase"] == "Evaluating" and [o["metadata"]["name"] for o in p.create] == ["r-eval-1", "r-eval-1"]


def test_failures_are_retried_up_to_the_backoff_limit_then_the_run_fails_naming_the_reason():
    run = make_run(training={"datasetPath": "/data/d.jsonl", "backoffLimit": 1})
    _, status = advance(run, {})
    failed = PodView("r-train-1-0", "Failed", termination_message="NCCL timeout", exit_code=1)
    p, status = advance(run, status, [JobView("r-train-1", "Failed", "BackoffLimitExceeded", pods=(failed,))])
    assert status["stages"]["training"]["attempts"] == 2 and status["phase"] == "Training"
    assert p.events[0][:2] == ("Warning", "StageRetrying")
    failed2 = PodView("r-train-2-1", "Failed", termination_message="NCCL timeout", exit_code=1)
    p, status = advance(run, status, [JobView("r-train-2", "Failed", "BackoffLimitExceeded", pods=(failed2,))])
    assert status["phase"] == "Failed" and not p.create
    assert "exited with code 1" in status["message"] and "NCCL timeout" in status["message"]


def test_pods_that_cannot_start_are_reported_then_torn_down_at_the_startup_deadline():
    run = make_run(training={"datasetPath": "/data/d.jsonl", "startupDeadlineSeconds": 600, "backoffLimit": 0})
    _, status = advance(run, {})
    stuck = JobView(
        "r-train-1",
        "Active",
        pods=(
            PodView("r-train-1-0", "Running"),
            PodView("r-train-1-1", "Pending", "ImagePullBackOff", 'Back-off pulling image "trainer:1"'),
        ),
    )
    _, status = advance(run, status, [stuck], now=T0 + timedelta(seconds=60))
    assert (status["stages"]["training"]["state"], status["stages"]["training"]["reason"]) == (
        "Starting",
        "ImagePullBackOff",
    )
    p, status = advance(run, status, [stuck], now=T0 + timedelta(seconds=601))
    assert ("Job", "r-train-1") in p.delete
    assert status["phase"] == "Failed" and status["stages"]["training"]["reason"] == "StartupDeadlineExceeded"


def test_suspend_deletes_the_active_attempt_and_resume_starts_a_new_one_without_counting_a_failure():
    run = make_run()
    _, status = advance(run, {})
    running = JobView("r-train-1", "Active", pods=(PodView("r-train-1-0", "Running"),))
    suspended = make_run(suspend=True)
    p, status = advance(suspended, status, [running])
    assert p.delete == [("Job", "r-train-1")] and status["phase"] == "Suspended"
    p, status = advance(run, status, [])
    assert status["stages"]["training"]["attempts"] == 2 and status["stages"]["training"]["failures"] == 0
    assert p.events[0][:2] == ("Normal", "Resumed")


QUEUE = {"kueue.x-k8s.io/queue-name": "gpus"}
WAITING = WorkloadView(
    reason="Pending", message="insufficient unused quota for nvidia.com/gpu in flavor f, 8 more needed"
)


def test_a_job_waiting_for_kueue_shows_kueues_reason_and_no_startup_deadline_applies_until_admission():
    run = make_run(labels=QUEUE, training={"datasetPath": "/data/d.jsonl", "startupDeadlineSeconds": 600})
    _, status = advance(run, {})
    waiting = JobView("r-train-1", "Suspended", workload=WAITING)
    p, status = advance(run, status, [waiting], now=T0 + timedelta(hours=5))
    stage = status["stages"]["training"]
    assert (stage["state"], stage["reason"], stage["message"]) == ("Queued", "Pending", WAITING.message)
    assert not p.delete and status["phase"] == "Training"
    assert [e.reason for e in p.events] == ["StageQueued"]
    # Admitted 5 h after the attempt began: the deadline counts from the Job's start, not from then.
    admitted = T0 + timedelta(hours=5)
    starting = JobView("r-train-1", "Active", pods=(PodView("r-train-1-0", "Pending"),), start_time=_ts(admitted))
    p, status = advance(run, status, [starting], now=admitted + timedelta(seconds=60))
    assert status["stages"]["training"]["state"] == "Starting" and not p.delete


def _ts(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_preempted_attempt_waits_for_its_pods_to_stop_then_the_next_is_queued_without_a_failure():
    run = make_run(labels=QUEUE)
    _, status = advance(run, {})
    running = JobView("r-train-1", "Active", pods=(PodView("r-train-1-0", "Running"),), start_time=_ts(T0))
    _, status = advance(run, status, [running])
    evicted = WorkloadView(evicted=("Preempted", "Preempted to accommodate a workload"))
    stopping = JobView("r-train-1", "Suspended", pods=running.pods, pods_left=1, start_time=_ts(T0), workload=evicted)
    p, status = advance(run, status, [stopping])
    assert status["stages"]["training"]["state"] == "Preempted" and not p.delete and not p.create
    assert [e.reason for e in p.events] == ["StagePreempted"]
    summary = '{"stage": "train", "ok": false, "preempted": true, "steps": 40}'
    stopped = PodView("r-train-1-0", "Failed", termination_message=summary, exit_code=143, deleted=True)
    p, status = advance(run, status, [JobView("r-train-1", "Suspended", pods=(stopped,), workload=evicted)])
    stage = status["stages"]["training"]
    assert (stage["state"], stage["attempts"], stage["failures"], stage["preemptions"]) == ("Preempted", 2, 0, 1)
    assert "40 steps kept" in stage["message"] and status["results"]["lastCheckpointStep"] == 40
    assert p.delete == [("Job", "r-train-1")] and [o["metadata"]["name"] for o in p.create][-1] == "r-train-2"
    assert "StageRequeued" in [e.reason for e in p.events]
    # The next attempt, queued: still Preempted until Kueue admits it, then it runs.
    p, status = advance(run, status, [JobView("r-train-2", "Suspended", workload=WAITING)])
    assert status["stages"]["training"]["state"] == "Preempted" and not p.events
    readmitted = JobView("r-train-2", "Active", pods=(PodView("r-train-2-0", "Running"),), start_time=_ts(T0))
    _, status = advance(run, status, [readmitted])
    assert status["stages"]["training"]["state"] == "Running"


def grace_of(objects: list[dict]) -> int:
    [job] = [o for o in objects if o["kind"] == "Job"]
    return job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]


def preempt(run: Run, status: dict, attempt: int, summary: dict) -> tuple:
    """Attempt ``attempt`` runs, is preempted, and stops with ``summary``: (plan, status) of the next attempt."""
    name = f"r-train-{attempt}"
    running = JobView(name, "Active", pods=(PodView(f"{name}-0", "Running"),), start_time=_ts(T0))
    _, status = advance(run, status, [running])
    evicted = WorkloadView(evicted=("Preempted", "Preempted to accommodate a workload"))
    stopped = PodView(f"{name}-0", "Failed", termination_message=json.dumps(summary), exit_code=143, deleted=True)
    return advance(run, status, [JobView(name, "Suspended", pods=(stopped,), workload=evicted)])


def test_the_grace_period_follows_the_stop_cost_the_trainer_measured_unless_the_spec_sets_one():
    stopped = {"stage": "train", "ok": False, "preempted": True, "steps": 40}
    run = make_run(labels=QUEUE)
    p, status = advance(run, {})
    assert grace_of(p.create) == 300 and status["stages"]["training"]["gracePeriodSeconds"] == 300  # not measured
    p, status = preempt(run, status, 1, {**stopped, "slowest_step_s": 4.5, "slowest_checkpoint_s": 40.0})
    assert status["stages"]["training"]["stopSeconds"] == 44.5
    assert grace_of(p.create) == 119 and status["stages"]["training"]["gracePeriodSeconds"] == 119  # 2 × 44.5 + 30
    # a slower checkpoint reported in a progress line raises it; a faster one later does not lower it
    line = {"longalign": "progress", "stage": "train", "done": 50, "total": 100, "unit": "steps"}
    for checkpoint_s in (90.0, 10.0):
        running = JobView(
            "r-train-2",
            "Active",
            pods=(PodView("r-train-2-0", "Running"),),
            start_time=_ts(T0),
            progress={**line, "metrics": {"slowest_step_s": 5.0, "slowest_checkpoint_s": checkpoint_s}},
        )
        _, status = advance(run, status, [running])
    assert status["stages"]["training"]["stopSeconds"] == 95.0
    p, _ = preempt(run, status, 2, stopped)
    assert grace_of(p.create) == 220

    short = make_run(labels=QUEUE, training={"datasetPath": "/data/d.jsonl", "terminationGracePeriodSeconds": 60})
    p, status = advance(short, {})
    assert grace_of(p.create) == 60 and not [e for e in p.events if e.reason == "GracePeriodShort"]
    p, status = preempt(short, status, 1, {**stopped, "slowest_step_s": 4.5, "slowest_checkpoint_s": 40.0})
    assert grace_of(p.create) == 60  # the user's choice stands, with a warning that names the field and the fix
    [warning] = [e for e in p.events if e.reason == "GracePeriodShort"]
    assert warning.type == "Warning" and "training.terminationGracePeriodSeconds to 119" in warning.message


def test_a_workload_kueue_deactivated_keeps_its_job_and_shows_why():
    run = make_run(labels=QUEUE)
    _, status = advance(run, {})
    deactivated = WorkloadView(evicted=("InactiveWorkload", "The workload is deactivated"))
    p, status = advance(run, status, [JobView("r-train-1", "Suspended", workload=deactivated)])
    stage = status["stages"]["training"]
    assert (stage["state"], stage["reason"], stage.get("preemptions", 0)) == ("Queued", "InactiveWorkload", 0)
    assert not p.delete and not p.create


def test_kueue_labels_and_the_training_grace_period_reach_the_jobs_but_not_the_stage_config():
    run = make_run(
        labels=QUEUE,
        workloadPriorityClass="team-high",
        training={"datasetPath": "/data/d.jsonl", "terminationGracePeriodSeconds": 900},
    )
    job = builders.training_job(run, 1)
    assert job["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "team-high"
    assert job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 900
    assert "terminationGracePeriodSeconds" not in builders.stage_config(run, "training", 1)["training"]
    unqueued = builders.training_job(make_run(workloadPriorityClass="team-high"), 1)
    assert "kueue.x-k8s.io/priority-class" not in unqueued["metadata"]["labels"]  # no queue: Kueue ignores it
    assert "suspend" not in unqueued["spec"]


def test_missing_claims_hold_the_run_and_ttl_deletes_a_finished_one():
    missing = ["PersistentVolumeClaim 'ckpt' (spec.storage.checkpoints.claimName)"]
    held = plan(observe(make_run(), missing=missing))
    assert held.status.phase == "Pending" and "'ckpt'" in held.status.message and not held.create
    finished = {"phase": "Succeeded", "completionTime": "2026-11-23T12:00:00Z"}
    run = make_run(ttlSecondsAfterFinished=60)
    assert not plan(observe(run, finished, now=T0 + timedelta(seconds=59))).delete_run
    assert plan(observe(run, finished, now=T0 + timedelta(seconds=60))).delete_run


def test_progress_lines_reach_the_status_and_silence_marks_the_stage_stalled():
    run = make_run(training={"datasetPath": "/data/d.jsonl", "stallSeconds": 600})
    _, status = advance(run, {})
    line = {
        "longalign": "progress",
        "stage": "train",
        "done": 45,
        "total": 100,
        "unit": "steps",
        "rate": 0.1,
        "eta_s": 550.0,
        "metrics": {"loss": 1.7, "tokens_per_s": 35000.0},
    }
    running = JobView(
        "r-train-1",
        "Active",
        pods=(PodView("r-train-1-0", "Running"),),
        progress=line,
        progress_time="2026-11-23T12:05:00Z",
    )
    _, status = advance(run, status, [running], now=T0 + timedelta(minutes=6))
    st = status["stages"]["training"]
    assert (status["progress"], status["eta"], st["state"]) == ("45%", "9m10s", "Running")
    assert st["metrics"] == {"loss": 1.7, "tokensPerS": 35000.0}
    p, status = advance(run, status, [running], now=T0 + timedelta(minutes=15, seconds=1))
    assert (status["stages"]["training"]["state"], status["stages"]["training"]["reason"]) == ("Stalled", "NoProgress")
    assert p.events[0][:2] == ("Warning", "StageStalled")


def stored(obj):
    """``obj`` as the apiserver keeps it after a merge patch: without nulls."""
    if isinstance(obj, dict):
        return {k: stored(v) for k, v in obj.items() if v is not None}
    return obj


def test_the_setting_training_chose_reaches_the_status_at_once_and_an_event_when_it_changes():
    from longalign_operator.cache import merge_patch

    run = make_run()
    _, status = advance(run, {})
    setting = {"zero_stage": 2, "sequence_parallel_attention": None, "description": "ZeRO-2, no layer recomputed"}
    first = {"longalign": "progress", "stage": "train", "done": 0, "total": 100, "unit": "steps", "metrics": {}}

    def step(line: dict, attempt: int = 1) -> tuple:
        name = f"r-train-{attempt}"
        job = JobView(name, "Active", pods=(PodView(f"{name}-0", "Running"),), start_time=_ts(T0), progress=line)
        p, new = advance(run, status, [job])
        assert merge_patch(stored(new), new) == {}  # once written, nothing is patched again
        return p, stored(new)

    p, status = step({**first, "setting": setting})
    assert status["stages"]["training"]["setting"] == stored(setting)  # before the first step ends
    assert [e.message for e in p.events if e.reason == "StageSetting"] == [f"training: {setting['description']}"]
    line = {**first, "done": 1, "metrics": {"loss": 2.5}, "setting": setting}
    p, status = step(line)
    assert not [e for e in p.events if e.reason == "StageSetting"]  # told once, not at every line
    assert status["stages"]["training"]["metrics"] == {"loss": 2.5}
    p, status = step({**line, "done": 0, "metrics": {}})
    assert status["stages"]["training"]["metrics"] == {"loss": 2.5}  # a line without metrics keeps the last ones
    zero3 = {**setting, "zero_stage": 3, "description": "ZeRO-3, 8 of 8 layers checkpointed (recomputed in full)"}
    p, status = step({**line, "setting": zero3})
    assert status["stages"]["training"]["setting"]["zero_stage"] == 3
    assert [e.message for e in p.events if e.reason == "StageSetting"] == [f"training: {zero3['description']}"]


def test_liveness_fails_when_runs_exist_but_reconciling_stopped():
    from types import SimpleNamespace

    from longalign_operator import handlers
    from longalign_operator.metrics import Metrics

    memo = SimpleNamespace(metrics=Metrics())
    assert handlers.reconciling(memo=memo)["runs"] == 0
    memo.metrics.phases["uid-1"] = "Training"
    assert handlers.reconciling(memo=memo)["runs"] == 1
    memo.metrics.last_reconcile_monotonic -= handlers.STALE_AFTER_S + 1
    with pytest.raises(RuntimeError, match="no reconcile for"):
        handlers.reconciling(memo=memo)


@pytest.mark.parametrize(
    "exit_code, summary, reason",
    [
        (2, '{"ok": false}', "InvalidStageConfig"),
        (3, '{"ok": false}', "CheckpointUnusable"),
        (1, '{"ok": false, "status": "bad_input", "exit_code": 2}', "InvalidStageConfig"),  # torchrun's 1
    ],
)
def test_a_failure_no_retry_can_fix_fails_the_run_at_once(exit_code, summary, reason):
    run = make_run(training={"datasetPath": "/data/d.jsonl", "backoffLimit": 5})
    _, status = advance(run, {})
    bad = PodView("r-train-1-0", "Failed", termination_message=summary, exit_code=exit_code)
    p, status = advance(run, status, [JobView("r-train-1", "Failed", "BackoffLimitExceeded", pods=(bad,))])
    assert status["phase"] == "Failed" and status["stages"]["training"]["reason"] == reason and not p.create


def test_teacher_servers_get_the_same_pod_options_and_pull_secrets_as_the_stage_pods():
    run = make_run(
        imagePullSecrets=["regcred"],
        dataGeneration={
            "teacher": {"modelPath": "/models/t", "replicas": 2},
            "pod": {"serviceAccountName": "gen", "nodeSelector": {"pool": "a"}},
        },
    )
    servers, service = builders.teacher_objects(run)
    pod = servers["spec"]["template"]["spec"]
    generator = builders.single_pod_job(run, "dataGeneration", 1, gpus=0)["spec"]["template"]["spec"]
    for key in ("imagePullSecrets", "serviceAccountName", "nodeSelector"):
        assert pod[key] == generator[key]
    assert service["spec"]["clusterIP"] == "None"


def test_a_multi_node_teacher_replica_is_a_ray_group_led_by_its_first_pod():
    run = make_run(
        dataGeneration={"teacher": {"modelPath": "/models/t", "replicas": 2, "nodesPerReplica": 2, "gpusPerReplica": 8}}
    )
    servers, service = builders.teacher_objects(run)
    assert servers["spec"]["replicas"] == 4
    container = servers["spec"]["template"]["spec"]["containers"][0]
    command = container["command"]
    assert command[:2] == ["longalign", "teacher-server"] and "--" in command
    assert command[command.index("--leader") + 1] == "r-teacher-{index}.r-teacher.ns.svc"
    assert command[command.index("--") + 1 :][:3] == ["python", "-m", "vllm.entrypoints.openai.api_server"]
    assert container["readinessProbe"]["exec"]["command"][-1] == "--probe"
    index_env = next(e for e in container["env"] if e["name"] == "POD_INDEX")
    assert index_env["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['apps.kubernetes.io/pod-index']"
    # Pods resolve their leader before it is ready, and the generator talks to the leaders only.
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert {p["port"] for p in service["spec"]["ports"]} == {builders.VLLM_PORT, builders.RAY_PORT}
    generator = builders.stage_objects(run, "dataGeneration", 1)[-1]
    urls = next(e["value"] for e in env_of(generator) if e["name"] == "LONGALIGN_TEACHER_URL").split(",")
    assert [u.split(".")[0] for u in urls] == ["http://r-teacher-0", "http://r-teacher-2"]


def test_a_single_node_teacher_runs_vllm_directly():
    run = make_run(dataGeneration={"teacher": {"modelPath": "/models/t"}})
    container = builders.teacher_objects(run)[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:3] == ["python", "-m", "vllm.entrypoints.openai.api_server"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"


@pytest.mark.parametrize("nodes", [1, 2])
def test_the_teachers_extra_args_reach_its_vllm_server_after_the_operators_own(nodes):
    extra = ["--enforce-eager", "--gpu-memory-utilization", "0.85"]
    run = make_run(dataGeneration={"teacher": {"modelPath": "/models/t", "nodesPerReplica": nodes, "extraArgs": extra}})
    command = builders.teacher_objects(run)[0]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[-3:] == extra
    assert command.index("--enable-prefix-caching") < command.index("--enforce-eager")


def test_compiled_kernels_and_models_are_kept_on_the_checkpoints_volume_unless_the_user_places_them():
    run = make_run(
        dataGeneration={"teacher": {"modelPath": "/models/t", "replicas": 2}},
        evaluation={"needle": {}},
    )
    # A retried or preempted attempt finds what the last one compiled: the folders outlive the pods.
    [training] = [o for o in builders.stage_objects(run, "training", 2) if o["kind"] == "Job"]
    assert {"name": "TORCHINDUCTOR_CACHE_DIR", "value": "/checkpoints/r/compile-cache/training"} in env_of(training)
    evaluation = builders.stage_objects(run, "evaluation", 2)[-1]
    assert {"name": "VLLM_CACHE_ROOT", "value": "/checkpoints/r/compile-cache/evaluation"} in env_of(evaluation)
    # Each teacher pod has a folder of its own, by its stable name (defined before the path that uses it).
    teacher = [(e["name"], e.get("value", e.get("valueFrom"))) for e in env_of(builders.teacher_objects(run)[0])]
    assert teacher[:2] == [
        ("LONGALIGN_POD_NAME", {"fieldRef": {"fieldPath": "metadata.name"}}),
        ("VLLM_CACHE_ROOT", "/checkpoints/r/compile-cache/$(LONGALIGN_POD_NAME)"),
    ]
    mine = {"name": "TORCHINDUCTOR_CACHE_DIR", "value": "/scratch/inductor"}
    placed = make_run(training={"datasetPath": "/data/d.jsonl", "pod": {"env": [mine]}})
    assert [e for e in env_of(builders.training_job(placed, 1)) if e["name"] == "TORCHINDUCTOR_CACHE_DIR"] == [mine]
    with pytest.raises(ValueError, match="LONGALIGN_POD_NAME"):
        make_run(
            dataGeneration={
                "teacher": {"modelPath": "/models/t"},
                "pod": {"env": [{"name": "LONGALIGN_POD_NAME", "value": "x"}]},
            }
        )
