"""Kopf handlers: thin wrappers that run one reconcile step per run, level-based, on a timer.

    longalign operator                       # all namespaces
    longalign operator --namespace team-a    # one namespace (repeatable)

Each tick observes the run and its children, asks the pure planner what to do, does it through the gateway,
and patches the status only when it really changed. Children are found by label, never remembered, so a
restarted operator carries on where the last one stopped.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import datetime, timezone
from typing import Any

import kopf

from longalign_operator.gateway import Gateway
from longalign_operator.metrics import Metrics
from longalign_operator.plan import plan
from longalign_operator.spec import GROUP, PLURAL, VERSION, SpecError, parse

INTERVAL = float(os.environ.get("LONGALIGN_RECONCILE_INTERVAL", "5"))
METRICS_PORT = int(os.environ.get("LONGALIGN_METRICS_PORT", "0"))
"""Serve Prometheus metrics on this port (0: off); `longalign operator --metrics-port` sets it."""
STALE_AFTER_S = max(60.0, 10 * INTERVAL)
"""Liveness fails when runs exist but none was reconciled for this long (e.g. a watch silently died)."""


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Operator settings: our own annotation prefix, watch timeouts, Events only for warnings and ours."""
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.posting.level = logging.WARNING
    settings.scanning.disabled = True  # no need to list CRDs and namespaces (and no RBAC for it)
    # Reconcile steps are synchronous API calls; asyncio's default pool (cores + 4 threads) made 200 new runs
    # wait for each other (benchmarks/operator_scale.py).
    settings.execution.max_workers = 64
    # A watch that silently stops delivering events is a known Kopf failure: bound every watch request.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    memo.gateway = Gateway()
    memo.metrics = Metrics()  # shared by every handler (Kopf gives each object a shallow copy of the memo)
    if METRICS_PORT:
        memo.metrics.serve(METRICS_PORT)


@kopf.on.probe(id="reconcile")
def reconciling(memo: kopf.Memo, **_: Any) -> dict[str, Any]:
    """Liveness: proves reconciliation still happens, not only that the process is up."""
    age = time.monotonic() - memo.metrics.last_reconcile_monotonic
    runs = len(memo.metrics.phases)
    if runs and age > STALE_AFTER_S:
        raise RuntimeError(f"no reconcile for {age:.0f} s while {runs} run(s) exist")
    return {"runs": runs, "seconds_since_last_reconcile": round(age, 1)}


@kopf.on.event(GROUP, VERSION, PLURAL)
def forget_deleted(event: kopf.RawEvent, uid: str, memo: kopf.Memo, **_: Any) -> None:
    """Drop a deleted run from the metrics."""
    if event["type"] == "DELETED":
        memo.metrics.forget(uid)


@kopf.timer(GROUP, VERSION, PLURAL, interval=INTERVAL, backoff=max(INTERVAL, 5))
def reconcile(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    """One level-based reconcile step of a LongAlignRun."""
    gateway: Gateway = memo.gateway
    meta = body["metadata"]
    try:
        spec = parse(dict(body["spec"]))
    except SpecError as e:
        _invalid(body, patch, e)
        return
    plain = _plain(body)
    observed = gateway.observe(plain, spec)
    result = plan(observed)
    for kind, name in result.delete:
        gateway.delete(kind, name, meta["namespace"])
    for obj in result.create:
        gateway.create(obj)
    for event in result.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
    memo.metrics.observe(meta["uid"], result, datetime.now(timezone.utc))
    new_status = result.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    if new_status != plain.get("status"):
        patch.status.update(new_status)
    if result.delete_run:
        gateway.delete_run(meta["name"], meta["namespace"])


def _invalid(body: kopf.Body, patch: kopf.Patch, error: SpecError) -> None:
    if (body.get("status") or {}).get("phase") != "Failed":
        kopf.event(body, type="Warning", reason="InvalidSpec", message=str(error))
    patch.status.update({"phase": "Failed", "message": f"invalid spec: {error}"})


def _plain(body: kopf.Body) -> dict[str, Any]:
    """Kopf's read-only body views as plain dicts."""
    return {"metadata": dict(body["metadata"]), "status": _to_dict(body.get("status") or {})}


def _to_dict(value: Any) -> Any:
    if hasattr(value, "items"):
        return {k: _to_dict(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_dict(v) for v in value]
    return value
