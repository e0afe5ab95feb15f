"""The pure planner: (run, its status, what exists now) -> (objects to create, to delete, next status, events).

Same input, same output, no I/O: a restarted operator that observes the same children makes the same
decisions, so it never creates duplicates. The stages run in order; for the current stage the planner looks
at its attempt's Job and pods and decides:

    no Job yet ............ start attempt n+1 (status records the attempt before the Job is created)
    Job complete .......... stage Succeeded, summary from the pod's termination message, next stage
    Job failed ............ retry (new attempt) while failures <= backoffLimit, else the run Fails
    pods not all running .. Queued / Starting with the pods' reason; past startupDeadlineSeconds the attempt
                            is deleted (releasing every GPU it holds) and counts as a failure
    spec.suspend .......... delete the active attempt; resuming starts a new attempt (not a failure)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, NamedTuple

from longalign_operator import builders
from longalign_operator.builders import Run
from longalign_operator.spec import StageOptions
from longalign_operator.status import Condition, LongAlignRunStatus, Phase, StageState, StageStatus

ORDER = ("dataGeneration", "training", "evaluation")
PHASE: dict[str, Phase] = {"dataGeneration": "GeneratingData", "training": "Training", "evaluation": "Evaluating"}
ATTR = {"dataGeneration": "data_generation", "training": "training", "evaluation": "evaluation"}
# Exit codes of the stage commands that no retry can fix: 2 a config the stage refuses, 3 a checkpoint that
# cannot be served. Any other failure (crash, OOM, lost node, preemption) is retried up to backoffLimit.
TERMINAL_EXIT_CODES = {2: "InvalidStageConfig", 3: "CheckpointUnusable"}
START_FAILURES = {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError",
                  "CreateContainerError"}


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


@dataclass(frozen=True)
class JobView:
    """One attempt's Job as observed."""

    name: str
    state: str
    """Active, Suspended, Complete or Failed."""
    reason: str | None = None
    message: str | None = None
    pods: tuple[PodView, ...] = ()
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
        if not _advance(obs, p, stage, options, st):
            break
    else:
        status.phase, status.current_stage = "Succeeded", None
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
    if job.state == "Failed":
        failed_pod = next((pod for pod in job.pods if pod.phase == "Failed"), None)
        detail = _failure_detail(job, failed_pod)
        terminal = TERMINAL_EXIT_CODES.get(failed_pod.exit_code) if failed_pod and failed_pod.exit_code else None
        _fail_attempt(obs, p, stage, options, st, terminal or job.reason or "Failed", detail, delete=None,
                      terminal=terminal is not None)
        return False
    _observe_active(obs, p, stage, options, st, job)
    return False


def _start_attempt(obs: Observed, p: Plan, stage: str, st: StageStatus) -> None:
    st.attempts += 1
    st.state, st.reason, st.message = "Starting", "Creating", f"attempt {st.attempts}"
    st.start_time = ts(obs.now)
    st.end_time = None
    p.create += builders.stage_objects(obs.run, stage, st.attempts)
    p.status.message = f"{stage}: starting attempt {st.attempts}"
    p.status.progress, p.status.eta = "0%", None
    p.events.append(Event("Normal", "StageStarted", f"{stage}: attempt {st.attempts} started", stage))


def _succeed(obs: Observed, p: Plan, stage: str, st: StageStatus, job: JobView) -> None:
    st.state, st.reason, st.message = "Succeeded", "Completed", None
    st.end_time = ts(obs.now)
    st.progress_percent, st.eta_seconds = 100.0, None
    summary = _summary(job)
    if summary is not None:
        st.summary = summary
        _record_results(p.status, stage, summary)
    if stage == "dataGeneration":
        name = builders.teacher_name(obs.run.name)
        p.delete += [("StatefulSet", name), ("Service", name)]
    p.events.append(Event("Normal", "StageSucceeded", f"{stage}: succeeded on attempt {st.attempts}", stage))


def _fail_attempt(obs: Observed, p: Plan, stage: str, options: StageOptions, st: StageStatus, reason: str, detail: str,
                  delete: str | None, terminal: bool = False) -> None:
    st.failures += 1
    if delete:
        p.delete.append(("Job", delete))
    if terminal or st.failures > options.backoff_limit:
        st.state, st.reason, st.message = "Failed", reason, detail
        st.end_time = ts(obs.now)
        p.status.phase = "Failed"
        p.status.completion_time = ts(obs.now)
        p.status.message = f"{stage} failed after {st.attempts} attempt(s): {reason}: {detail}"
        p.events.append(Event("Warning", "StageFailed", p.status.message, stage))
        return
    p.events.append(Event("Warning", "StageRetrying",
                          f"{stage}: attempt {st.attempts} failed ({reason}: {detail}); retrying "
                          f"({st.failures}/{options.backoff_limit} retries used)", stage))
    _start_attempt(obs, p, stage, st)


