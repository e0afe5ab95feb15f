"""Pure pieces of ``longalign run``: volumes as folders, each stage's envelope and command, the retry loop, table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from longalign_operator.builders import Run, attempt_name
from longalign_operator.local import runfile, table
from longalign_operator.local.runner import run_stages
from longalign_operator.local.stages import LocalStages, Services
from longalign_operator.local.volumes import Volumes
from longalign_operator.plan import JobView, PodView, parse_time
from longalign_operator.spec import parse
from longalign_trainer.datagen.config import parse_config as datagen_config
from longalign_trainer.datagen.stage_config import to_datagen
from longalign_trainer.evaluate.config import parse_config as eval_config
from longalign_trainer.evaluate.config import to_eval
from longalign_trainer.train.config import TrainConfig
from longalign_trainer.train.stage_config import to_train

TINY = Path(__file__).parents[2] / "manifests" / "examples" / "tiny-local.yaml"


def spec(**storage):
    return parse(
        {
            "image": "i",
            "baseModelPath": "/models/m",
            "training": {"datasetPath": "/data/d.jsonl"},
            "storage": {
                "models": {"claimName": "models"},
                "data": {"claimName": "shared", "subPath": "d"},
                "checkpoints": {"claimName": "ckpt"},
                **storage,
            },
        }
    )


def test_each_mount_is_its_claims_folder_and_mounts_of_one_volume_share_it(tmp_path):
    v = Volumes.for_spec(spec(documents={"claimName": "shared", "subPath": "d"}), tmp_path)
    assert v.folders == {
        "models": tmp_path / "models",
        "data": tmp_path / "shared/d",
        "checkpoints": tmp_path / "ckpt",
        "results": tmp_path / "ckpt",
        "documents": tmp_path / "shared/d",
    }
    given = Volumes.for_spec(spec(), tmp_path, {"data": Path("/srv/data")})
    assert given.folders["data"] == given.folders["documents"] == Path("/srv/data")  # documents default to data
    assert given.local("/data/r/x.jsonl") == "/srv/data/r/x.jsonl" and given.local("/database") == "/database"
    assert given.localize({"a": ["/models/m", "http://h/v1", 3]}) == {
        "a": [str(tmp_path / "models/m"), "http://h/v1", 3]
    }


@pytest.fixture
def tiny(tmp_path) -> LocalStages:
    loaded = runfile.load(TINY)
    return LocalStages(loaded.run, loaded.options, Volumes.for_spec(loaded.run.spec, tmp_path), tmp_path)


def test_every_stage_reads_its_local_envelope_with_local_paths_and_the_annotations_settings(tiny, tmp_path):
    w = str(tmp_path)
    datagen = datagen_config(to_datagen(tiny.envelope("dataGeneration", 1), {"LONGALIGN_TEACHER_URL": "http://t/v1"}))
    assert (str(datagen.documents_dir), str(datagen.output_dir)) == (f"{w}/data/documents", f"{w}/data/tiny-local")
    assert datagen.teacher.tokenizer == f"{w}/models/tiny-llama" and datagen.teacher.max_model_len == 4096
    assert (datagen.teacher.answer_max_tokens, datagen.keep_truncated_answers, datagen.engine.concurrency) == (
        48,
        True,
        4,
    )

    train = TrainConfig.model_validate(to_train(tiny.envelope("training", 1)))
    assert str(train.model_path) == f"{w}/models/tiny-llama" and str(train.output_dir) == f"{w}/checkpoints/tiny-local"
    assert [str(d.path) for d in train.data] == [f"{w}/data/tiny-local/data.jsonl"]
    assert str(train.termination_message_path) == f"{w}/attempts/tiny-local-train-1/termination-message.json"
    assert (train.max_tokens_per_pack, train.progress_interval_s, train.gradient_checkpointing) == (4096, 0, False)

    local_judge = Services(section={"judge": {"endpoint": "http://127.0.0.1:9/v1"}})
    evaluation = eval_config(to_eval(tiny.envelope("evaluation", 2, local_judge)))
    assert str(evaluation.model.path) == f"{w}/checkpoints/tiny-local/model"
    assert str(evaluation.longbench_chat.path) == f"{w}/data/longbench-chat/cases.jsonl"
    assert str(evaluation.output_dir) == f"{w}/checkpoints/tiny-local"  # results share the checkpoints volume
    assert (evaluation.judge.base_url, evaluation.judge.model, evaluation.judge.constrain) == (
        "http://127.0.0.1:9/v1",
        "judge",
        "regex",
    )


def test_stage_commands_are_the_pods_with_local_config_and_torchrun_on_this_machine(tiny, tmp_path):
    longalign = str(Path(sys.executable).parent / "longalign")
    assert tiny.command("evaluation", tmp_path / "c.json") == [longalign, "eval", "--config", str(tmp_path / "c.json")]
    train = tiny.command("training", tmp_path / "c.json")
    assert train[:4] == [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2"]
    assert train[-5:] == ["--no-python", longalign, "train", "--config", str(tmp_path / "c.json")]


class Scripted:
    """Stands in for LocalStages: each attempt ends with the next scripted exit code."""

    def __init__(self, exit_codes: list[int]) -> None:
        self.run = Run("r", "default", "local", {}, spec())
        self.exit_codes, self.started = list(exit_codes), []

    def run_attempt(self, stage: str, attempt: int) -> JobView:
        self.started.append((stage, attempt))
        code = self.exit_codes.pop(0)
        pod = PodView(
            name="p",
            phase="Succeeded" if code == 0 else "Failed",
            exit_code=code,
            termination_message=json.dumps({"final_loss": 1.5} if code == 0 else {"error": "boom"}),
        )
        return JobView(name=attempt_name("r", stage, attempt), state="Complete" if code == 0 else "Failed", pods=(pod,))


@pytest.mark.parametrize(
    "codes, phase, started",
    [
        ([1, 1, 0], "Succeeded", [("training", 1), ("training", 2), ("training", 3)]),  # backoffLimit 2 (the default)
        ([1, 1, 1], "Failed", [("training", 1), ("training", 2), ("training", 3)]),
        ([2], "Failed", [("training", 1)]),  # a bad config: no retry can fix it
    ],
)
def test_the_operators_planner_retries_a_stage_up_to_its_backoff_limit(tmp_path, codes, phase, started):
    scripted = Scripted(codes)
    with open(tmp_path / "events", "w") as events:
        status = run_stages(scripted, tmp_path / "status.json", out=events)
    assert (status.phase, scripted.started) == (phase, started)
    assert json.loads((tmp_path / "status.json").read_text())["phase"] == phase
    if phase == "Succeeded":
        assert status.results.final_loss == 1.5


def test_the_table_has_the_crds_wide_columns():
    status = {
        "phase": "Succeeded",
        "progress": "100%",
        "message": "all stages succeeded",
        "loss": "7.251",
        "score": "4.00",
        "results": {"finalLoss": 7.250613, "longBenchChatScore": 4.0},
        "conditions": [{"type": "Failed", "status": "False"}, {"type": "Succeeded", "status": "True"}],
    }
    resource = {"metadata": {"name": "tiny", "creationTimestamp": "2026-01-01T00:00:00Z"}, "status": status}
    header, row = table.render(resource, now=parse_time("2026-01-01T00:07:30Z")).splitlines()
    assert header.split() == [
        "NAME",
        "PHASE",
        "STAGE",
        "ATTEMPT",
        "PROGRESS",
        "ETA",
        "LOSS",
        "SCORE",
        "SUCCEEDED",
        "MESSAGE",
        "AGE",
    ]
    assert row.split() == [
        "tiny",
        "Succeeded",
        "<none>",
        "<none>",
        "100%",
        "<none>",
        "7.251",
        "4.00",
        "True",
        "all",
        "stages",
        "succeeded",
        "7m30s",
    ]
    assert table.render(resource, wide=False).splitlines()[0].split() == [
        "NAME",
        "PHASE",
        "STAGE",
        "ATTEMPT",
        "PROGRESS",
        "ETA",
        "LOSS",
        "SCORE",
        "AGE",
    ]
