"""What the operator knows of a run without asking the API server.

The watches (Kopf indexes of Jobs, pods and claims, and the run's own live body) lag a little behind what this
process has just done. A reconcile that follows its own write within milliseconds must not act on the older
picture (it would start an attempt whose Job it created a moment ago, or recreate one it just deleted), so,
like Kubernetes' own controllers, the operator remembers its recent writes until the watches show them:

- ``Expectations``: Jobs created or deleted and not yet seen so by the Job index;
- ``WrittenStatus``: the status last patched onto each run, used while the live body is older than it;
- ``GonePods``: Job pods seen deleted before they finished, kept after the pod index forgets them (the Job
  fails a moment later, and only the pod showed why).

Also here: reducing Job and pod bodies (plain JSON, as the watches deliver them) to the planner's views.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from longalign_operator.builders import LABEL_STAGE, teacher_name
from longalign_operator.plan import JobView, PodView, WorkloadView

EXPECT_FOR_S = 120.0
"""Forget an expectation the watch never confirmed after this long (the object was changed by someone else)."""
WAITING_REASONS_OK = {"ContainerCreating", "PodInitializing"}
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"


def job_record(job: Mapping[str, Any]) -> JobView:
    """A Job body reduced to what the planner needs (its pods are added from the pod index)."""
    state, reason, message = "Active", None, None
    for c in (job.get("status") or {}).get("conditions") or []:
        # FailureTarget: the Job controller has decided the Job fails and is terminating its pods.
        if c.get("status") == "True" and c.get("type") in ("Complete", "Failed", "FailureTarget"):
            state = "Complete" if c["type"] == "Complete" else "Failed"
            reason, message = c.get("reason"), c.get("message")
    if state == "Active" and (job.get("spec") or {}).get("suspend"):
        state = "Suspended"
    status = job.get("status") or {}
    return JobView(
        name=job["metadata"]["name"],
        state=state,
        reason=reason,
        message=message,
        pods_left=(status.get("active") or 0) + (status.get("terminating") or 0),
        start_time=status.get("startTime"),
    )


def workload_record(workload: Mapping[str, Any]) -> tuple[str, WorkloadView] | None:
    """A Kueue Workload reduced to the name of the Job it stands for and its admission: admitted or why not
    (its QuotaReserved or else Admitted condition), and the Evicted condition when Kueue evicts it.

    >>> job, view = workload_record({"metadata": {"ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job",
    ...     "name": "r-train-1"}]}, "status": {"conditions": [{"type": "QuotaReserved", "status": "False",
    ...     "reason": "Pending", "message": "insufficient unused quota for nvidia.com/gpu"}]}})
    >>> job, view.admitted, view.reason, view.message, view.evicted
    ('r-train-1', False, 'Pending', 'insufficient unused quota for nvidia.com/gpu', None)
    """
    owner = next(
        (
            o["name"]
            for o in (workload.get("metadata") or {}).get("ownerReferences") or []
            if o.get("apiVersion") == "batch/v1" and o.get("kind") == "Job"
        ),
        None,
    )
    if owner is None:
        return None
    conditions = {c.get("type"): c for c in (workload.get("status") or {}).get("conditions") or []}
    admitted = (conditions.get("Admitted") or {}).get("status") == "True"
    waiting = next(
        (c for t in ("QuotaReserved", "Admitted") if (c := conditions.get(t)) and c.get("status") != "True"), None
    )
    evicted = conditions.get("Evicted")
    return owner, WorkloadView(
        admitted=admitted,
        reason=None if admitted or waiting is None else waiting.get("reason"),
        message=None if admitted or waiting is None else waiting.get("message"),
        evicted=(evicted.get("reason") or "Evicted", evicted.get("message") or "")
        if evicted and evicted.get("status") == "True"
        else None,
    )


def pod_record(pod: Mapping[str, Any], deleted: bool = False) -> PodView:
    """A pod body reduced to its phase, why it is not running, how its container ended, where it runs and
    whether Kubernetes is ending it (``deleted``: the pod is known to be gone)."""
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    reason = message = termination = exit_code = exit_reason = disruption = None
    ready = False
    for c in status.get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False":
            reason, message = c.get("reason"), c.get("message")
        elif c.get("type") == "Ready":
            ready = c.get("status") == "True"
        elif c.get("type") == "DisruptionTarget" and c.get("status") == "True":
            disruption = (c.get("reason") or "DisruptionTarget", c.get("message") or "")
    if phase == "Failed" and status.get("reason") and disruption is None:  # e.g. Evicted by the kubelet
        disruption = (status["reason"], status.get("message") or "")
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        waiting, terminated = state.get("waiting"), state.get("terminated")
        if waiting and waiting.get("reason") and waiting["reason"] not in WAITING_REASONS_OK:
            reason, message = waiting["reason"], waiting.get("message")
        if terminated:
            termination, exit_code, exit_reason = (
                terminated.get("message"),
                terminated.get("exitCode"),
                terminated.get("reason"),
            )
    meta = pod.get("metadata") or {}
    return PodView(
        name=meta["name"],
        phase=phase,
        reason=reason,
        message=message,
        termination_message=termination,
        exit_code=exit_code,
        exit_reason=exit_reason,
        node=(pod.get("spec") or {}).get("nodeName"),
        ready=ready,
        deleted=deleted or bool(meta.get("deletionTimestamp")),
        disruption=disruption,
    )


def pod_group(labels: Mapping[str, str], run: str) -> str | None:
    """The group a run's pod belongs to: its Job's name, or the teacher's StatefulSet name."""
    if JOB_NAME_LABEL in labels:
        return labels[JOB_NAME_LABEL]
    return teacher_name(run) if labels.get(LABEL_STAGE) == "teacher" else None


