"""The pure planner: (run, its status, what exists now) -> (objects to create, to delete, next status, events).

Same input, same output, no I/O: a restarted operator that observes the same children makes the same
decisions, so it never creates duplicates. The stages run in order; for the current stage the planner looks
at its attempt's Job and pods and decides:

    no Job yet ............ start attempt n+1 (status records the attempt before the Job is created)
    Job complete .......... stage Succeeded, summary from the pod's termination message, next stage
    Job failed ............ retry (new attempt) while failures <= backoffLimit, else the run Fails; the reason
                            is the cause (``fault``): a lost node, an eviction, a deleted pod, an exit code
    a pod lost ............ the same at once, the Job deleted, without waiting for Kubernetes to fail it
                            (node deleted or not reporting, pod evicted, preempted or deleted)
    pods not all running .. Queued / Starting with the pods' reason; past startupDeadlineSeconds (counted from
                            the Job's start, its admission under Kueue) the attempt is deleted (releasing every
                            GPU it holds) and counts as a failure
    Job suspended ......... waiting for a queue (Kueue): Queued with Kueue's reason, for as long as it takes;
                            suspended after its admission (Kueue preempted it): Preempted, not a failure; once
                            its pods have stopped (checkpointing on SIGTERM) the Job is deleted and the next
                            attempt, queued again, resumes from the checkpoint
    spec.suspend .......... delete the active attempt; resuming starts a new attempt (not a failure)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, NamedTuple

from pydantic.alias_generators import to_camel

from longalign_operator import builders
from longalign_operator.builders import Run
from longalign_operator.spec import StageOptions
from longalign_operator.status import Condition, LongAlignRunStatus, Phase, StageState, StageStatus

ORDER = ("dataGeneration", "training", "evaluation")
PHASE: dict[str, Phase] = {"dataGeneration": "GeneratingData", "training": "Training", "evaluation": "Evaluating"}
ATTR = {"dataGeneration": "data_generation", "training": "training", "evaluation": "evaluation"}
# Exit codes of the stage commands that no retry can fix: 2 a config the stage refuses, 3 a checkpoint that
# cannot be served. Any other failure (crash, OOM, lost node, preemption) is retried up to backoffLimit.
TERMINAL_EXIT_CODES = {2: "InvalidStageConfig", 3: "CheckpointUnusable", 4: "VolumeFull"}
START_FAILURES = {
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "CrashLoopBackOff",
}
# The reasons of a pod's DisruptionTarget condition (and of a kubelet eviction), as the stage's reason.
DISRUPTIONS = {
    "DeletionByPodGC": "NodeLost",
    "DeletionByTaintManager": "NodeLost",
    "Evicted": "PodEvicted",
    "EvictionByEvictionAPI": "PodEvicted",
    "PreemptionByScheduler": "PodPreempted",
    "TerminationByKubelet": "PodTerminatedByKubelet",
}


@dataclass(frozen=True)
class PodView:
    """What the planner needs to know of one pod."""

    name: str
    phase: str
    reason: str | None = None
    """Why it is not running: Unschedulable, ImagePullBackOff, ... (None when nothing is wrong)."""
    message: str | None = None
    termination_message: str | None = None
    exit_code: int | None = None
    exit_reason: str | None = None
    """How its container ended: Error, OOMKilled, ..."""
    node: str | None = None
    """The node it was placed on."""
    ready: bool = False
    deleted: bool = False
    """Being deleted, or seen deleted, before it finished."""
    disruption: tuple[str, str] | None = None
    """(reason, message) of its DisruptionTarget condition or eviction: why Kubernetes ends it."""


@dataclass(frozen=True)
class WorkloadView:
    """What Kueue says of a Job: its Workload's admission conditions."""

    admitted: bool = False
    reason: str | None = None
    """Why it is not admitted (the QuotaReserved, else Admitted condition): Pending, Inadmissible, ..."""
    message: str | None = None
    """Kueue's words for it, e.g. insufficient unused quota for nvidia.com/gpu in flavor ..., 8 more needed."""
    evicted: tuple[str, str] | None = None
    """(reason, message) of its Evicted condition: Preempted, PodsReadyTimeout, ClusterQueueStopped, ..."""


