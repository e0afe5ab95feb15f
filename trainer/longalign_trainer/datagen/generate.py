"""The data generation pipeline: documents in, LongAlign JSONL out, resumable, with progress and a summary.

    corpus ──► pending documents (not in the manifest) ──► N workers, one document each at a time:
                 propose tasks (JSON schema) ─► dedup, keep k ─► answer each (whole document in context)
           ──► store (shards + manifest) ──► at the end: data.jsonl (+ short mix), histogram.json, summary

A document that fails for lack of a server (retries exhausted) is not recorded: the run ends with exit code 1
and a rerun does it again. A document that can never work (too long for the server's context, no parseable
tasks, every answer filtered) is recorded as done with its reasons counted.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longalign_trainer.atomic_write import write_atomic
from longalign_trainer.chat_client import ChatClient, ContextOverflow, FatalRequestError, RequestFailed
from longalign_trainer.chat_tokens import chat_tokens as _chat_tokens
from longalign_trainer.chat_tokens import prompt_tokens as _prompt_tokens
from longalign_trainer.contract import ProgressReporter, write_summary
from longalign_trainer.datagen import tasks
from longalign_trainer.datagen.config import ConfigError, DatagenConfig
from longalign_trainer.datagen.documents import Document, load_corpus, make_pairs
from longalign_trainer.datagen.mix import histogram, sample_short
from longalign_trainer.datagen.store import ShardStore

PROPOSAL_ATTEMPTS = 2


@dataclass
class DocOutcome:
    samples: list[dict] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)


class Generator:
    """Turns one document into samples (or counted reasons for none) with the teacher's requests."""

    def __init__(self, cfg: DatagenConfig, teacher: ChatClient, tokenizer, context_len: int) -> None:
        self.cfg, self.teacher, self.tokenizer, self.context_len = cfg, teacher, tokenizer, context_len
        self.templates = {t: cfg.prompt_text(t) for t in cfg.all_task_types()}
        # tokens the chat template and instructions add around the document, measured once per task type
        self.overhead = {
            t: _prompt_tokens(tokenizer, tasks.user_turn("", tasks.propose_prompt(s, cfg.questions_asked)))
            for t, s in self.templates.items()
        }
        self.margin = 16  # a document and its neighbouring text may tokenise a few tokens differently

    def _room(self, doc: Document, overhead: int) -> int:
        return self.context_len - (doc.n_tokens + overhead + self.margin)

    async def process(self, doc: Document) -> DocOutcome:
        """All requests about one document, back to back on one server (vLLM then reuses the cached document)."""
        cfg, out = self.cfg, DocOutcome()
        endpoint = assigned = self.teacher.assign()
        try:
            types = list(doc.task_types) or tasks.rng_for(cfg.seed, doc.id, "types").sample(
                cfg.task_types, cfg.types_per_document
            )
            seen: list[str] = []
            for task_type in types:
                room = self._room(doc, self.overhead[task_type])
                if room < cfg.teacher.min_answer_room:
                    out.skipped["exceeds_server_context"] += 1
                    continue
                questions, endpoint = await self._propose(
                    doc, task_type, min(room, cfg.teacher.question_max_tokens), endpoint, out
                )
                fresh = tasks.dedup(seen + questions, cfg.dedup_similarity)[len(seen) :]  # seen is deduplicated
                if len(questions) > len(fresh):
                    out.skipped["duplicate_task"] += len(questions) - len(fresh)
                seen += fresh
                rng = tasks.rng_for(cfg.seed, doc.id, f"keep:{task_type}")
                kept = rng.sample(fresh, min(cfg.questions_kept, len(fresh)))
                results = await asyncio.gather(
                    *(self._answer(doc, task_type, q, endpoint) for q in kept), return_exceptions=True
                )
                for r in results:
                    if isinstance(r, BaseException):
                        raise r
                    if isinstance(r, str):
                        out.skipped[r] += 1
                    else:
                        out.samples.append(r)
        except ContextOverflow:
            out.skipped["exceeds_server_context"] += 1
        finally:
            self.teacher.release(assigned)
        return out

    async def _propose(
        self, doc: Document, task_type: str, max_tokens: int, endpoint: int, out: DocOutcome
    ) -> tuple[list[str], int]:
        cfg = self.cfg
        messages = [
            {
                "role": "user",
                "content": tasks.user_turn(
                    doc.text, tasks.propose_prompt(self.templates[task_type], cfg.questions_asked)
                ),
            }
        ]
        schema = tasks.questions_schema(cfg.questions_asked, cfg.question_max_chars)
        for attempt in range(PROPOSAL_ATTEMPTS):
            seed = tasks.rng_for(cfg.seed, doc.id, f"propose:{task_type}:{attempt}").randrange(2**31)
            c = await self.teacher.complete(
                messages,
                max_tokens=max_tokens,
                endpoint=endpoint,
                seed=seed,
                **tasks.constrained_output(cfg.teacher.json_output, schema),
            )
            endpoint = c.endpoint
            questions = tasks.parse_questions(c.text)
            if questions:
                return questions, endpoint
        out.skipped["unparseable_tasks"] += 1
        return [], endpoint

    async def _answer(self, doc: Document, task_type: str, question: str, endpoint: int) -> dict | str:
        """A sample, or the reason there is none."""
        cfg = self.cfg
        room = self._room(doc, _prompt_tokens(self.tokenizer, tasks.user_turn("", question)))
        if room < cfg.teacher.min_answer_room:
            return "exceeds_server_context"
        user = tasks.user_turn(doc.text, question)
        seed = tasks.rng_for(cfg.seed, doc.id, f"answer:{question}").randrange(2**31)
        try:
            c = await self.teacher.complete(
                [{"role": "user", "content": user}],
                endpoint=endpoint,
                seed=seed,
                max_tokens=min(room, cfg.teacher.answer_max_tokens),
            )
        except ContextOverflow:
            return "exceeds_server_context"
        problem = tasks.answer_problem(c.text, c.finish_reason, cfg.min_answer_chars, cfg.keep_truncated_answers)
        if problem:
            return problem
        return {
            "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": c.text.strip()}],
            "length": c.prompt_tokens + c.completion_tokens,
            "meta": {
                "doc_id": doc.id,
                "source": doc.source,
                "task_type": task_type,
                "task": question,
                "teacher_model": cfg.teacher.model,
                "doc_tokens": doc.n_tokens,
                "finish_reason": c.finish_reason,
            },
        }