def assemble(jobs: Iterable[JobView], pods: Iterable[tuple[str, PodView]]) -> dict[str, JobView]:
    """Jobs by name, each with its pods (``pods`` are (job name, pod) pairs), pods sorted by name.

    >>> out = assemble([JobView("r-train-1", "Active")], [("r-train-1", PodView("r-train-1-1", "Running")),
    ...                                                   ("r-train-1", PodView("r-train-1-0", "Running")),
    ...                                                   ("r-train-0", PodView("r-train-0-0", "Failed"))])
    >>> [p.name for p in out["r-train-1"].pods]
    ['r-train-1-0', 'r-train-1-1']
    """
    by_job: dict[str, list[PodView]] = {}
    for job_name, pod in pods:
        by_job.setdefault(job_name, []).append(pod)
    return {j.name: replace(j, pods=tuple(sorted(by_job.get(j.name, ()), key=lambda p: p.name))) for j in jobs}


class Expectations:
    """Jobs this process created or deleted that the Job index does not show so yet (thread-safe)."""

    def __init__(self, clock=time.monotonic) -> None:
        self._created: dict[tuple[str, str], float] = {}
        self._deleted: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def created(self, namespace: str, name: str) -> None:
        """A Job was created (or found existing) by this process."""
        with self._lock:
            self._deleted.pop((namespace, name), None)
            self._created[(namespace, name)] = self._clock()

    def deleted(self, namespace: str, name: str) -> None:
        """A Job was deleted (or found gone) by this process."""
        with self._lock:
            self._created.pop((namespace, name), None)
            self._deleted[(namespace, name)] = self._clock()

    def correct(self, namespace: str, jobs: dict[str, JobView], run_name: str) -> dict[str, JobView]:
        """The run's Jobs as the index shows them, corrected by what this process did since: a Job created
        but not yet seen appears Active without pods, a deleted one that is still seen disappears.

        >>> e = Expectations(clock=lambda: 0.0)
        >>> e.created("ns", "r-train-2"); e.deleted("ns", "r-train-1")
        >>> seen = {"r-train-1": JobView("r-train-1", "Failed")}
        >>> sorted(e.correct("ns", seen, "r"))
        ['r-train-2']
        >>> sorted(e.correct("ns", {"r-train-2": JobView("r-train-2", "Active")}, "r"))  # caught up: forgotten
        ['r-train-2']
        >>> e.correct("ns", {}, "r")
        {}
        """
        now, prefix, out = self._clock(), f"{run_name}-", dict(jobs)
        with self._lock:
            for (ns, name), since in list(self._created.items()):
                if ns != namespace or not name.startswith(prefix):
                    continue
                if name in jobs or now - since > EXPECT_FOR_S:
                    del self._created[(ns, name)]
                else:
                    out[name] = JobView(name=name, state="Active")
            for (ns, name), since in list(self._deleted.items()):
                if ns != namespace or not name.startswith(prefix):
                    continue
                if name not in jobs or now - since > EXPECT_FOR_S:
                    del self._deleted[(ns, name)]
                else:
                    out.pop(name, None)
        return out