@dataclass(frozen=True)
class JobView:
    """One attempt's Job as observed."""

    name: str
    state: str
    """Active, Suspended, Complete or Failed."""
    reason: str | None = None
    message: str | None = None
    pods: tuple[PodView, ...] = ()
    pods_left: int = 0
    """Its pods that have not stopped yet (the Job's active and terminating counts)."""
    start_time: str | None = None
    """When it started, or resumed from suspension (its admission under Kueue); None while suspended."""
    workload: WorkloadView | None = None
    """Its Kueue Workload, when Kueue manages it."""
    progress: dict[str, Any] | None = None
    """The newest progress line its lead pod printed (the stage contract), if any."""
    progress_time: str | None = None
    """When that line was printed."""


@dataclass(frozen=True)
class Observed:
    """A frozen snapshot of a run and its children."""

    run: Run
    status: dict[str, Any]
    generation: int
    now: datetime
    jobs: dict[str, JobView] = field(default_factory=dict)
    missing: tuple[str, ...] = ()
    """Objects the spec refers to that do not exist (PVCs, Secrets), each naming the field that refers to it."""
    servers: tuple[PodView, ...] = ()
    """The teacher servers' pods (its StatefulSet's), while data generation runs."""
    nodes: Mapping[str, str] | None = None
    """Each node's Ready condition status ("True", "False", "Unknown"); None when nodes are not known."""


class Fault(NamedTuple):
    """Why an attempt cannot succeed any more."""

    reason: str
    message: str
    pod: PodView


class Event(NamedTuple):
    """A Kubernetes Event to post on the run."""

    type: str
    """Normal or Warning."""
    reason: str
    message: str
    stage: str | None = None
    """The stage it is about, if any."""


@dataclass
class Plan:
    """What to do now."""

    status: LongAlignRunStatus
    create: list[dict[str, Any]] = field(default_factory=list)
    delete: list[tuple[str, str]] = field(default_factory=list)
    """(kind, name) pairs."""
    events: list[Event] = field(default_factory=list)
    delete_run: bool = False


