"""Data generation throughput against a real vLLM server: concurrency 1 versus the default.

The generator's job is never to be the bottleneck: with enough requests in flight, vLLM batches them, so
requests/s and generated tokens/s should grow with concurrency until the server is saturated. This runs the
whole stage (documents → proposals → answers → shards) twice on the same documents, once with one document in
flight and once with the default concurrency, and prints both and their ratio.

    .venv/bin/python benchmarks/datagen_throughput.py                     # builds a tiny model, starts vLLM (CPU)
    .venv/bin/python benchmarks/datagen_throughput.py --base-url URL --model NAME --tokenizer DIR   # your server
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from longalign_trainer.datagen.config import EngineConfig, parse_config
from longalign_trainer.datagen.generate import run_async
from longalign_trainer.tiny_model import build_tiny_model, local_corpus
from longalign_trainer.vllm_server import VLLMServer


def write_documents(root: Path, n: int, chars: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    texts, i = local_corpus(), 0
    for k in range(n):
        doc = ""
        while len(doc) < chars:
            doc += texts[i % len(texts)][:chars] + "\n\n"
            i += 1
        (root / f"doc{k:03d}.txt").write_text(doc)


def measure(work: Path, base_url: str, model: str, tokenizer: str, concurrency: int, answer_tokens: int) -> dict:
    out = work / f"out-c{concurrency}"
    cfg = parse_config(
        {
            "documents_dir": str(work / "docs"),
            "min_tokens": 100,
            "max_tokens": 3000,
            "teacher": {
                "base_urls": [base_url],
                "model": model,
                "tokenizer": tokenizer,
                "temperature": 1.0,
                "question_max_tokens": 700,
                "answer_max_tokens": answer_tokens,
            },
            "question_max_chars": 60,
            "keep_truncated_answers": True,
            "min_answer_chars": 0,
            "engine": {"concurrency": concurrency},
            "output_dir": str(out),
            "seed": 0,
        }
    )
    t0, cpu0 = time.monotonic(), time.process_time()
    summary = asyncio.run(run_async(cfg, summary_path=out / "termination-log"))
    wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
    assert summary["status"] == "complete", summary
    return {
        "concurrency": concurrency,
        "documents": summary["documents_done"],
        "samples": summary["samples"],
        "requests": summary["requests"],
        "wall_s": round(wall, 2),
        "requests_per_s": round(summary["requests"] / wall, 2),
        "generated_tokens_per_s": round(summary["completion_tokens"] / wall, 1),
        # the generator's own CPU time (reading, tokenizing, requests, writing): far below the wall time
        # means the server, not the generator, sets the pace
        "generator_cpu_s": round(cpu, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url"), parser.add_argument("--model"), parser.add_argument("--tokenizer")
    parser.add_argument("--documents", type=int, default=32)
    parser.add_argument("--doc-chars", type=int, default=4000)
    parser.add_argument("--answer-tokens", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=EngineConfig().concurrency)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="datagen-bench-"))
    write_documents(work / "docs", args.documents, args.doc_chars)
    server = None
    if args.base_url is None:
        model_dir = build_tiny_model(work / "tiny")
        server = VLLMServer(model_dir, served_name="tiny", max_model_len=4096, log_path=work / "server.log").start()
        args.base_url, args.model, args.tokenizer = server.base_url, "tiny", str(model_dir)
    try:
        measure(work, args.base_url, args.model, args.tokenizer, 4, 8)  # warm-up: compile paths, fill caches
        one = measure(work, args.base_url, args.model, args.tokenizer, 1, args.answer_tokens)
        many = measure(work, args.base_url, args.model, args.tokenizer, args.concurrency, args.answer_tokens)
    finally:
        if server is not None:
            server.stop()
    result = {
        "concurrency_1": one,
        f"concurrency_{args.concurrency}": many,
        "ratio_requests_per_s": round(many["requests_per_s"] / one["requests_per_s"], 2),
        "ratio_generated_tokens_per_s": round(many["generated_tokens_per_s"] / one["generated_tokens_per_s"], 2),
    }
    print(json.dumps(result, indent=1))
    print(
        f"concurrency {args.concurrency} vs 1: {result['ratio_requests_per_s']}x requests/s, "
        f"{result['ratio_generated_tokens_per_s']}x generated tokens/s"
    )


if __name__ == "__main__":
    main()
