"""`longalign teacher-server`, the command of a multi-node teacher's pods: its refusals and its readiness probe
(against the real vLLM server of the test session)."""

from __future__ import annotations

import os
import subprocess
import sys
from urllib.parse import urlparse

LEADER = "t-teacher-{index}.t-teacher.ns.svc"


def teacher_server(*args: str, pod_index: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "POD_INDEX"}
    if pod_index is not None:
        env["POD_INDEX"] = pod_index
    return subprocess.run(
        [sys.executable, "-m", "longalign_trainer.cli", "teacher-server", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_it_refuses_to_start_without_its_ordinal_or_the_server_command():
    missing = teacher_server("--nodes", "2", "--leader", LEADER, "--", "vllm", pod_index=None)
    assert missing.returncode == 2 and "POD_INDEX" in missing.stderr
    no_command = teacher_server("--nodes", "2", "--leader", LEADER, pod_index="4")
    assert no_command.returncode == 2 and "after --" in no_command.stderr


def test_the_leaders_readiness_is_its_vllm_servers_health(vllm_server):
    port = str(urlparse(vllm_server.base_url).port)
    assert teacher_server("--nodes", "2", "--leader", LEADER, "--port", port, "--probe", pod_index="2").returncode == 0
    # Nothing listens on this port: not ready.
    closed = teacher_server("--nodes", "2", "--leader", LEADER, "--port", "1", "--probe", pod_index="2")
    assert closed.returncode == 1
