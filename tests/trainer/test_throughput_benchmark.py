"""The training benchmark (a GPU program) still runs end to end: its CPU smoke mode, as a user starts it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_benchmark(script: str, out: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """benchmarks/SCRIPT with ARGS, its JSON result to OUT, as a user starts it (ENV added); it must exit 0."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args, "--json", str(out)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_smoke_run_prints_the_table_and_the_kernel_profile(tmp_path):
    out = tmp_path / "result.json"
    proc = run_benchmark(
        "train_throughput.py",
        out,
        "--smoke",
        "--profile",
        "--strategies",
        "naive,ours_packing_weighted",
        PYTHONPATH=str(ROOT / "trainer"),
    )
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


def test_the_product_benchmark_runs_longalign_train_beside_a_peer_and_a_refusal(tmp_path):
    """train_product.py's CPU smoke mode: `longalign train` with its defaults under torchrun, a variant, a peer,
    and a config that must be refused before loading."""
    out = tmp_path / "result.json"
    proc = run_benchmark(
        "train_product.py",
        out,
        "--smoke",
        "--variants",
        "zero_stage=3",
        "--peers",
        "hf_packing",
        "--refuse",
        "zero_stage=3,offload_optimizer=true",
        "--work",
        str(tmp_path / "work"),
        OMP_NUM_THREADS="1",
    )
    result = json.loads(out.read_text())
    refusal, defaults, zero3, peer = result["rows"]
    assert refusal["rc"] == 2 and "this config cannot fit" in refusal["message"] and "host memory" in refusal["message"]
    for row in (defaults, zero3):
        assert row["rc"] == 0 and not row.get("error") and row["tokens_per_s"] > 0 and row["steady_tokens_per_s"] > 0
        assert row["packing_efficiency"] == round(result["env"]["packing_bound"], 12)
        assert row["setting"].startswith(f"ZeRO-{row['zero_stage']}, ")
    assert (defaults["zero_stage"], defaults["chosen_by_fit"]) == (
        2,
        ["zero_stage", "checkpoint_keeps", "checkpoint_layers"],
    )
    assert zero3["zero_stage"] == 3 and peer["row"] == "hf_packing" and peer["tokens_per_s"] > 0
    assert "longalign train defaults" in proc.stdout and "ERROR" not in proc.stdout