def ts(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def plan(obs: Observed) -> Plan:
    """Decide the next step of a run from a snapshot; see the module docstring."""
    status = LongAlignRunStatus.model_validate(obs.status or {})
    status.observed_generation = obs.generation
    p = Plan(status=status)
    spec = obs.run.spec
    if status.phase in ("Succeeded", "Failed"):
        _expire(obs, p)
        return _finish_conditions(obs, p)

    if spec.suspend:
        _suspend(obs, p)
        return _finish_conditions(obs, p)
    if status.phase == "Suspended":
        p.events.append(Event("Normal", "Resumed", "run resumed; the active stage starts a new attempt"))
    if obs.missing:
        message = "waiting for " + "; ".join(obs.missing)
        if status.message != message:
            p.events.append(Event("Warning", "MissingDependency", message))
        status.phase, status.message = "Pending", message
        _set_condition(obs, status, "DependenciesReady", False, "NotFound", message)
        return _finish_conditions(obs, p)
    _set_condition(obs, status, "DependenciesReady", True, "Found")

    for stage in ORDER:
        options = getattr(spec, ATTR[stage])
        st = _stage(status, stage)
        if not options.enabled:
            st.state = "Skipped"
            continue
        if st.state == "Succeeded":
            continue
        status.phase, status.current_stage = PHASE[stage], stage
        advanced = _advance(obs, p, stage, options, st)
        status.attempt = st.attempts
        if not advanced:
            break
    else:
        status.phase, status.current_stage, status.attempt = "Succeeded", None, None
        status.completion_time = ts(obs.now)
        status.message = "all stages succeeded"
        status.progress, status.eta = "100%", None
        p.events.append(Event("Normal", "Succeeded", "run succeeded"))
    return _finish_conditions(obs, p)


def _stage(status: LongAlignRunStatus, stage: str) -> StageStatus:
    attr = ATTR[stage]
    if getattr(status.stages, attr) is None:
        setattr(status.stages, attr, StageStatus())
    stage_status: StageStatus = getattr(status.stages, attr)
    return stage_status


def _advance(obs: Observed, p: Plan, stage: str, options: StageOptions, st: StageStatus) -> bool:
    """Move one stage forward; True when it has succeeded and the next stage may start in this same pass."""
    job = obs.jobs.get(builders.attempt_name(obs.run.name, stage, st.attempts)) if st.attempts else None
    if job is None:
        _start_attempt(obs, p, stage, st)
        return False
    if job.state == "Complete":
        _succeed(obs, p, stage, st, job)
        return True
    if job.state == "Suspended":
        _suspended(obs, p, stage, st, job)
        return False
    found = fault(job.pods, obs.nodes)
    # A pod that failed on its own fails the Job within moments: wait for that and keep the Job (and the pod's
    # log); a pod Kubernetes lost or took away ends the attempt now, deleting the Job and the rest of its pods.
    if job.state == "Failed" or (found is not None and found.pod.phase != "Failed"):
        if found is None or (job.state == "Failed" and job.reason not in (None, "BackoffLimitExceeded")):
            reason, detail = job.reason or "Failed", job.message or "the stage's Job failed"
        else:
            reason, detail = found.reason, found.message
        code = stated_exit_code(found.pod) if found is not None and found.pod.phase == "Failed" else None
        terminal = TERMINAL_EXIT_CODES.get(code) if code is not None else None
        _fail_attempt(
            obs,
            p,
            stage,
            options,
            st,
            terminal or reason,
            detail,
            delete=None if job.state == "Failed" else job.name,
            terminal=terminal is not None,
        )
        return False
    if st.state == "Preempted" and job.start_time is None:
        return False  # the attempt after a preemption, not admitted yet
    _observe_active(obs, p, stage, options, st, job)
    return False


def fault(pods: tuple[PodView, ...], nodes: Mapping[str, str] | None) -> Fault | None:
    """Why a pod group cannot succeed any more, from the pods' and nodes' own signals, or None.

    In order of cause: a pod's node was deleted or stopped reporting (NodeLost); Kubernetes is ending a pod
    (eviction, preemption, its node's pods garbage-collected: the DisruptionTarget condition); a container
    failed (its exit code and last output; a pod whose summary states a stop no retry can fix, before pods that
    failed because their peers went); a pod was deleted before it finished (PodDeleted).
    """
    unfinished = [pod for pod in pods if pod.phase not in ("Succeeded", "Failed")]
    for pod in unfinished:
        if nodes and pod.node and nodes.get(pod.node, "Deleted") in ("Deleted", "Unknown"):
            how = "was deleted" if pod.node not in nodes else "stopped reporting (Ready: Unknown)"
            return Fault("NodeLost", f"node {pod.node} {how} while pod {pod.name} ran on it", pod)
    for pod in pods:
        if pod.disruption is not None and pod.phase != "Succeeded":
            reason, message = pod.disruption
            return Fault(DISRUPTIONS.get(reason, reason), f"pod {pod.name}: {message or reason}", pod)
    failed = [pod for pod in pods if pod.phase == "Failed"]
    if failed:
        pod = min(failed, key=lambda pod: stated_exit_code(pod) not in TERMINAL_EXIT_CODES)  # stable: else pod order
        detail = f"pod {pod.name} exited with code {stated_exit_code(pod)}"
        error = _stated(pod).get("error")
        if isinstance(error, str):  # the stage's own words, whole (the summary's JSON would cut them short)
            detail += f": {error}"
        elif pod.termination_message:
            detail += "; last output: " + pod.termination_message.strip()[-500:]
        return Fault("OOMKilled" if pod.exit_reason == "OOMKilled" else "ContainerFailed", detail, pod)
    for pod in unfinished:
        if pod.deleted:
            return Fault("PodDeleted", f"pod {pod.name} was deleted before it finished", pod)
    return None


def _stated(pod: PodView) -> dict[str, Any]:
    """The summary a pod's stage command left as its termination message; empty when it left plain output."""
    try:
        summary = json.loads(pod.termination_message or "")
    except ValueError:
        return {}
    return summary if isinstance(summary, dict) else {}


def stated_exit_code(pod: PodView) -> int | None:
    """How a failed pod's stage command ended: the exit code its summary states (a training pod's container
    exits with torchrun's 1 whatever its workers returned), else the container's own."""
    stated = _stated(pod).get("exit_code")
    return stated if isinstance(stated, int) else pod.exit_code


def _start_attempt(obs: Observed, p: Plan, stage: str, st: StageStatus) -> None:
    if st.attempts >= builders.MAX_ATTEMPTS:
        _fail_stage(
            obs,
            p,
            stage,
            st,
            "TooManyAttempts",
            f"{st.attempts} attempts started, the most a stage may have (attempt numbers are part of names)",
        )
        return
    st.attempts += 1
    st.state, st.reason, st.message = "Starting", "Creating", f"attempt {st.attempts}"
    st.start_time = ts(obs.now)
    st.end_time = None
    p.create += builders.stage_objects(obs.run, stage, st.attempts, st.stop_seconds)
    if stage == "training":
        _set_grace_period(obs, p, st)
    p.status.message = f"{stage}: starting attempt {st.attempts}"
    p.status.progress, p.status.eta = "0%", None
    p.events.append(Event("Normal", "StageStarted", f"{stage}: attempt {st.attempts} started", stage))


def _set_grace_period(obs: Observed, p: Plan, st: StageStatus) -> None:
    """Record the new training attempt's grace period; warn when the spec's is shorter than what stopping
    was measured to need."""
    configured = obs.run.spec.training.termination_grace_period_seconds
    st.grace_period_seconds = builders.training_grace_seconds(configured, st.stop_seconds)
    needed = builders.training_grace_seconds(None, st.stop_seconds)
    if st.stop_seconds is not None and st.grace_period_seconds < needed:
        p.events.append(
            Event(
                "Warning",
                "GracePeriodShort",
                f"training: terminationGracePeriodSeconds {configured} may end a stopping pod before its "
                f"checkpoint is written (its slowest step and checkpoint took {st.stop_seconds:.0f} s): set "
                f"training.terminationGracePeriodSeconds to {needed} or more, or leave it unset",
                "training",
            )
        )


def _record_stop_cost(st: StageStatus, reported: Mapping[str, Any]) -> None:
    """Keep the largest stop cost the trainer reported (in a progress line's metrics or its summary): its
    slowest step plus its slowest checkpoint write."""
    step, checkpoint = reported.get("slowest_step_s"), reported.get("slowest_checkpoint_s")
    if isinstance(step, (int, float)) and isinstance(checkpoint, (int, float)):
        st.stop_seconds = round(max(st.stop_seconds or 0.0, float(step) + float(checkpoint)), 2)


def _succeed(obs: Observed, p: Plan, stage: str, st: StageStatus, job: JobView) -> None:
    st.state, st.reason, st.message = "Succeeded", "Completed", None
    st.end_time = ts(obs.now)
    st.progress_percent, st.eta_seconds = 100.0, None
    summary = _summary(job)
    if summary is not None:
        st.summary = summary
        _record_results(p.status, stage, summary)
        if stage == "training":
            _record_stop_cost(st, summary)
    if stage == "dataGeneration":
        name = builders.teacher_name(obs.run.name)
        p.delete += [("StatefulSet", name), ("Service", name)]
    p.events.append(Event("Normal", "StageSucceeded", f"{stage}: succeeded on attempt {st.attempts}", stage))


def _fail_attempt(
    obs: Observed,
    p: Plan,
    stage: str,
    options: StageOptions,
    st: StageStatus,
    reason: str,
    detail: str,
    delete: str | None,
    terminal: bool = False,
) -> None:
    st.failures += 1
    if delete:
        p.delete.append(("Job", delete))
    if terminal or st.failures > options.backoff_limit:
        _fail_stage(obs, p, stage, st, reason, detail)
        return
    p.events.append(
        Event(
            "Warning",
            "StageRetrying",
            f"{stage}: attempt {st.attempts} failed ({reason}: {detail}); retrying "
            f"({st.failures}/{options.backoff_limit} retries used)",
            stage,
        )
    )
    _start_attempt(obs, p, stage, st)


def _fail_stage(obs: Observed, p: Plan, stage: str, st: StageStatus, reason: str, detail: str) -> None:
    """The stage fails for good, and with it the run."""
    st.state, st.reason, st.message = "Failed", reason, detail
    st.end_time = ts(obs.now)
    p.status.phase = "Failed"
    p.status.completion_time = ts(obs.now)
    p.status.message = f"{stage} failed after {st.attempts} attempt(s): {reason}: {detail}"
    p.events.append(Event("Warning", "StageFailed", p.status.message, stage))


def _pods_state(
    pods: tuple[PodView, ...], expected: int, servers: tuple[PodView, ...] = (), expected_servers: int = 0
) -> tuple[StageState, str, str | None]:
    """(state, reason, message) of an attempt whose Job is active: its ``expected`` pods and, for data
    generation, the teacher servers' pods, which must all exist and be ready."""
    blocked = [(pod, pod.reason) for pod in (*pods, *servers) if pod.reason and pod.phase in ("Pending", "Running")]
    if blocked:
        pod, reason = blocked[0]
        return "Queued" if reason == "Unschedulable" else "Starting", reason, f"{pod.name}: {pod.message or reason}"
    if len(servers) < expected_servers:
        return "Starting", "TeacherPodsMissing", f"{len(servers)} of {expected_servers} teacher pods exist"
    if not all(pod.ready for pod in servers):
        ready = sum(pod.ready for pod in servers)
        return "Starting", "TeacherStarting", f"{ready} of {expected_servers} teacher servers ready"
    # Pods that already succeeded still count as running: the Job completes a moment later.
    if len(pods) >= expected and all(pod.phase in ("Running", "Succeeded") for pod in pods):
        return "Running", "Running", None
    return "Starting", "PodsStarting", None


def _observe_active(obs: Observed, p: Plan, stage: str, options: StageOptions, st: StageStatus, job: JobView) -> None:
    state: StageState
    reason: str
    message: str | None
    if stage == "dataGeneration":
        teacher = obs.run.spec.data_generation.teacher
        expected = teacher.replicas * teacher.nodes_per_replica if teacher else 0
        state, reason, message = _pods_state(job.pods, 1, obs.servers, expected)
    else:
        group = obs.run.spec.training.nodes if stage == "training" else 1
        state, reason, message = _pods_state(job.pods, group)
    started = job.start_time or st.start_time
    if state != "Running" and started:
        waited = (obs.now - parse_time(started)).total_seconds()
        if waited > options.startup_deadline_seconds:
            detail = f"not all pods running after {int(waited)} s ({reason}: {message})"
            _fail_attempt(obs, p, stage, options, st, "StartupDeadlineExceeded", detail, delete=job.name)
            return
    if state == "Running":
        _record_progress(p, stage, st, job)
        quiet_since = job.progress_time or st.start_time
        quiet = (obs.now - parse_time(quiet_since)).total_seconds() if quiet_since else 0
        if quiet > options.stall_seconds:
            state, reason, message = "Stalled", "NoProgress", f"no progress reported for {int(quiet)} s"
    warning = reason in START_FAILURES or reason in ("Unschedulable", "NoProgress")
    if st.state != state or (st.reason != reason and warning):  # a new state, or a new trouble in it
        p.events.append(
            Event("Warning" if warning else "Normal", f"Stage{state}", f"{stage}: {message or state}", stage)
        )
    st.state, st.reason, st.message = state, reason, message
    p.status.message = f"{stage}: {message or state.lower()}"


# A stage in these states had its Job admitted: a suspension now is a preemption, not a wait for admission
# (what tells when Kueue's Workload is not visible; its Evicted condition tells first).
ADMITTED = {"Running", "Stalled"}
# Evictions after which Kueue will not admit the Workload again by itself (it deactivated it): the Job stays.
DEACTIVATED = {"InactiveWorkload", "Deactivated", "MaximumExecutionTimeExceeded"}


def _suspended(obs: Observed, p: Plan, stage: str, st: StageStatus, job: JobView) -> None:
    """The attempt's Job is suspended: waiting for a queue to admit it, or preempted by it."""
    workload = job.workload
    evicted = workload.evicted if workload else None
    if evicted is None and st.state in ADMITTED:
        evicted = ("Suspended", "its Job was suspended while its pods ran")
    if evicted is not None and evicted[0] not in DEACTIVATED:
        _preempted(obs, p, stage, st, job, *evicted)
        return
    if st.state == "Preempted" and evicted is None:
        return  # the attempt after a preemption, waiting for admission: its message says so
    if evicted is not None:
        reason, message = evicted
    else:
        reason = (workload.reason if workload else None) or "WaitingForAdmission"
        message = (workload.message if workload else None) or "the Job waits for a queue (Kueue) to admit it"
    if (st.state, st.reason) != ("Queued", reason):
        p.events.append(Event("Normal", "StageQueued", f"{stage}: {message}", stage))
    st.state, st.reason, st.message = "Queued", reason, message
    p.status.message = f"{stage}: {message}"


def _preempted(obs: Observed, p: Plan, stage: str, st: StageStatus, job: JobView, reason: str, why: str) -> None:
    """Kueue evicted the admitted attempt (its Job suspended): not a failure. Once its pods have stopped (a
    training pod checkpoints the current step on SIGTERM) the Job is deleted and the next attempt is queued;
    it resumes from the checkpoint when admitted."""
    if st.state != "Preempted" or st.reason != reason:
        p.events.append(Event("Normal", "StagePreempted", f"{stage}: attempt {st.attempts} preempted ({why})", stage))
    if job.pods_left:
        st.state, st.reason = "Preempted", reason
        st.message = f"attempt {st.attempts} preempted ({why}); {job.pods_left} pod(s) stopping"
        p.status.message = f"{stage}: {st.message}"
        return
    summary = _summary(job)
    if stage == "training" and summary:
        _record_stop_cost(st, summary)
    steps = summary.get("steps") if summary and summary.get("preempted") else None
    if isinstance(steps, int):
        kept = f"{steps} steps kept"
        p.status.results.last_checkpoint_step = steps
    else:
        kept = "the latest checkpoint kept"
    st.preemptions += 1
    p.delete.append(("Job", job.name))
    preempted = st.attempts
    _start_attempt(obs, p, stage, st)
    st.state, st.reason = "Preempted", reason
    st.message = f"attempt {preempted} preempted; {kept}; attempt {st.attempts} resumes from it once admitted"
    p.events.append(Event("Normal", "StageRequeued", f"{stage}: {st.message}", stage))
    p.status.message = f"{stage}: {st.message}"


def _record_progress(p: Plan, stage: str, st: StageStatus, job: JobView) -> None:
    """Copy the stage's latest progress line into the stage status and the run's headline columns; a new
    setting is also told in an Event."""
    line = job.progress
    if not line or not line.get("total"):
        return
    st.progress_percent = round(100.0 * line["done"] / line["total"], 1)
    eta = line.get("eta_s")
    st.eta_seconds = None if eta is None else round(eta)
    if line.get("metrics"):  # a stage's first line (its setting, before any item ends) has none yet
        st.metrics = {to_camel(k): v for k, v in line["metrics"].items() if isinstance(v, (int, float)) or v is None}
    st.last_progress_time = job.progress_time
    if isinstance(setting := line.get("setting"), dict):
        told = (st.setting or {}).get("description")
        st.setting = setting
        if (description := setting.get("description")) and description != told:
            p.events.append(Event("Normal", "StageSetting", f"{stage}: {description}", stage))
    p.status.progress = f"{st.progress_percent:.0f}%"
    p.status.eta = None if st.eta_seconds is None else format_duration(st.eta_seconds)
    if line.get("stage") == "train":
        _record_stop_cost(st, line.get("metrics") or {})
        if isinstance(loss := (st.metrics or {}).get("loss"), (int, float)):
            p.status.loss = significant(loss)


def significant(value: float) -> str:
    """A loss for people: 4 significant digits.

    >>> [significant(v) for v in (6.940693378448486, 1.23, 0.000123456, 12345.6)]
    ['6.941', '1.23', '0.0001235', '1.235e+04']
    """
    return f"{value:.4g}"


def format_duration(seconds: float) -> str:
    """A short human duration for the ETA column.

    >>> [format_duration(s) for s in (30, 75, 4800, 90061)]
    ['30s', '1m15s', '1h20m', '25h1m']
    """
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60}s"
    return f"{s // 3600}h{s % 3600 // 60}m"


