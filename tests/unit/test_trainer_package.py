"""The trainer package stands alone: the trainer image's distribution (``trainer/pyproject.toml``) holds it only,
and its stage commands run with the operator package not importable."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from longalign_trainer.cli import STAGE_COMMANDS

ROOT = Path(__file__).resolve().parents[2]

# Runs in a fresh interpreter: the operator (and the Kubernetes clients) cannot be imported, then each stage
# command's --help runs through the trainer's own entry point.
HELP_WITHOUT_OPERATOR = """
import contextlib, io, json, sys
for name in ("longalign_operator", "kopf", "kubernetes"):
    sys.modules[name] = None  # `import name` now raises ImportError
from longalign_trainer import cli
out = {"package": cli.__file__, "help": {}}
for command in cli.STAGE_COMMANDS:
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        try:
            cli.main([command, "--help"])
        except SystemExit as e:
            out["help"][command] = [e.code, text.getvalue()]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def trainer_wheel(tmp_path_factory) -> Path:
    """The trainer distribution built as a wheel, from a copy of ``trainer/`` (no build output in the tree)."""
    work = tmp_path_factory.mktemp("trainer-dist")
    shutil.copytree(ROOT / "trainer", work / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(work / "wheels"),
            str(work / "src"),
        ],
        check=True,
    )
    (wheel,) = (work / "wheels").glob("longalign_trainer-*.whl")
    return wheel


def test_the_trainer_distribution_holds_the_trainer_package_its_files_and_the_longalign_command(trainer_wheel):
    names = zipfile.ZipFile(trainer_wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"longalign_trainer", "longalign_trainer-0.1.0.dist-info"}
    for shipped in ("datagen/prompts/general.txt", "datagen/example.yaml", "evaluate/data/example.yaml"):
        assert f"longalign_trainer/{shipped}" in names
    entry_points = zipfile.ZipFile(trainer_wheel).read("longalign_trainer-0.1.0.dist-info/entry_points.txt").decode()
    assert "longalign = longalign_trainer.cli:main" in entry_points


def test_stage_commands_run_from_the_installed_trainer_package_without_the_operator(trainer_wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(trainer_wheel)],
        check=True,
    )
    done = subprocess.run(
        [sys.executable, "-c", HELP_WITHOUT_OPERATOR],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(target)},
        check=True,
    )
    out = json.loads(done.stdout)
    assert out["package"].startswith(str(target))  # the installed wheel, not the source tree
    assert set(out["help"]) == set(STAGE_COMMANDS) == {"train", "datagen", "eval", "teacher-server", "tiny-model"}
    for command, (code, text) in out["help"].items():
        assert code == 0 and text.startswith(f"usage: longalign {command}"), (command, code, text)


def test_the_trainer_distribution_declares_what_the_root_declares_for_the_stages():
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    trainer = tomllib.loads((ROOT / "trainer" / "pyproject.toml").read_text())
    assert trainer["project"]["dependencies"] == (
        root["project"]["dependencies"] + root["project"]["optional-dependencies"]["trainer"]
    )
    assert trainer["tool"]["setuptools"]["package-data"] == root["tool"]["setuptools"]["package-data"]
    assert trainer["project"]["version"] == root["project"]["version"]
