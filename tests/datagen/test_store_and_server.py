"""The shard store's crash semantics, and the vLLM server wrapper's failure and cleanup paths."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from longalign_trainer.datagen.store import ResumeMismatch, ShardStore
from longalign_trainer.vllm_server import VLLMServer, VLLMServerError


def sample(doc: str, k: int) -> dict:
    return {
        "messages": [{"role": "user", "content": doc}, {"role": "assistant", "content": f"a{k}"}],
        "meta": {"doc_id": doc},
    }


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


FAKE = Path(__file__).with_name("fake_vllm.py")


def fake_python(tmp_path: Path) -> str:
    """An interpreter path that runs the fake server with whatever arguments VLLMServer passes."""
    script = tmp_path / "python"
    script.write_text(f'#!/bin/sh\nexec {sys.executable} {FAKE} "$@"\n')
    script.chmod(0o755)
    return str(script)


def engine_pid(log: Path) -> int:
    return int(re.search(r"engine pid (\d+)", log.read_text()).group(1))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead, it only waits to be reaped
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"


def test_stop_ends_the_server_and_its_children(tmp_path):
    server = VLLMServer(tmp_path, served_name="m", log_path=tmp_path / "log", python=fake_python(tmp_path))
    with server:
        assert server.model_card()["max_model_len"] == 4096
        engine = engine_pid(tmp_path / "log")
        assert alive(engine)
    assert not alive(server.process.pid) and not alive(engine)


def test_a_killed_parent_takes_its_server_along(tmp_path):
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"""
import sys, time
from longalign_trainer.vllm_server import VLLMServer
s = VLLMServer({str(tmp_path)!r}, served_name="m", log_path={str(tmp_path / "log")!r}, python={fake_python(tmp_path)!r})
s.start()
print(s.process.pid, flush=True)
time.sleep(3600)
""",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    server_pid = int(parent.stdout.readline())
    engine = engine_pid(tmp_path / "log")
    assert alive(server_pid) and alive(engine)
    parent.kill()  # SIGKILL: no cleanup code of the parent runs
    parent.wait()
    deadline = time.monotonic() + 10
    while (alive(server_pid) or alive(engine)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(server_pid) and not alive(engine)