def _suspend(obs: Observed, p: Plan) -> None:
    status = p.status
    for stage in ORDER:
        st = getattr(status.stages, ATTR[stage])
        if st is None or st.state in ("Succeeded", "Failed", "Skipped", "Suspended", "Pending"):
            continue
        name = builders.attempt_name(obs.run.name, stage, st.attempts)
        if name in obs.jobs:
            p.delete.append(("Job", name))
        st.state, st.reason, st.message = "Suspended", "Suspended", "run suspended; its pods were deleted"
    if status.phase != "Suspended":
        p.events.append(Event("Normal", "Suspended", "run suspended: the active stage's pods are deleted"))
    status.phase, status.message = "Suspended", "suspended (set spec.suspend to false to continue)"


def _expire(obs: Observed, p: Plan) -> None:
    ttl = obs.run.spec.ttl_seconds_after_finished
    done = p.status.completion_time
    if ttl is not None and done and obs.now >= parse_time(done) + timedelta(seconds=ttl):
        p.delete_run = True
        p.events.append(Event("Normal", "Expired", f"deleting the run {ttl} s after it finished"))


def _summary(job: JobView) -> dict[str, Any] | None:
    """The stage's summary: the termination message of its first pod (index 0 for a pod group)."""
    for pod in sorted(job.pods, key=lambda x: x.name):
        if summary := _stated(pod):
            return summary
    return None