def load_tokenizer(cfg: DatagenConfig):
    """The teacher's tokenizer (documents are measured with it); ``ConfigError`` when it cannot be loaded."""
    from transformers import AutoTokenizer

    where = cfg.teacher.tokenizer or cfg.teacher.model
    if where.startswith(("/", ".")) and not Path(where).is_dir():
        raise ConfigError(
            f"teacher.tokenizer: {where} is not a folder; set it to a local folder holding the "
            "teacher's tokenizer files"
        )
    try:
        return AutoTokenizer.from_pretrained(where)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"teacher.tokenizer: cannot load the teacher's tokenizer from {where!r} ({e}); "
            "set it to a local folder holding the teacher's tokenizer files"
        ) from None


async def run_async(cfg: DatagenConfig, *, summary_path: Path | None = None) -> dict:
    """Run (or resume) data generation; returns the summary it also writes at the termination-message path."""
    t0 = time.monotonic()
    tokenizer = load_tokenizer(cfg)
    corpus = load_corpus(cfg, tokenizer)
    if not corpus.documents:
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(corpus.skipped.items())) or "none"
        raise ConfigError(
            f"documents_dir: {cfg.documents_dir} holds no usable document ({corpus.files} files; "
            f"skipped: {skipped}); add .txt, .md, .jsonl or .parquet documents of "
            f"{cfg.min_tokens} to {cfg.max_tokens} tokens (min_tokens, max_tokens)"
        )
    if cfg.comparison_ratio:
        corpus.documents += make_pairs(
            corpus.documents, round(cfg.comparison_ratio * len(corpus.documents)), cfg.max_tokens, cfg.seed, tokenizer
        )
    store = ShardStore(
        cfg.output_dir,
        cfg.fingerprint(),
        cfg.shard_max_samples,
        meta={"teacher_model": cfg.teacher.model},
        flush_interval_s=cfg.flush_interval_s,
    ).open()
    done_before = store.done_documents()
    pending = [d for d in corpus.documents if d.id not in done_before]
    teacher = ChatClient(cfg.teacher, cfg.engine)
    progress = ProgressReporter("datagen", len(corpus.documents), "documents")
    failed: Counter = Counter()
    state: dict[str, Any] = {
        "done": len(corpus.documents) - len(pending),
        "samples": sum(done_before.values()),
        "consecutive_failures": 0,
        "stop": None,
    }
    status = "complete"
    progress.update(state["done"], samples=state["samples"])  # a resumed run's rate counts from here
    stop_on_sigterm = _on_sigterm(state)
    try:
        await _work(cfg, teacher, tokenizer, store, pending, state, failed, progress, t0)
    except asyncio.CancelledError:
        if not state["stop"]:  # cancelled by someone else than our SIGTERM handler
            raise
    finally:
        store.flush()  # documents finished before a failure or SIGTERM are kept
        stop_on_sigterm()
        await teacher.close()

    if state["stop"] or failed:
        status = "incomplete"
    summary = {
        "stage": "datagen",
        "status": status,
        "teacher_model": cfg.teacher.model,
        "documents_total": len(corpus.documents),
        "documents_done": state["done"],
        "documents_resumed": len(done_before),
        "documents_failed": failed["documents"],
        "documents_skipped": dict(corpus.skipped),
        "samples_skipped": dict(store.skips()),
        "samples": state["samples"],
    }
    if state["stop"]:
        summary["error"] = state["stop"][:500]
    elif failed:
        summary["error"] = (
            f"{failed['documents']} documents failed (rerun to retry them): {state.get('last_error', '')}"[:500]
        )
    if status == "complete":
        summary.update(_finish(cfg, store, tokenizer))
    elapsed = time.monotonic() - t0
    summary.update(
        {
            "elapsed_s": round(elapsed, 1),
            "requests": teacher.stats["requests"],
            "retries": teacher.stats["retries"],
            "request_errors": {
                k: v
                for k, v in sorted(teacher.stats.items())
                if k not in ("requests", "retries", "prompt_tokens", "completion_tokens")
            },
            "completion_tokens": teacher.stats["completion_tokens"],
            "tokens_per_s": round(teacher.stats["completion_tokens"] / elapsed, 1) if elapsed else None,
            "manifest": str(cfg.output_dir / "manifest.json"),
        }
    )
    write_atomic(cfg.output_dir / "summary.json", json.dumps(summary, indent=1).encode())
    write_summary(summary, summary_path)
    return summary