class GonePods:
    """Job pods seen deleted before they finished, by (namespace, run), for ``EXPECT_FOR_S`` (thread-safe)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._pods: dict[tuple[str, str], dict[str, tuple[float, str, PodView]]] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def record(self, namespace: str, run: str, job: str, pod: PodView) -> None:
        """Remember a pod of ``job`` that is being deleted (or was) while it had not finished."""
        with self._lock:
            self._pods.setdefault((namespace, run), {})[pod.name] = (self._clock(), job, replace(pod, deleted=True))

    def remembers(self, namespace: str, run: str, pod: str) -> bool:
        """Whether pod ``pod`` of the run is remembered (its later states, e.g. how it stopped, replace it)."""
        with self._lock:
            return pod in self._pods.get((namespace, run), {})

    def add_to(self, namespace: str, run: str, pods: Iterable[tuple[str, PodView]]) -> list[tuple[str, PodView]]:
        """``pods`` ((job, pod) pairs from the index) plus the remembered ones the index no longer holds.

        >>> gone = GonePods(clock=lambda: 0.0)
        >>> gone.record("ns", "r", "r-train-1", PodView("r-train-1-0", "Running"))
        >>> seen = [("r-train-1", PodView("r-train-1-1", "Running"))]
        >>> [(job, p.name, p.deleted) for job, p in gone.add_to("ns", "r", seen)]
        [('r-train-1', 'r-train-1-1', False), ('r-train-1', 'r-train-1-0', True)]
        """
        out = list(pods)
        now, present = self._clock(), {pod.name for _, pod in out}
        with self._lock:
            remembered = self._pods.get((namespace, run), {})
            for name, (since, job, pod) in list(remembered.items()):
                if now - since > EXPECT_FOR_S:
                    del remembered[name]
                elif name not in present:
                    out.append((job, pod))
        return out

    def forget(self, namespace: str, run: str) -> None:
        """The run is gone."""
        with self._lock:
            self._pods.pop((namespace, run), None)


class WrittenStatus:
    """The status this process last wrote to each run, with the resourceVersion the write produced."""

    def __init__(self) -> None:
        self._written: dict[str, tuple[int, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def record(self, uid: str, resource_version: str, status: dict[str, Any]) -> None:
        """Remember a status patch's result."""
        with self._lock:
            self._written[uid] = (int(resource_version), status)

    def current(self, uid: str, resource_version: str, status: dict[str, Any]) -> dict[str, Any]:
        """The run's status: the live body's, unless this process wrote a newer one the watch has not delivered.

        resourceVersions are compared as integers: the API server's are etcd revisions (Kubernetes' own
        watch cache relies on the same).

        >>> w = WrittenStatus(); w.record("u", "12", {"phase": "Training"})
        >>> w.current("u", "11", {"phase": "Pending"}), w.current("u", "12", {"phase": "Training"})
        ({'phase': 'Training'}, {'phase': 'Training'})
        >>> w.current("u", "15", {"phase": "Suspended"})
        {'phase': 'Suspended'}
        """
        with self._lock:
            written = self._written.get(uid)
            if written is not None and int(resource_version) < written[0]:
                return written[1]
            self._written.pop(uid, None)
            return status

    def forget(self, uid: str) -> None:
        """The run is gone."""
        with self._lock:
            self._written.pop(uid, None)


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns ``old`` into ``new``: changed keys, removed ones as null. A
    null in ``new`` means absent, as the stored object has it (a merge patch cannot store one): a stage's
    setting, copied from each progress line with its nulls, is not patched again at every reconcile.

    >>> merge_patch({"eta": "5m", "stages": {"t": {"a": 1, "b": 2}}}, {"stages": {"t": {"a": 1, "b": 3}}})
    {'stages': {'t': {'b': 3}}, 'eta': None}
    >>> merge_patch({"setting": {"a": 1}}, {"setting": {"a": 1, "b": None}})
    {}
    """
    patch: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if value is None:
            if key in old:
                patch[key] = None
        elif isinstance(value, Mapping) and isinstance(before, Mapping):
            inner = merge_patch(before, value)
            if inner:
                patch[key] = inner
        elif value != before or key not in old:
            patch[key] = value
    for key in old:
        if key not in new:
            patch[key] = None
    return patch