def _record_results(status: LongAlignRunStatus, stage: str, summary: dict[str, Any]) -> None:
    r = status.results
    pick = {
        "dataGeneration": {"samples_generated": "samples"},
        "training": {
            "final_loss": "final_loss",
            "tokens_per_second": "tokens_per_s",
            "mfu": "mfu",
            "checkpoint_path": "export",
            "last_checkpoint_step": "steps",
            "zero_stage": "zero_stage",
            "checkpoint_keeps": "checkpoint_keeps",
            "sequence_parallel_size": "sequence_parallel_size",
            "sequence_parallel_attention": "sequence_parallel_attention",
        },
        "evaluation": {"long_bench_chat_score": "longbench_chat_score", "needle_accuracy": "needle_accuracy"},
    }[stage]
    for attr, key in pick.items():
        if summary.get(key) is not None:
            setattr(r, attr, summary[key])
    if r.final_loss is not None:
        status.loss = significant(r.final_loss)
    if r.long_bench_chat_score is not None:
        status.score = f"{r.long_bench_chat_score:.2f}"


def _set_condition(
    obs: Observed,
    status: LongAlignRunStatus,
    type_: str,
    value: bool | Literal["True", "False", "Unknown"],
    reason: str,
    message: str = "",
) -> None:
    new: Literal["True", "False", "Unknown"] = value if isinstance(value, str) else "True" if value else "False"
    for c in status.conditions:
        if c.type == type_:
            if (c.status, c.reason, c.message) != (new, reason, message):
                if c.status != new:
                    c.last_transition_time = ts(obs.now)
                c.status, c.reason, c.message = new, reason, message
            c.observed_generation = obs.generation
            return
    status.conditions.append(
        Condition(
            type=type_,
            status=new,
            reason=reason,
            message=message,
            last_transition_time=ts(obs.now),
            observed_generation=obs.generation,
        )
    )


def _finish_conditions(obs: Observed, p: Plan) -> Plan:
    s = p.status
    # Unknown while the run is undecided (the Kubernetes convention), not False.
    decided: dict[str, Literal["True", "False"]] = {"Succeeded": "True", "Failed": "False"}
    _set_condition(obs, s, "Succeeded", decided.get(s.phase, "Unknown"), s.phase)
    _set_condition(obs, s, "Failed", s.phase == "Failed", s.phase, (s.message or "") if s.phase == "Failed" else "")
    _set_condition(obs, s, "Suspended", s.phase == "Suspended", "Suspended" if s.phase == "Suspended" else "Active")
    return p


def parse_time(text: str) -> datetime:
    """A status timestamp (RFC 3339, UTC) as an aware datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
