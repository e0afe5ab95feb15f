"""A run file that cannot be run ends ``longalign run`` with one clear message naming the field, and exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from longalign_operator.cli import main

TINY = Path(__file__).parents[2] / "manifests" / "examples" / "tiny-local.yaml"


def longalign_run(capsys, *args) -> tuple[int, str]:
    code = main(["run", *map(str, args)])
    return code, capsys.readouterr().err


def variant(tmp_path: Path, old: str, new: str) -> Path:
    text = TINY.read_text()
    assert old in text
    path = tmp_path / "run.yaml"
    path.write_text(text.replace(old, new))
    return path


@pytest.mark.parametrize(
    "old, new, message",
    [
        (
            "maxTokensPerPack: 4096",
            "maxTokensPerPack: 4000",
            "invalid spec:\n  spec.training.maxTokensPerPack: Input should be a multiple of 128",
        ),
        ("    nodes: 1\n", "    nodes: 1\n    nodez: 2\n", "spec.training.nodez: Extra inputs are not permitted"),
        (
            "\n  dataGeneration:\n",
            "\n  dataGeneration:\n    enabled: false\n",
            "spec.training.datasetPath: required when training is enabled and dataGeneration is not",
        ),
        (
            "judgeModelPath:",
            "judgeModel:",
            "metadata.annotations[longalign.dev/local-run] is invalid:\n  judgeModel: Extra inputs are not permitted",
        ),
        (
            "judgeModelPath: /models/tiny-llama\n",
            "judgeModelPath: /models/tiny-llama\n      stageSettings: {training: {progress_interval_s: 0}}\n",
            "stageSettings: moved into the spec, as spec.<stage>.settings",
        ),
        ("kind: LongAlignRun", "kind: Pod", "apiVersion/kind: expected longalign.dev/v1alpha1 LongAlignRun"),
        ("  name: tiny-local\n", "", "metadata.name: required"),
        ("  baseModelPath: /models/tiny-llama\n", "  baseModelPath: [/models/tiny-llama\n", "not valid YAML: line "),
    ],
)
def test_an_invalid_run_file_names_the_field_and_exits_2(tmp_path, capsys, old, new, message):
    code, err = longalign_run(capsys, variant(tmp_path, old, new), "--workdir", tmp_path / "w")
    assert code == 2
    assert err.startswith(f"longalign run: {tmp_path / 'run.yaml'}: ")
    assert message in err
    assert not (tmp_path / "w").exists()  # nothing ran, nothing was made


def test_a_missing_file_and_a_bad_volume_argument_are_named(tmp_path, capsys):
    assert longalign_run(capsys, tmp_path / "nope.yaml") == (
        2,
        f"longalign run: {tmp_path / 'nope.yaml'}: no such file\n",
    )
    code, err = longalign_run(capsys, TINY, "--volume", "weights=/x", "--workdir", tmp_path)
    assert code == 2 and "--volume weights=/x: NAME must be one of models, data, checkpoints, results, documents" in err


def test_an_external_judge_without_its_key_is_refused_before_anything_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LONGALIGN_JUDGE_API_KEY", raising=False)
    code, err = longalign_run(
        capsys,
        variant(tmp_path, "judgeModelPath: /models/tiny-llama", "judgeModelPath: null"),
        "--workdir",
        tmp_path / "w",
    )
    assert code == 2
    assert "evaluation.judge: set LONGALIGN_JUDGE_API_KEY to the API key of http://judge.local/v1" in err
    assert not (tmp_path / "w").exists()


def test_the_command_prints_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: [\n")
    done = subprocess.run(
        [sys.executable, "-m", "longalign_operator.cli", "run", str(bad)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert done.stderr.startswith(f"longalign run: {bad}: not valid YAML: line 2, column 1: ")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