async def _work(
    cfg: DatagenConfig,
    teacher: ChatClient,
    tokenizer,
    store: ShardStore,
    pending: list[Document],
    state: dict,
    failed: Counter,
    progress: ProgressReporter,
    t0: float,
) -> None:
    """Process the pending documents with ``engine.concurrency`` workers, committing each finished one."""
    try:
        waited = await teacher.wait_until_serving(cfg.engine.startup_wait_s)
        if waited >= 1:
            print(f"datagen: the teacher servers serve {cfg.teacher.model!r} (waited {waited:.0f} s)", flush=True)
        gen = Generator(cfg, teacher, tokenizer, await teacher.max_model_len())
        queue: asyncio.Queue[Document] = asyncio.Queue()
        for d in pending:
            queue.put_nowait(d)

        async def worker() -> None:
            while state["stop"] is None:
                try:
                    doc = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                try:
                    outcome = await gen.process(doc)
                except RequestFailed as e:  # not recorded: a rerun does this document again
                    failed["documents"] += 1
                    state["consecutive_failures"] += 1
                    state["last_error"] = str(e)
                    if state["consecutive_failures"] >= cfg.engine.max_consecutive_failures:
                        state["stop"] = f"{state['consecutive_failures']} documents in a row failed: {e}"
                    continue
                state["consecutive_failures"] = 0
                store.add(doc.id, outcome.samples, outcome.skipped)
                state["done"] += 1
                state["samples"] += len(outcome.samples)
                _report(progress, state, teacher, t0)

        async with asyncio.TaskGroup() as group:  # a fatal error in one worker cancels the others
            for _ in range(min(cfg.engine.concurrency, max(len(pending), 1))):
                group.create_task(worker())
    except* (FatalRequestError, RequestFailed) as eg:  # RequestFailed here: /v1/models never answered
        state["stop"] = f"{type(eg.exceptions[0]).__name__}: {eg.exceptions[0]}"


