"""The local run loop: the operator's planner decides, this machine executes.

    status ─► plan(snapshot) ─► the attempt it started ─► run it here ─► its end, as a finished Job ─► plan ...

Because the decisions are the planner's (``plan.plan``), a local run moves through the same phases, retries a
stage on the same failures up to its backoffLimit (exit codes 2 and 3 fail it at once), and ends with the same
status and results as the run would in a cluster.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from longalign_operator.builders import attempt_name
from longalign_operator.local.stages import LocalStages
from longalign_operator.plan import ATTR, JobView, Observed, plan
from longalign_operator.status import LongAlignRunStatus

FINAL = ("Succeeded", "Failed")


def run_stages(stages: LocalStages, status_path: Path, out: IO[str] | None = None) -> LongAlignRunStatus:
    """Take the run to Succeeded or Failed, writing its status to ``status_path`` after every step."""
    out = out or sys.stdout
    jobs: dict[str, JobView] = {}
    status: dict = {}
    while True:
        step = plan(Observed(run=stages.run, status=status, generation=1, now=datetime.now(UTC), jobs=jobs))
        status = step.status.model_dump(mode="json", by_alias=True, exclude_none=True)
        status_path.write_text(json.dumps(status, indent=1))
        for event in step.events:
            print(f"[{event.type}] {event.reason}: {event.message}", file=out, flush=True)
        if step.status.phase in FINAL:
            return step.status
        stage = step.status.current_stage
        if stage is None:  # not final, so a stage is under way
            raise RuntimeError(f"the planner names no current stage: {step.status.message}")
        attempt = getattr(step.status.stages, ATTR[stage]).attempts
        name = attempt_name(stages.run.name, stage, attempt)
        if name in jobs:  # the planner waits for something no local process can bring
            raise RuntimeError(f"the planner expects {name} to change: {step.status.message}")
        jobs[name] = stages.run_attempt(stage, attempt)
