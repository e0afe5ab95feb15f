"""The training benchmark (a GPU program) still runs end to end: its CPU smoke mode, as a user starts it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_smoke_run_prints_the_table_and_the_kernel_profile(tmp_path):
    out = tmp_path / "result.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "trainer")}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "train_throughput.py"),
            "--smoke",
            "--profile",
            "--strategies",
            "naive,ours_packing_weighted",
            "--json",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "kernel time by kind" in proc.stdout
    rows = {
        line.split()[0]: line.split()
        for line in proc.stdout.splitlines()
        if line.startswith(("naive ", "ours_packing_weighted "))
    }
    assert set(rows) == {"naive", "ours_packing_weighted"}
    result = json.loads(out.read_text())
    assert result["pack_check"]["max_abs_diff"] < 1e-4 < result["pack_check"]["leaky_row_max_abs_diff"]
    by_name = {r["strategy"]: r for r in result["results"]}
    assert all(r["tokens_per_s"] > 0 and r["micro_steps_run"] == r["of"] for r in by_name.values())
    assert by_name["ours_packing_weighted"]["packing_efficiency"] == result["env"]["packing_bound"]