def _observe_active(obs: Observed, p: Plan, stage: str, options: StageOptions, st: StageStatus, job: JobView) -> None:
    state: StageState
    reason: str | None
    message: str | None
    if job.state == "Suspended":
        state, reason, message = "Queued", "WaitingForAdmission", "the Job waits for a queue (Kueue) to admit it"
    else:
        blocked = [pod for pod in job.pods if pod.phase == "Pending" and pod.reason]
        if blocked:
            pod = blocked[0]
            state = "Queued" if pod.reason == "Unschedulable" else "Starting"
            reason, message = pod.reason, f"{pod.name}: {pod.message or pod.reason}"
        elif job.pods and all(pod.phase == "Running" for pod in job.pods):
            state, reason, message = "Running", "Running", None
        else:
            state, reason, message = "Starting", "PodsStarting", None
    if state != "Running" and st.start_time:
        waited = (obs.now - parse_time(st.start_time)).total_seconds()
        if waited > options.startup_deadline_seconds:
            detail = f"not all pods running after {int(waited)} s ({reason}: {message})"
            _fail_attempt(obs, p, stage, options, st, "StartupDeadlineExceeded", detail, delete=job.name)
            return
    if state == "Running":
        _record_progress(p, st, job)
        quiet_since = job.progress_time or st.start_time
        quiet = (obs.now - parse_time(quiet_since)).total_seconds() if quiet_since else 0
        if quiet > options.stall_seconds:
            state, reason, message = "Stalled", "NoProgress", f"no progress reported for {int(quiet)} s"
    if (st.state, st.reason) != (state, reason):
        warning = reason in START_FAILURES or reason in ("Unschedulable", "NoProgress")
        p.events.append(Event("Warning" if warning else "Normal", f"Stage{state}", f"{stage}: {message or state}",
                              stage))
    st.state, st.reason, st.message = state, reason, message
    p.status.message = f"{stage}: {message or state.lower()}"


def _record_progress(p: Plan, st: StageStatus, job: JobView) -> None:
    """Copy the stage's latest progress line into the stage status and the run's headline columns."""
    line = job.progress
    if not line or not line.get("total"):
        return
    st.progress_percent = round(100.0 * line["done"] / line["total"], 1)
    st.eta_seconds = line.get("eta_s")
    st.metrics = {k: v for k, v in (line.get("metrics") or {}).items() if isinstance(v, (int, float)) or v is None}
    st.last_progress_time = job.progress_time
    p.status.progress = f"{st.progress_percent:.0f}%"
    p.status.eta = None if st.eta_seconds is None else format_duration(st.eta_seconds)


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
        if pod.termination_message:
            try:
                value = json.loads(pod.termination_message)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None


def _record_results(status: LongAlignRunStatus, stage: str, summary: dict[str, Any]) -> None:
    r = status.results
    pick = {
        "dataGeneration": {"samples_generated": "samples"},
        "training": {"final_loss": "final_loss", "tokens_per_second": "tokens_per_s", "mfu": "mfu",
                     "checkpoint_path": "export", "last_checkpoint_step": "steps"},
        "evaluation": {"long_bench_chat_score": "longbench_chat_score", "needle_accuracy": "needle_accuracy"},
    }[stage]
    for attr, key in pick.items():
        if summary.get(key) is not None:
            setattr(r, attr, summary[key])


def _failure_detail(job: JobView, pod: PodView | None) -> str:
    parts = []
    if pod is not None:
        parts.append(f"pod {pod.name} exited with code {pod.exit_code}")
        if pod.termination_message:
            parts.append("last output: " + pod.termination_message.strip()[-500:])
    elif job.message:
        parts.append(job.message)
    return "; ".join(parts) or "the stage's Job failed"


def _set_condition(obs: Observed, status: LongAlignRunStatus, type_: str, value: bool, reason: str,
                   message: str = "") -> None:
    new: Literal["True", "False"] = "True" if value else "False"
    for c in status.conditions:
        if c.type == type_:
            if (c.status, c.reason, c.message) != (new, reason, message):
                if c.status != new:
                    c.last_transition_time = ts(obs.now)
                c.status, c.reason, c.message = new, reason, message
            c.observed_generation = obs.generation
            return
    status.conditions.append(Condition(type=type_, status=new, reason=reason, message=message,
                                       last_transition_time=ts(obs.now), observed_generation=obs.generation))


def _finish_conditions(obs: Observed, p: Plan) -> Plan:
    s = p.status
    _set_condition(obs, s, "Succeeded", s.phase == "Succeeded", s.phase)
    _set_condition(obs, s, "Failed", s.phase == "Failed", s.phase, (s.message or "") if s.phase == "Failed" else "")
    _set_condition(obs, s, "Suspended", s.phase == "Suspended", "Suspended" if s.phase == "Suspended" else "Active")
    return p


def parse_time(text: str) -> datetime:
    """A status timestamp (RFC 3339, UTC) as an aware datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
