"""Kopf handlers: one daemon per run reconciles it, level-based, as soon as its spec or one of its children
changes and at least every ``LONGALIGN_RECONCILE_INTERVAL`` seconds (deadlines, stalls, TTL, live progress).

    longalign operator                       # all namespaces (but kube-system, kube-public, kube-node-lease)
    longalign operator --namespace team-a    # one namespace (repeatable)

A step reads the run and its children from watch-fed caches (Kopf indexes of Jobs, pods, claims and nodes: no API
reads, so a step costs nothing while nothing changes), asks the pure planner what to do, does it through the
gateway and patches the status only when it changed. Children are found by label, never remembered across
restarts: Kopf fills the indexes before any run is reconciled, so a restarted operator carries on where the last
one stopped without duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import fnmatch
import logging
import os
import socket
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import kopf

from longalign_operator.builders import LABEL_RUN, Run, run_name_problems, teacher_name
from longalign_operator.cache import (
    JOB_NAME_LABEL,
    assemble,
    job_record,
    merge_patch,
    pod_group,
    pod_record,
    workload_record,
)
from longalign_operator.gateway import Gateway
from longalign_operator.metrics import Metrics
from longalign_operator.plan import Observed, plan
from longalign_operator.spec import GROUP, PLURAL, VERSION, LongAlignRunSpec, SpecError, parse

INTERVAL = float(os.environ.get("LONGALIGN_RECONCILE_INTERVAL", "5"))
METRICS_PORT = int(os.environ.get("LONGALIGN_METRICS_PORT", "0"))
"""Serve Prometheus metrics on this port (0: off); `longalign operator --metrics-port` sets it."""
STALE_AFTER_S = max(60.0, 10 * INTERVAL)
"""Liveness fails when runs exist but none was reconciled for this long (e.g. a watch silently died)."""
WORKERS = 16
"""Reconcile steps run at once (their API calls block a thread; the steps themselves are short)."""
EXCLUDED = [
    n for n in os.environ.get("LONGALIGN_EXCLUDE_NAMESPACES", "kube-system,kube-public,kube-node-lease").split(",") if n
]
"""Namespaces (globs) whose runs are refused, with a status and an Event: pods made there could use what the
namespace holds (kube-system's Secrets, ...); `longalign operator --exclude-namespaces` sets it."""
KUEUE_WORKLOADS = ("kueue.x-k8s.io", "v1beta1", "workloads")
"""Kueue's Workloads, in the version every Kueue release since 0.3 serves (and 0.15 stores)."""
COMPONENT = "longalign-operator"
"""The reporting component of our Events (``From`` in ``kubectl describe``)."""


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Operator settings: our own annotation prefix, watch timeouts, Events only for warnings and ours."""
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = COMPONENT
    settings.posting.reporting_instance = os.environ.get("HOSTNAME") or socket.gethostname()
    settings.scanning.disabled = True  # no need to list CRDs and namespaces (and no RBAC for it)
    # A watch that silently stops delivering events is a known Kopf failure: bound every watch request.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # Kopf logs every handler's success: a line per pod event at scale. Warnings and errors still show.
    if not logging.getLogger("kopf").isEnabledFor(logging.DEBUG):
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    memo.gateway = Gateway(progress_every_s=INTERVAL, connections=WORKERS)
    memo.metrics = Metrics()  # shared by every handler (Kopf gives each object a shallow copy of the memo)
    memo.wakeups = {}  # (namespace, run name) -> asyncio.Event, set when the run needs a step now
    memo.pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="reconcile")
    if METRICS_PORT:
        memo.metrics.serve(METRICS_PORT)


class NoDiffBase(kopf.DiffBaseStorage):
    """No "last handled state": nothing here reacts to a diff (no on.create/update/delete handlers; the daemon
    reads the whole run each step), yet Kopf builds one, a deep copy, on every event of every watched object.
    At 200 runs x 16 pods that was a quarter of the event loop's time (py-spy, benchmarks/operator_scale.py).
    Kopf treats None as "no essence": no diff, nothing stored."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> None:  # type: ignore[override]
        return None

    def fetch(self, *, body: kopf.Body) -> None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: Any) -> None:
        return None


