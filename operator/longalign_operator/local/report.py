"""The report folder of a local run: ``status.json`` (the operator's status model) and PNG plots.

Only what the run produced is plotted: the generated data's length histogram (data generation's summary), the
loss curve and tokens/s (training's progress lines), LongBench-Chat scores per question (evaluation's
``results.json``) and the needle heatmap (drawn by the evaluation stage itself, copied here).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from longalign_operator.local.stages import LocalStages
from longalign_operator.plan import ATTR, ORDER
from longalign_operator.status import LongAlignRunStatus, StageStatus
from longalign_trainer.contract import parse_progress


def write_report(stages: LocalStages, status: LongAlignRunStatus, folder: Path) -> list[Path]:
    """Write the plots of every stage that succeeded into ``folder``; return the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    folder.mkdir(parents=True, exist_ok=True)
    plots = []
    datagen, training, evaluation = (_succeeded(status, s) for s in ORDER)
    if datagen and (histogram := (datagen.summary or {}).get("length_histogram")):
        plots.append(
            _bars(
                folder / "length_histogram.png",
                list(histogram),
                list(histogram.values()),
                "generated data: samples per length",
                "tokens",
                "samples",
            )
        )
    if training:
        lines = _progress_lines(stages.log_path("training", training.attempts))
        for key, name, label in (("loss", "loss.png", "loss"), ("tokens_per_s", "tokens_per_s.png", "tokens/s")):
            points = [
                (line["done"], line["metrics"][key]) for line in lines if line.get("metrics", {}).get(key) is not None
            ]
            if points:
                plots.append(_curve(folder / name, points, f"training: {label}", label))
    if evaluation:
        summary = evaluation.summary or {}
        results = Path(summary["results"]) if summary.get("results") else None
        if results and results.is_file():
            rows = json.loads(results.read_text()).get("longbench_chat", {}).get("per_question", [])
            scored = [r for r in rows if r.get("score") is not None]
            if scored:
                plots.append(
                    _bars(
                        folder / "longbench_chat_scores.png",
                        [f"#{r['idx']}" for r in scored],
                        [r["score"] for r in scored],
                        "LongBench-Chat: judge's score per question",
                        "question",
                        "score (1-10)",
                        ylim=(0, 10),
                    )
                )
        for plot in map(Path, summary.get("plots") or []):
            if plot.is_file():
                plots.append(Path(shutil.copy(plot, folder / plot.name)))
    return plots


def _succeeded(status: LongAlignRunStatus, stage: str) -> StageStatus | None:
    st = getattr(status.stages, ATTR[stage])
    return st if st is not None and st.state == "Succeeded" else None


def _progress_lines(log: Path) -> list[dict]:
    if not log.is_file():
        return []
    return [line for text in log.read_text(errors="replace").splitlines() if (line := parse_progress(text))]


def _bars(
    path: Path,
    labels: list[str],
    values: list[float],
    title: str,
    xlabel: str,
    ylabel: str,
    ylim: tuple[float, float] | None = None,
) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.bar(labels, values, color="#4c72b0")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    return _save(fig, path)


def _curve(path: Path, points: list[tuple[float, float]], title: str, ylabel: str) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(*zip(*points, strict=True), marker="o", markersize=3)
    ax.set(title=title, xlabel="step", ylabel=ylabel)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
