"""What a finished tiny run reports, the same whichever path ran it: ``longalign run`` on this machine
(tests/localrun) or the operator on real pods (tests/cluster/test_real_run.py). Both tests compare against these
sets, so the two paths cannot drift apart."""

from __future__ import annotations

RESULT_FIELDS = {
    "samplesGenerated",
    "finalLoss",
    "tokensPerSecond",
    "checkpointPath",
    "lastCheckpointStep",
    "zeroStage",
    "sequenceParallelSize",
    "longBenchChatScore",
    "needleAccuracy",
}
"""``status.results`` of the tiny example (no MFU on a CPU, no checkpointKeeps without gradient checkpointing)."""


def summary_fields(status: dict) -> dict[str, set[str]]:
    """The keys of each stage's summary, by stage."""
    return {stage: set(s.get("summary") or {}) for stage, s in status["stages"].items()}
