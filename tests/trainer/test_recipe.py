"""The training stage end to end: 2 real processes (torchrun, gloo, DeepSpeed ZeRO) on the tiny model.

One uninterrupted run is the reference: its loss falls, both ranks agree, and its export loads in
transformers and has learned. A second run is killed mid-way and resumed; it must continue the very same
loss trajectory. Other strategies and ZeRO stages run a few steps each.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from trainer_datasets import make_dataset

from longalign_trainer.contract import human


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(config: Path) -> list[str]:
    """2 processes on this machine, as the training pod runs them."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        "-m",
        "longalign_trainer.cli",
        "train",
        "--config",
        str(config),
    ]


def children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (torchrun starts its workers in sessions of their own)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


STEPS = 12  # 2 epochs × 6 steps of 16 sequences


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> list[dict]:
    d = tmp_path_factory.mktemp("data")
    return [
        {"path": str(make_dataset(d / "long.jsonl", 32, seed=1, long_share=0.5)), "ratio": 1},
        {"path": str(make_dataset(d / "short.jsonl", 64, seed=2, long_share=0.0)), "ratio": 2},
    ]


def write_config(out: Path, tiny_model: Path, data: list[dict], **overrides) -> Path:
    cfg = {
        "model_path": str(tiny_model),
        "data": data,
        "output_dir": str(out),
        "max_tokens_per_pack": 512,
        "strategy": "packing",
        "global_batch_size": 16,
        "epochs": 2,
        "learning_rate": 2e-3,
        "warmup_ratio": 0.1,
        "zero_stage": 3,
        "checkpoint_every_steps": 4,
        "progress_interval_s": 0,
        "termination_message_path": str(out / "summary.json"),
        **overrides,
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def train(config: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    done = subprocess.run(
        torchrun(config), capture_output=True, text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def step_losses(out: Path, rank: int) -> dict[int, float]:
    """Loss per step from a rank's log (a resumed run appends; the newest entry of a step wins)."""
    lines = (out / f"train-log-rank{rank}.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines)}


def progress_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith('{"longalign": "progress"')]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model, data):
    """One uninterrupted 2-rank ZeRO-3 packing run with loss weighting."""
    out = tmp_path_factory.mktemp("reference")
    done = train(write_config(out, tiny_model, data))
    return out, done


def test_loss_falls_and_both_ranks_agree(reference):
    out, done = reference
    losses = step_losses(out, 0)
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert step_losses(out, 1) == losses  # the all-reduced step loss is the same on both ranks
    assert sum(list(losses.values())[-3:]) / 3 < 0.7 * losses[1]
    ranks = [[json.loads(line) for line in (out / f"train-log-rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    for a, b in zip(*ranks, strict=True):  # each rank ran its own share of the step, and the shares add up to the step
        assert a["local_loss"] != b["local_loss"]
        assert (a["local_loss"] + b["local_loss"]) / 2 == pytest.approx(a["loss"], rel=1e-9)
        assert a["micro_batches"] >= 2
    # A step holds whole packs of the set, so its sequence count floats; each epoch holds every sequence once.
    assert sum(r["sequences"] for r in ranks[0][: STEPS // 2]) == 96


def test_progress_lines_and_summary_follow_the_stage_contract(reference):
    out, done = reference
    lines = progress_lines(done.stdout)
    assert [line["done"] for line in lines] == list(range(0, STEPS + 1))  # the first before any step: the setting
    assert lines[0]["metrics"] == {} and lines[1]["rate"] is None  # rates start after the first step
    assert all(line["rate"] > 0 and line["eta_s"] is not None for line in lines[2:])
    assert {"loss", "tokens_per_s", "mfu"} <= set(lines[-1]["metrics"]) and lines[-1]["total"] == STEPS
    summary = json.loads((out / "summary.json").read_text())
    setting = lines[0]["setting"]
    assert all(line["setting"] == setting for line in lines) and setting.items() <= summary.items()
    assert (setting["zero_stage"], setting["checkpoint_keeps"], setting["chosen_by_fit"]) == (
        3,
        "nothing",
        ["checkpoint_keeps", "checkpoint_layers"],
    )
    assert setting["description"].startswith(
        "ZeRO-3, no layer recomputed (all 2 keep their activations); memory estimate "
    ) and setting["description"].endswith(
        "sdpa_block_diagonal attention; chosen by fit: checkpoint_keeps, checkpoint_layers"
    )
    assert f"train: {setting['description']}" in done.stderr.splitlines()
    assert summary["ok"] and summary["steps"] == STEPS and summary["world_size"] == 2
    assert summary["final_loss"] == float(f"{step_losses(out, 0)[STEPS]:.12g}")  # 12 digits: no float noise
    assert summary["attention_backend"] == "sdpa_block_diagonal"
    assert [f["used"] for f in summary["data"]["per_file"].values()] == [32, 64]
    assert done.stderr.splitlines()[-1] == (
        f"train: done, {STEPS} steps, final loss {human(summary['final_loss'])}, {human(summary['tokens_per_s'])} "
        f"tokens/s; model in {out / 'model'}; records used 96, rejected 0"
    )
    assert 0.5 < summary["packing_efficiency"] <= 1 and summary["tokens_seen"] > 0
    assert Path(summary["checkpoint"]).name == f"step-{STEPS:08d}"
    assert (out / "checkpoints" / "latest").read_text() == f"step-{STEPS:08d}"
    assert not list((out / "checkpoints").glob(".tmp-*"))


def test_export_loads_in_transformers_and_has_learned(reference, tiny_model, data):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = reference
    tok = AutoTokenizer.from_pretrained(out / "model")
    assert tok.chat_template == AutoTokenizer.from_pretrained(tiny_model).chat_template
    trained = AutoModelForCausalLM.from_pretrained(out / "model")
    initial = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert trained.config._attn_implementation == "sdpa"
    record = json.loads(Path(data[1]["path"]).read_text().splitlines()[0])
    enc = tok.apply_chat_template(
        record["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=True, return_tensors="pt"
    )
    labels = torch.where(enc["assistant_masks"].bool(), enc["input_ids"], -100)
    with torch.no_grad():
        after = trained(input_ids=enc["input_ids"], labels=labels).loss
        before = initial(input_ids=enc["input_ids"], labels=labels).loss
    assert after < 0.7 * before


def test_killed_run_resumes_on_the_same_loss_trajectory(reference, tmp_path, tiny_model, data):
    ref_out, _ = reference
    out = tmp_path / "resumed"
    config = write_config(out, tiny_model, data)
    proc = subprocess.Popen(
        torchrun(config),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        for line in proc.stdout:  # once step 5 is done, kill both ranks and the agent, as a pod deletion would
            if line.startswith('{"longalign"') and json.loads(line)["done"] >= 5:
                break
    finally:
        for pid in [*children(proc.pid), proc.pid]:
            os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=60)
    interrupted = step_losses(out, 0)
    assert 5 <= max(interrupted) < STEPS and not (out / "summary.json").exists()
    resumed_from = int((out / "checkpoints" / "latest").read_text().removeprefix("step-"))
    assert resumed_from in (4, 8)
    again = train(config)
    assert f"train: resumed from step {resumed_from} of {STEPS}, checkpoint {out / 'checkpoints'}" in again.stderr
    expected = step_losses(ref_out, 0)
    resumed = step_losses(out, 0)
    for rank in (0, 1):  # the steps the killed run logged after its checkpoint are not logged twice
        logged = [json.loads(x)["step"] for x in (out / f"train-log-rank{rank}.jsonl").read_text().splitlines()]
        assert logged == list(range(1, STEPS + 1))
    for step in range(resumed_from + 1, STEPS + 1):
        assert resumed[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), step
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_loss"] == pytest.approx(expected[STEPS], rel=1e-6)


@pytest.mark.parametrize(
    "overrides",
    [
        {
            "strategy": "sorted",
            "zero_stage": 2,
            "micro_batch_size": 2,
            "loss_weighting": False,
            "checkpoint_keeps": "attention",
        },
        {"strategy": "naive", "zero_stage": 1, "gradient_checkpointing": False},
        {"strategy": "packing", "zero_stage": 3, "offload_optimizer": True, "offload_params": True},
        {"strategy": "packing", "zero_stage": 3, "offload_checkpoints": True, "tiled_mlp": True},
    ],
    ids=["sorted-zero2", "naive-zero1", "packing-zero3-offload", "packing-zero3-long-sequence-features"],
)
def test_other_strategies_and_zero_stages_train(tmp_path, tiny_model, data, overrides):
    out = tmp_path / "run"
    train(write_config(out, tiny_model, data, epochs=1, max_steps=3, **overrides))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and summary["steps"] == 3 and summary["strategy"] == overrides["strategy"]
    assert (summary["packing_efficiency"] is None) == (overrides["strategy"] != "packing")
    # Below ZeRO-3 selective checkpointing, as much as fits; on CPU (no GPU limit) everything fits, so no layer
    # is checkpointed, unless the config names what to keep (offloading checkpoints keeps nothing): then every
    # layer is.
    named = "checkpoint_keeps" in overrides or overrides.get("offload_checkpoints")
    keeps = overrides.get("checkpoint_keeps") or (
        "nothing" if overrides["zero_stage"] == 3 or overrides.get("offload_checkpoints") else "matmuls"
    )
    checkpointing = overrides.get("gradient_checkpointing", True)
    assert summary["checkpoint_keeps"] == (keeps if checkpointing else None)
    assert summary["checkpoint_layers"] == (None if not checkpointing or named else 0)
    losses = step_losses(out, 0)
    assert losses[3] < losses[1]
    if overrides["strategy"] != "packing":  # 16 sequences per step, micro_batch_size each, over 2 ranks
        rank0 = [json.loads(x) for x in (out / "train-log-rank0.jsonl").read_text().splitlines()]
        assert all(r["micro_batches"] == 16 // overrides.get("micro_batch_size", 1) for r in rank0)


def test_a_bad_config_is_refused_by_field_name(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(
        yaml.safe_dump(
            {"model_path": "m", "data": [{"path": "a.jsonl", "ratio": 0}], "output_dir": str(tmp_path), "zero_stage": 4}
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "longalign_trainer.cli", "train", "--config", str(config)],
        capture_output=True,
        text=True,
        env={**os.environ, "LONGALIGN_TERMINATION_MESSAGE_PATH": str(tmp_path / "t")},
    )
    assert done.returncode == 2
    assert "data.0.ratio: Input should be greater than 0" in done.stderr
    assert "zero_stage: Input should be 1, 2 or 3" in done.stderr
    assert json.loads((tmp_path / "t").read_text())["ok"] is False


def one_process(config: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "longalign_trainer.cli", "train", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "OMP_NUM_THREADS": "1", "LONGALIGN_TERMINATION_MESSAGE_PATH": str(tmp_path / "t")},
    )


BAD_INPUTS = {  # what is wrong -> (how to break a good config, what the one line must say)
    "missing data file": (
        lambda c, d: c["data"][0].update(path=str(d / "nowhere.jsonl")),
        r"data\[0\]\.path: .*nowhere\.jsonl does not exist; check the path",
    ),
    "empty data file": (
        lambda c, d: (d / "empty.jsonl").write_text("") and None or c["data"][0].update(path=str(d / "empty.jsonl")),
        r"data\[0\]\.path: .*empty\.jsonl is empty",
    ),
    "no usable record": (
        lambda c, d: (
            (d / "bad.jsonl").write_text("\n{oops\n") and None or c["data"][0].update(path=str(d / "bad.jsonl"))
        ),
        r".*bad\.jsonl: no usable record among its 2 lines",
    ),
    "missing model folder": (
        lambda c, d: c.update(model_path=str(d / "no-model")),
        r"model_path: .*no-model is not a folder; give a local Hugging Face model folder",
    ),
}


@pytest.mark.parametrize("broken", [*BAD_INPUTS, "malformed YAML"])
def test_bad_input_exits_2_with_one_line_naming_the_file_and_a_summary(tmp_path, tiny_model, data, broken):
    import re

    if broken == "malformed YAML":
        config = tmp_path / "train.yaml"
        config.write_text("model_path: [unclosed\ndata: []\n")
        expected = rf"{config}: not valid YAML at line 2, column 5 .*; fix the file"
    else:
        out = tmp_path / "out"
        cfg = yaml.safe_load(write_config(out, tiny_model, data).read_text())
        cfg.pop("termination_message_path")
        BAD_INPUTS[broken][0](cfg, tmp_path)
        config = out / "train.yaml"
        config.write_text(yaml.safe_dump(cfg))
        expected = BAD_INPUTS[broken][1]
    done = one_process(config, tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    # one line says what is wrong (besides the rejected records' and the setting chosen before the data loads)
    [line] = [
        x
        for x in done.stderr.splitlines()
        if x.startswith("train: ") and not x.startswith(("train: rejected", "train: ZeRO-"))
    ]
    assert re.fullmatch(r"train: " + expected + ".*", line), line
    summary = json.loads((tmp_path / "t").read_text())
    assert summary["ok"] is False and summary["exit_code"] == 2 and summary["error"] == line.removeprefix("train: ")


def test_a_bad_input_under_torchrun_fails_the_run_at_once_although_torchrun_exits_1(tmp_path, tiny_model, data):
    """A training pod's container is torchrun, which exits 1 whatever its workers returned: each pod's summary
    states the 2 (here 2 "nodes" of one process each, as 2 pods run them), and the operator fails the stage at
    once instead of retrying what no retry can fix."""
    from longalign_operator.plan import PodView, stated_exit_code

    out = tmp_path / "out"
    cfg = yaml.safe_load(write_config(out, tiny_model, data).read_text())
    cfg.pop("termination_message_path")  # each pod's own, from its environment
    BAD_INPUTS["no usable record"][0](cfg, tmp_path)  # found while the data loads, by both ranks
    (out / "train.yaml").write_text(yaml.safe_dump(cfg))
    port = str(free_port())
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                *("--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(rank)),
                *("--master_addr", "127.0.0.1", "--master_port", port),
                *("-m", "longalign_trainer.cli", "train", "--config", str(out / "train.yaml")),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={
                **os.environ,
                "OMP_NUM_THREADS": "1",
                "LONGALIGN_TERMINATION_MESSAGE_PATH": str(tmp_path / f"t{rank}"),
            },
        )
        for rank in (0, 1)
    ]
    for rank, node in enumerate(nodes):
        _, err = node.communicate(timeout=240)
        assert node.returncode == 1, err[-3000:]
        pod = PodView(
            f"r-train-1-{rank}", "Failed", termination_message=(tmp_path / f"t{rank}").read_text(), exit_code=1
        )
        assert stated_exit_code(pod) == 2


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs as the full volume needs root")
def test_a_full_checkpoints_volume_stops_the_run_with_the_numbers_and_a_rerun_with_room_resumes(
    tmp_path, tiny_model, data
):
    import re

    volume = tmp_path / "volume"
    volume.mkdir()
    # room for one checkpoint of the tiny model (38 MiB over 2 ranks), not two
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=60m", "tmpfs", str(volume)], check=True)
    try:
        out = volume / "out"
        config = write_config(out, tiny_model, data, termination_message_path=str(tmp_path / "summary.json"))
        full = subprocess.run(
            torchrun(config), capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"}
        )
        assert full.returncode == 1, full.stderr[-3000:]  # torchrun's; the summary states the stage's own
        summary = json.loads((tmp_path / "summary.json").read_text())
        assert (summary["status"], summary["exit_code"]) == ("volume_full", 4), summary
        checkpoints = out / "checkpoints"
        assert re.match(
            rf"checkpoint step-00000008 did not fit: the volume of {checkpoints} \(60 MiB\) is full; it takes about "
            r"3\d MiB \(the partial \d+ MiB written is deleted\)\. keep_checkpoints=2: .* lower "
            rf"keep_checkpoints\. The last complete checkpoint \({checkpoints / 'step-00000004'}\) is intact",
            summary["error"],
        ), summary["error"]
        assert (checkpoints / "latest").read_text().strip() == "step-00000004"
        assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step-00000004"]  # the partial one went
        subprocess.run(["mount", "-o", "remount,size=300m", str(volume)], check=True)
        again = train(config)
        assert "train: resumed from step 4 of 12" in again.stderr
        assert (out / "model" / "model.safetensors").exists()
    finally:
        subprocess.run(["umount", str(volume)], check=False)


def test_weighted_loss_trajectory_does_not_depend_on_packing_or_rank_count(reference, tmp_path, tiny_model, data):
    """LongAlign's point: with loss weighting, the objective is the same however a step's sequences are packed.

    One local process (no torchrun) must follow the 2-rank run's losses, although the 2 ranks split packs of
    the steps whose pack count is odd (which sequences a step holds depends on the pack size, not on the ranks).
    """
    ref_out, _ = reference
    out = tmp_path / "one-process"
    config = write_config(out, tiny_model, data)
    done = subprocess.run(
        [sys.executable, "-m", "longalign_trainer.cli", "train", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    logs = [[json.loads(x) for x in (o / "train-log-rank0.jsonl").read_text().splitlines()] for o in (ref_out, out)]
    differently_packed = sum(a["micro_batches"] != b["micro_batches"] for a, b in zip(*logs, strict=True))
    assert differently_packed >= 1
    for a, b in zip(*logs, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), a["step"]
    assert json.loads((out / "summary.json").read_text())["world_size"] == 1


def test_sigterm_checkpoints_the_current_step_and_the_run_resumes(reference, tmp_path, tiny_model, data):
    """A deleted or preempted pod gets SIGTERM: the ranks stop together after a checkpoint, not at the last one."""
    ref_out, _ = reference
    out = tmp_path / "preempted"
    config = write_config(out, tiny_model, data, checkpoint_every_steps=100)
    proc = subprocess.Popen(
        torchrun(config),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        for line in proc.stdout:
            if line.startswith('{"longalign"') and json.loads(line)["done"] >= 3:
                proc.send_signal(signal.SIGTERM)  # to the torchrun agent, which forwards it to both ranks
                break
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            for pid in [*children(proc.pid), proc.pid]:
                os.kill(pid, signal.SIGKILL)
            proc.wait(timeout=60)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["preempted"] and not summary["ok"]
    stopped_at = summary["steps"]
    assert 3 <= stopped_at < STEPS
    assert (out / "checkpoints" / "latest").read_text() == f"step-{stopped_at:08d}"  # no periodic one was due
    # what stopping cost, measured, for the operator's grace period: the steps and the SIGTERM checkpoint
    assert 0 < summary["slowest_step_s"] < 60 and 0 < summary["slowest_checkpoint_s"] < 60, summary
    train(config)
    expected, resumed = step_losses(ref_out, 0), step_losses(out, 0)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step in range(stopped_at + 1, STEPS + 1):
        assert resumed[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), step
    assert json.loads((out / "summary.json").read_text())["ok"]


def test_a_checkpoint_resumes_on_another_number_of_ranks(reference, tmp_path, tiny_model, data):
    """Written by 2 ranks, resumed by 1 process, whose checkpoint 2 ranks resume again: the same losses as the
    uninterrupted 2-rank run (DeepSpeed's universal checkpoint carries the partitioned state across)."""
    ref_out, _ = reference
    expected = step_losses(ref_out, 0)

    def start_from(checkpoint: Path, out: Path) -> Path:
        (out / "checkpoints").mkdir(parents=True)
        shutil.copytree(checkpoint, out / "checkpoints" / checkpoint.name)
        (out / "checkpoints" / "latest").write_text(checkpoint.name)
        return write_config(out, tiny_model, data, checkpoint_every_steps=2)

    one = tmp_path / "one-process"
    config = start_from(ref_out / "checkpoints" / "step-00000008", one)
    done = subprocess.run(
        [sys.executable, "-m", "longalign_trainer.cli", "train", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = step_losses(one, 0)
    assert sorted(resumed) == list(range(9, STEPS + 1))
    for step in resumed:
        assert resumed[step] == pytest.approx(expected[step], rel=1e-6), step

    two = tmp_path / "two-ranks"
    train(start_from(one / "checkpoints" / "step-00000010", two))
    again = step_losses(two, 0)
    assert sorted(again) == [11, 12] and step_losses(two, 1) == again
    for step in again:
        assert again[step] == pytest.approx(expected[step], rel=1e-6), step


@pytest.mark.parametrize("scheme", ["auto", "allgather_kv"])
def test_sequence_parallel_trains_the_same_losses_and_resumes_under_another_size(
    scheme, reference, tmp_path, tiny_model, data
):
    """2 ranks in one SP group (each pack split in halves, data parallelism 1) follow the 2 data-parallel ranks'
    losses, with Ulysses (auto's choice for the tiny model's heads) and with all-gathered keys and values; its
    checkpoint, resumed with SP 1 (data parallelism 2), continues on the SP 2 run's losses."""
    ref_out, _ = reference
    expected = step_losses(ref_out, 0)
    sp2 = tmp_path / "sp2"
    train(write_config(sp2, tiny_model, data, sequence_parallel_size=2, sequence_parallel_attention=scheme))
    losses = step_losses(sp2, 0)
    assert sorted(losses) == list(range(1, STEPS + 1)) and step_losses(sp2, 1) == losses
    for step in losses:  # the same objective: ranks hold other shares of each step (tolerance: sums reordered)
        assert losses[step] == pytest.approx(expected[step], rel=1e-5), step
    summary = json.loads((sp2 / "summary.json").read_text())
    assert summary["sequence_parallel_size"] == 2 and summary["world_size"] == 2
    assert summary["sequence_parallel_attention"] == ("ulysses" if scheme == "auto" else scheme)

    sp1 = tmp_path / "sp1"
    (sp1 / "checkpoints").mkdir(parents=True)
    shutil.copytree(sp2 / "checkpoints" / "step-00000008", sp1 / "checkpoints" / "step-00000008")
    (sp1 / "checkpoints" / "latest").write_text("step-00000008")
    again = train(write_config(sp1, tiny_model, data, sequence_parallel_size=1))
    assert "train: resumed from step 8 of 12" in again.stderr
    resumed = step_losses(sp1, 0)
    assert sorted(resumed) == [9, 10, 11, 12]
    for step in resumed:
        assert resumed[step] == pytest.approx(losses[step], rel=1e-5), step