@kopf.on.probe(id="reconcile")
def reconciling(memo: kopf.Memo, **_: Any) -> dict[str, Any]:
    """Liveness: proves reconciliation still happens, not only that the process is up."""
    age = time.monotonic() - memo.metrics.last_reconcile_monotonic
    runs = len(memo.metrics.phases)
    if runs and age > STALE_AFTER_S:
        raise RuntimeError(f"no reconcile for {age:.0f} s while {runs} run(s) exist")
    return {"runs": runs, "seconds_since_last_reconcile": round(age, 1)}


# ------------------------------------------------------------------------------------- caches fed by watches
# Kopf's handler protocols type `namespace` as str | None (for cluster-wide kinds); these kinds are namespaced,
# so the handlers take a str, which mypy cannot know: hence the ignores below.
@kopf.index("batch", "v1", "jobs", labels={LABEL_RUN: kopf.PRESENT})  # type: ignore[arg-type]  # namespace: see above
async def run_jobs(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict:
    """Every run's Jobs, by (namespace, run)."""
    return {(namespace, labels[LABEL_RUN]): job_record(body)}


@kopf.index("v1", "pods", labels={LABEL_RUN: kopf.PRESENT})  # type: ignore[arg-type]  # namespace: see above
async def run_pods(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict:
    """Every run's pods, by (namespace, run), as (group, pod): the group is the Job's name, or the teacher's."""
    return {(namespace, labels[LABEL_RUN]): (pod_group(labels, labels[LABEL_RUN]), pod_record(body))}


@kopf.index("v1", "nodes")
async def nodes(name: str, status: kopf.Status, **_: Any) -> dict:
    """Each node's Ready condition status ("True", "False", "Unknown"), by name."""
    ready = next((c.get("status") for c in status.get("conditions") or [] if c.get("type") == "Ready"), "Unknown")
    return {name: ready}


@kopf.index("v1", "persistentvolumeclaims")  # type: ignore[arg-type]  # namespace: see above
async def claims(namespace: str, name: str, **_: Any) -> dict:
    """The claims that exist, by (namespace, name)."""
    return {(namespace, name): True}


@kopf.index(*KUEUE_WORKLOADS)  # type: ignore[arg-type]  # namespace: see above
async def job_workloads(namespace: str, body: kopf.Body, **_: Any) -> dict:
    """Kueue's Workloads, by (namespace, name of the Job each stands for). Watched only where Kueue's CRD is
    installed when the operator starts."""
    record = workload_record(body)
    return {} if record is None else {(namespace, record[0]): record[1]}


@kopf.on.event(*KUEUE_WORKLOADS)  # type: ignore[arg-type]  # namespace: see above
async def workload_changed(namespace: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Kueue admitted, queued or evicted a Job: step the run it belongs to (its name prefixes the Job's)."""
    if (record := workload_record(body)) is not None:
        for (ns, run), wake in memo.wakeups.items():
            if ns == namespace and record[0].startswith(f"{run}-"):
                wake.set()


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_RUN: kopf.PRESENT})  # type: ignore[arg-type]  # namespace: see above
async def job_changed(namespace: str, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    """A run's Job changed: step the run now."""
    _wake(memo, (namespace, labels[LABEL_RUN]))


@kopf.on.event("v1", "pods", labels={LABEL_RUN: kopf.PRESENT})  # type: ignore[arg-type]  # namespace: see above
async def pod_changed(
    event: kopf.RawEvent, namespace: str, labels: kopf.Labels, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    """A run's pod changed: step the run now. A Job pod going away unfinished is remembered (``GonePods``), with
    the states it passes through until it is gone."""
    run = labels[LABEL_RUN]
    if JOB_NAME_LABEL in labels and (event["type"] == "DELETED" or body["metadata"].get("deletionTimestamp")):
        pod, gone = pod_record(body, deleted=True), memo.gateway.gone
        # Once remembered, its last state is kept: a preempted training pod's summary says what it checkpointed.
        if pod.phase not in ("Succeeded", "Failed") or gone.remembers(namespace, run, pod.name):
            gone.record(namespace, run, labels[JOB_NAME_LABEL], pod)
    _wake(memo, (namespace, run))


@kopf.on.event("v1", "nodes")
async def node_changed(event: kopf.RawEvent, status: kopf.Status, memo: kopf.Memo, **_: Any) -> None:
    """A node went away or stopped being Ready: step every run (those with pods there fail the attempt)."""
    ready = next((c.get("status") for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    if event["type"] == "DELETED" or ready != "True":
        for wake in memo.wakeups.values():
            wake.set()


@kopf.on.event("v1", "persistentvolumeclaims")  # type: ignore[arg-type]  # namespace: see above
async def claim_changed(namespace: str, memo: kopf.Memo, **_: Any) -> None:
    """A claim appeared or went: step the namespace's runs that wait for one."""
    for (ns, _name), wake in memo.wakeups.items():
        if ns == namespace:
            wake.set()


@kopf.on.event(GROUP, VERSION, PLURAL)
async def run_changed(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A run's spec changed: step it now. A run was deleted: forget it."""
    meta = body["metadata"]
    key = (meta["namespace"], meta["name"])
    if event["type"] == "DELETED":
        memo.metrics.forget(meta["uid"])
        memo.gateway.forget(meta["uid"], meta["name"], meta["namespace"])
        memo.wakeups.pop(key, None)
    elif meta.get("generation") != (body.get("status") or {}).get("observedGeneration"):
        _wake(memo, key)


def _wake(memo: kopf.Memo, key: tuple[str, str]) -> None:
    if (wake := memo.wakeups.get(key)) is not None:
        wake.set()


# ------------------------------------------------------------------------------------------------ the loop
@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=5.0)  # type: ignore[arg-type]  # Kopf passes the indexes by name
async def drive(
    body: kopf.Body,
    memo: kopf.Memo,
    stopped: kopf.DaemonStopped,
    logger: kopf.Logger,
    run_jobs: kopf.Index,
    run_pods: kopf.Index,
    claims: kopf.Index,
    nodes: kopf.Index,
    job_workloads: kopf.Index,
    **_: Any,
) -> None:
    """Step the run whenever woken, and at least every INTERVAL seconds, until it is deleted."""
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    wake = memo.wakeups.setdefault(key, asyncio.Event())
    loop = asyncio.get_running_loop()
    while not stopped:
        wake.clear()
        context = contextvars.copy_context()  # lets kopf.event() post from the worker thread
        try:
            indexes = (run_jobs, run_pods, claims, nodes, job_workloads)
            await loop.run_in_executor(memo.pool, context.run, reconcile, body, memo, *indexes)
        except Exception:  # an API error or a bug: log it, keep the run's loop alive, try again later
            logger.exception("reconcile failed; retrying in %.0f s", INTERVAL)
            await stopped.wait(INTERVAL)
            continue
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=INTERVAL)


def reconcile(
    body: kopf.Body,
    memo: kopf.Memo,
    run_jobs: kopf.Index,
    run_pods: kopf.Index,
    claims: kopf.Index,
    nodes: kopf.Index,
    job_workloads: kopf.Index,
) -> None:
    """One level-based reconcile step of a LongAlignRun."""
    gateway: Gateway = memo.gateway
    meta = dict(body["metadata"])
    if meta.get("deletionTimestamp"):
        return
    status = gateway.written.current(meta["uid"], meta["resourceVersion"], _to_dict(body.get("status") or {}))
    if excluded := next((p for p in EXCLUDED if fnmatch.fnmatchcase(meta["namespace"], p)), None):
        _refuse(
            body,
            meta,
            status,
            gateway,
            "NamespaceExcluded",
            f"runs in namespace {meta['namespace']} are refused: this operator excludes {excluded!r} "
            "(longalign operator --exclude-namespaces; the chart's excludeNamespaces)",
        )
        return
    try:
        if problems := run_name_problems(meta["name"]):  # the CRD refuses these; a CRD older than the operator may not
            raise SpecError(problems)
        spec = parse(_to_dict(body["spec"]))
    except SpecError as e:
        _refuse(body, meta, status, gateway, "InvalidSpec", f"invalid spec: {e}")
        return
    observed = _observe(meta, status, spec, gateway, run_jobs, run_pods, claims, nodes, job_workloads)
    result = plan(observed)
    for kind, name in result.delete:
        gateway.delete(kind, name, meta["namespace"])
    for obj in result.create:
        gateway.create(obj)
    for event in result.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
    memo.metrics.observe(meta["uid"], result, datetime.now(UTC))
    new_status = result.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    if patch := merge_patch(status, new_status):
        gateway.patch_status(meta, patch)
    if result.delete_run:
        gateway.delete_run(meta["name"], meta["namespace"])


def _observe(
    meta: dict[str, Any],
    status: dict[str, Any],
    spec: LongAlignRunSpec,
    gateway: Gateway,
    run_jobs: kopf.Index,
    run_pods: kopf.Index,
    claims: kopf.Index,
    nodes: kopf.Index,
    job_workloads: kopf.Index,
) -> Observed:
    """The run and its children as the caches show them, corrected by this process's own recent writes."""
    ns, name = meta["namespace"], meta["name"]
    run = Run(name=name, namespace=ns, uid=meta["uid"], labels=dict(meta.get("labels") or {}), spec=spec)
    pods = gateway.gone.add_to(ns, name, run_pods.get((ns, name), ()))
    seen = assemble(run_jobs.get((ns, name), ()), pods)
    jobs = gateway.expectations.correct(ns, seen, name)
    jobs = {n: gateway.with_progress(j, ns) if j.state == "Active" else j for n, j in jobs.items()}
    jobs = {n: replace(j, workload=next(iter(job_workloads.get((ns, n), ())), None)) for n, j in jobs.items()}
    servers = tuple(sorted((p for group, p in pods if group == teacher_name(name)), key=lambda p: p.name))
    return Observed(
        run=run,
        status=status,
        generation=meta.get("generation", 0),
        now=datetime.now(UTC),
        jobs=jobs,
        missing=tuple(_missing(ns, spec, claims)),
        servers=servers,
        nodes=NodeStates(nodes) if len(nodes) else None,
    )


class NodeStates(Mapping[str, str]):
    """The nodes index as node name -> Ready status, read where the planner looks (no copy per step)."""

    def __init__(self, index: kopf.Index) -> None:
        self.index = index

    def __getitem__(self, name: str) -> str:
        return next(iter(self.index[name]))

    def __iter__(self) -> Iterator[str]:
        return iter(self.index)

    def __len__(self) -> int:
        return len(self.index)


def _missing(ns: str, spec: LongAlignRunSpec, claims: kopf.Index):
    """Describe each PersistentVolumeClaim the spec names that does not exist. (Secrets are not read: the
    operator has no right to; a missing one shows as the pod's CreateContainerConfigError.)"""
    for field, source in spec.storage:
        if source is not None and (ns, source.claim_name) not in claims:
            yield f"PersistentVolumeClaim {source.claim_name!r} (spec.storage.{field}.claimName)"


def _refuse(
    body: kopf.Body, meta: dict[str, Any], status: dict[str, Any], gateway: Gateway, reason: str, message: str
) -> None:
    """A run the operator will not start: Failed with the message, and one Warning Event."""
    new = {"phase": "Failed", "message": message}
    if status.get("phase") != "Failed":
        kopf.event(body, type="Warning", reason=reason, message=message)
    if patch := merge_patch({k: status.get(k) for k in new}, new):
        gateway.patch_status(meta, patch)


def _to_dict(value: Any) -> Any:
    """Kopf's read-only body views as plain dicts and lists."""
    if hasattr(value, "items"):
        return {k: _to_dict(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_dict(v) for v in value]
    return value
