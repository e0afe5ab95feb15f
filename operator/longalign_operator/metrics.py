"""Prometheus metrics of the operator, fed from the planner's decisions (nothing extra is read from the API).

longalign_runs{phase}                         runs this operator watches, by phase
longalign_stage_duration_seconds{stage,outcome}  from an attempt's start to the stage's end
longalign_time_to_running_seconds{stage}      from an attempt's start until all its pods run (queueing,
                                              admission, scheduling, image pulls)
longalign_stage_retries_total{stage}          failed attempts that were retried
longalign_reconciles_total, longalign_last_reconcile_timestamp_seconds
"""

from __future__ import annotations

import time
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from longalign_operator.plan import ATTR, Plan, parse_time

STAGE_BUCKETS = (60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 259200)
START_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 900, 1800, 3600)


class Metrics:
    """The operator's metrics in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.runs = Gauge("longalign_runs", "LongAlignRuns by phase", ["phase"], registry=self.registry)
        self.stage_duration = Histogram(
            "longalign_stage_duration_seconds",
            "stage attempt start to stage end",
            ["stage", "outcome"],
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )
        self.time_to_running = Histogram(
            "longalign_time_to_running_seconds",
            "attempt start until all pods run",
            ["stage"],
            buckets=START_BUCKETS,
            registry=self.registry,
        )
        self.retries = Counter(
            "longalign_stage_retries", "failed stage attempts that were retried", ["stage"], registry=self.registry
        )
        self.reconciles = Counter("longalign_reconciles", "reconcile steps", registry=self.registry)
        self.last_reconcile = Gauge(
            "longalign_last_reconcile_timestamp_seconds", "time of the last reconcile", registry=self.registry
        )
        self.phases: dict[str, str] = {}
        self.last_reconcile_monotonic = time.monotonic()

    def serve(self, port: int) -> None:
        """Expose /metrics on this port."""
        start_http_server(port, registry=self.registry)

    def observe(self, uid: str, result: Plan, now: datetime) -> None:
        """Record one reconcile step of a run."""
        self.reconciles.inc()
        self.last_reconcile.set(time.time())
        self.last_reconcile_monotonic = time.monotonic()
        self.phases[uid] = result.status.phase
        self._count_phases()
        for event in result.events:
            stage, reason = event.stage, event.reason
            if stage is None:
                continue
            st = getattr(result.status.stages, ATTR[stage])
            started = (now - parse_time(st.start_time)).total_seconds() if st.start_time else None
            if reason == "StageRetrying":
                self.retries.labels(stage).inc()
            elif reason in ("StageSucceeded", "StageFailed") and started is not None:
                self.stage_duration.labels(stage, reason.removeprefix("Stage")).observe(started)
            elif reason == "StageRunning" and started is not None:
                self.time_to_running.labels(stage).observe(started)

    def forget(self, uid: str) -> None:
        """A run was deleted."""
        self.phases.pop(uid, None)
        self._count_phases()

    def _count_phases(self) -> None:
        for phase in ("Pending", "GeneratingData", "Training", "Evaluating", "Succeeded", "Failed", "Suspended"):
            self.runs.labels(phase).set(sum(1 for p in self.phases.values() if p == phase))
