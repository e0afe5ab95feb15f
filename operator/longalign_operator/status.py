"""The LongAlignRun status: what the operator reports, as typed models.

The CRD's status schema is generated from these models, so every field the operator writes is declared
(the apiserver silently prunes undeclared ones). The operator builds its status through them too.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from longalign_operator.spec import Model as SpecModel


class Model(SpecModel):
    """Status models are built up step by step by the planner, so unlike the spec they are mutable."""

    model_config = ConfigDict(frozen=False, validate_assignment=True)


Phase = Literal["Pending", "GeneratingData", "Training", "Evaluating", "Succeeded", "Failed", "Suspended"]
StageState = Literal[
    "Pending", "Queued", "Starting", "Running", "Stalled", "Preempted", "Succeeded", "Failed", "Skipped", "Suspended"
]
STAGES = ("dataGeneration", "training", "evaluation")


class Condition(Model):
    """A Kubernetes-style condition."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str
    observed_generation: int | None = None


class StageStatus(Model):
    """One stage of the run."""

    state: StageState = "Pending"
    attempts: int = 0
    """Attempts started so far (the first try counts)."""
    failures: int = 0
    """Attempts that failed; the stage fails for good once they exceed its backoffLimit."""
    preemptions: int = 0
    """Attempts a queue (Kueue) preempted; not failures: the next attempt resumes from the checkpoint."""
    reason: str | None = None
    """Why the stage is in this state, e.g. Unschedulable, ImagePullBackOff, BackoffLimitExceeded."""
    message: str | None = None
    start_time: str | None = None
    end_time: str | None = None
    progress_percent: float | None = None
    eta_seconds: int | None = None
    """Estimated seconds left in the stage, whole."""
    last_progress_time: str | None = None
    metrics: dict[str, float | None] | None = None
    """The stage's latest reported metrics at full precision, keys in camelCase (loss, tokensPerS, mfu, lr,
    gradNorm, ...)."""
    setting: dict[str, Any] | None = None
    """What the newest attempt runs with, as the stage chose it at its start and reports it in its progress lines,
    verbatim (training: ZeRO stage, checkpointing, attention, the memory estimate against the GPU's memory, and
    a ``description``)."""
    summary: dict[str, Any] | None = None
    """The stage's final summary, as it wrote it to its termination message."""
    stop_seconds: float | None = None
    """Training: what stopping on SIGTERM cost at most, as the trainer measured it over the attempts: its
    slowest step plus its slowest checkpoint write (seconds)."""
    grace_period_seconds: int | None = None
    """Training: the terminationGracePeriodSeconds of the current attempt's pods (the spec's, or following
    ``stopSeconds``)."""


class Stages(Model):
    data_generation: StageStatus | None = None
    training: StageStatus | None = None
    evaluation: StageStatus | None = None


class Results(Model):
    """The run's headline numbers, filled in as stages finish."""

    samples_generated: int | None = None
    final_loss: float | None = None
    tokens_per_second: float | None = None
    mfu: float | None = None
    long_bench_chat_score: float | None = None
    needle_accuracy: float | None = None
    checkpoint_path: str | None = None
    last_checkpoint_step: int | None = None
    last_checkpoint_time: str | None = None
    zero_stage: int | None = None
    """The ZeRO stage training ran with (chosen by fit unless the spec set it)."""
    checkpoint_keeps: str | None = None
    """What gradient checkpointing kept (chosen by fit unless the stage settings set it)."""
    sequence_parallel_size: int | None = None
    """The GPUs each pack was split over (sequence parallelism; 1: none)."""
    sequence_parallel_attention: str | None = None
    """How attention saw the other SP ranks' tokens: ulysses or allgather_kv (none without SP)."""


class LongAlignRunStatus(Model):
    phase: Phase = "Pending"
    current_stage: str | None = None
    attempt: int | None = None
    """The current stage's attempt (1 is the first try)."""
    progress: str | None = None
    """Progress of the current stage, e.g. "45%"."""
    eta: str | None = None
    """Estimated time left in the current stage, e.g. "1h20m"."""
    loss: str | None = None
    """Training loss for people, 4 significant digits: live while training, then the final one (full
    precision: stages.training.metrics.loss, results.finalLoss)."""
    score: str | None = None
    """LongBench-Chat mean score for people, 2 decimals (full precision: results.longBenchChatScore)."""
    message: str | None = None
    observed_generation: int | None = None
    completion_time: str | None = None
    """When the run reached Succeeded or Failed (the TTL counts from here)."""
    stages: Stages = Field(default_factory=Stages)
    conditions: list[Condition] = Field(default_factory=list)
    results: Results = Field(default_factory=Results)
