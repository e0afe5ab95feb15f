"""The shard store's crash semantics, and the vLLM server wrapper's failure and cleanup paths."""

from __future__ import annotations

import json
import os
import time
from collections import Counter

import pytest

from longalign_trainer.datagen.store import ResumeMismatch, ShardStore
from longalign_trainer.vllm_server import VLLMServer, VLLMServerError


def sample(doc: str, k: int) -> dict:
    return {"messages": [{"role": "user", "content": doc}, {"role": "assistant", "content": f"a{k}"}],
            "meta": {"doc_id": doc}}


def test_a_shard_written_but_not_yet_in_the_manifest_is_dropped_and_its_documents_redone(tmp_path):
    store = ShardStore(tmp_path, "fp", shard_max_samples=2).open()
    store.add("d1", [sample("d1", 0), sample("d1", 1)], Counter())  # a full shard: committed
    store.add("d2", [], Counter({"short_answer": 1}))  # buffered only
    assert store.done_documents() == {"d1": 2}
    # a crash between writing shard 1 and renaming the manifest leaves these behind
    (tmp_path / "shards" / "shard-00001.jsonl").write_text(json.dumps(sample("d2", 0)) + "\n")
    (tmp_path / "shards" / ".shard-00002.jsonl.tmp").write_text("partial")
    (tmp_path / ".manifest.json.tmp").write_text("{partial")

    again = ShardStore(tmp_path, "fp", shard_max_samples=2).open()
    assert again.done_documents() == {"d1": 2} and again.orphans_removed == 2
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["shard-00000.jsonl"]
    again.add("d2", [sample("d2", 0)], Counter())
    again.flush()
    reread = ShardStore(tmp_path, "fp", shard_max_samples=2).open()
    assert reread.done_documents() == {"d1": 2, "d2": 1}
    lines = [json.loads(x) for p in reread.shard_paths() for x in p.read_text().splitlines()]
    assert Counter(r["meta"]["doc_id"] for r in lines) == {"d1": 2, "d2": 1}

    with pytest.raises(ResumeMismatch, match="other settings"):
        ShardStore(tmp_path, "another-recipe", shard_max_samples=2).open()


def test_a_model_vllm_cannot_load_fails_early_with_the_server_log_and_leaves_no_process(tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["NoSuchForCausalLM"]}))
    server = VLLMServer(broken, served_name="broken", log_path=tmp_path / "server.log", startup_timeout_s=300)
    t0 = time.monotonic()
    with pytest.raises(VLLMServerError) as err:
        server.start()
    assert time.monotonic() - t0 < 200  # the exit is noticed, not waited out
    message = str(err.value)
    assert "exited with code" in message and str(tmp_path / "server.log") in message
    assert "NoSuchForCausalLM" in message  # why it failed, from the server's own log
    assert len(message.splitlines()) > 3  # the server's own last log lines explain why
    with pytest.raises(ProcessLookupError):  # the whole process group is gone
        os.killpg(server.process.pid, 0)