def _on_sigterm(state: dict):
    """On SIGTERM (Kubernetes stopping the pod), stop at once, commit finished documents and write the summary.

    Returns the function that removes the handler again.
    """
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    if task is None:
        raise RuntimeError("_on_sigterm must be called from a task")

    def terminate() -> None:
        state["stop"] = "terminated by SIGTERM; finished documents are kept, run again to resume"
        task.cancel()

    try:
        loop.add_signal_handler(signal.SIGTERM, terminate)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
        return lambda: None
    return lambda: loop.remove_signal_handler(signal.SIGTERM)


def _report(progress: ProgressReporter, state: dict, teacher: ChatClient, t0: float) -> None:
    elapsed = max(time.monotonic() - t0, 1e-9)
    progress.update(
        state["done"],
        samples=state["samples"],
        tokens_per_s=teacher.stats["completion_tokens"] / elapsed,
        requests_per_s=teacher.stats["requests"] / elapsed,
    )


def _finish(cfg: DatagenConfig, store: ShardStore, tokenizer) -> dict:
    """All documents are done: write ``data.jsonl`` (generated, then short samples) and ``histogram.json``."""
    lengths: list[int] = []
    n_long = 0
    by_source: Counter[str] = Counter()
    by_type: Counter[str] = Counter()
    out_path = cfg.output_dir / "data.jsonl"
    tmp = out_path.with_name(".data.jsonl.tmp")
    short_counts: Counter = Counter()
    with open(tmp, "w") as out:
        for shard in store.shard_paths():
            with open(shard) as f:
                for line in f:
                    out.write(line)
                    record = json.loads(line)
                    lengths.append(record["length"])
                    by_source[record["meta"]["source"]] += 1
                    by_type[record["meta"]["task_type"]] += 1
                    n_long += 1
        n_short = 0
        if cfg.short_data_path is not None and cfg.short_ratio > 0:
            short, short_counts = sample_short(cfg.short_data_path, n_long, cfg.short_ratio, cfg.seed)
            for rec in short:
                rec["length"] = _chat_tokens(tokenizer, rec["messages"])
                lengths.append(rec["length"])
                out.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n_short = len(short)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, out_path)
    hist = histogram(lengths)
    write_atomic(
        cfg.output_dir / "histogram.json",
        json.dumps({"long": histogram(lengths[:n_long]), "all": hist}, indent=1).encode(),
    )
    result = {
        "data": str(out_path),
        "long_samples": n_long,
        "short_samples": n_short,
        "samples_by_source": dict(by_source),
        "samples_by_task_type": dict(by_type),
        "length_histogram": hist,
    }
    if short_counts:
        result["short_skipped"] = dict(short_counts)
    return result
