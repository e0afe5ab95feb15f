"""One stage attempt as a local process: the pod's command, config envelope, servers and environment.

The envelope is the operator's (``builders.stage_config``, the spec's stage ``settings`` included), with every
pod path made local. Around the command, what the pod would find in the cluster:

    dataGeneration  the teacher served by a local vLLM (LONGALIGN_TEACHER_URL), stopped when the attempt ends
    training        torchrun with ``--train-processes`` processes on this machine (DeepSpeed on the CPU, gloo)
    evaluation      the judge: a local vLLM when the annotation names a judge model, else the spec's endpoint with
                    the key from LONGALIGN_JUDGE_API_KEY; the stage serves the checkpoint itself, as in its pod
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from longalign_operator import builders
from longalign_operator.local.progress import StageDisplay
from longalign_operator.local.runfile import LocalOptions
from longalign_operator.local.volumes import Volumes
from longalign_operator.plan import ATTR, JobView, PodView
from longalign_operator.spec import SecretKeyRef
from longalign_trainer.contract import JUDGE_KEY_ENV, TEACHER_URL_ENV, TERMINATION_MESSAGE_PATH_ENV

LOCAL_JUDGE_KEY = "local"  # vLLM ignores keys; the stage's client still wants one


def _secret(ref: SecretKeyRef | None) -> str:
    """Where the pods get the judge's key, for messages."""
    return f"Secret {ref.name}" if ref is not None else "the Secret evaluation.judge.apiKeySecretRef names (unset)"


class MissingJudgeKey(RuntimeError):
    """The spec's judge endpoint needs a key and the environment has none."""


@dataclass(frozen=True)
class LocalStages:
    """Everything needed to run any stage attempt of one run here."""

    run: builders.Run
    options: LocalOptions
    volumes: Volumes
    workdir: Path
    train_processes: int = 2

    def envelope(self, stage: str, attempt: int, services: Services | None = None) -> dict:
        """The stage config file's content: the operator's envelope, with local settings and local paths."""
        envelope = builders.stage_config(self.run, stage, attempt)
        envelope[stage] = builders.merge(envelope[stage], services.section if services else {})
        envelope = self.volumes.localize(envelope)
        envelope["terminationMessagePath"] = str(self.summary_path(stage, attempt))
        return envelope

    def attempt_dir(self, stage: str, attempt: int) -> Path:
        return self.workdir / "attempts" / builders.attempt_name(self.run.name, stage, attempt)

    def summary_path(self, stage: str, attempt: int) -> Path:
        return self.attempt_dir(stage, attempt) / "termination-message.json"

    def log_path(self, stage: str, attempt: int) -> Path:
        return self.attempt_dir(stage, attempt) / "output.log"

    def command(self, stage: str, config: Path) -> list[str]:
        """The pod's command, with the ``longalign`` of this environment and the local config file."""
        longalign = shutil.which("longalign", path=str(Path(sys.executable).parent)) or "longalign"
        command = [longalign, *builders.stage_command(stage)[1:-1], str(config)]
        if stage == "training":
            from longalign_trainer.vllm_server import free_port

            return [
                sys.executable,
                "-m",
                "torch.distributed.run",
                f"--nproc-per-node={self.train_processes}",
                f"--master-port={free_port()}",
                "--no-python",
                *command,
            ]
        return command

    def check_ready(self) -> None:
        """Fail before any stage runs when evaluation will need a judge key that is not set."""
        evaluation = self.run.spec.evaluation
        if (
            evaluation.enabled
            and evaluation.judge is not None
            and self.options.judge_model_path is None
            and not os.environ.get(JUDGE_KEY_ENV)
        ):
            raise MissingJudgeKey(
                f"evaluation.judge: set {JUDGE_KEY_ENV} to the API key of {evaluation.judge.endpoint} (the pods get "
                f"it from {_secret(evaluation.judge.api_key_secret_ref)}), or serve a judge locally with "
                "judgeModelPath in the longalign.dev/local-run annotation"
            )

    def run_attempt(self, stage: str, attempt: int) -> JobView:
        """Run one attempt to its end, showing its progress; what the operator would observe of its Job."""
        folder = self.attempt_dir(stage, attempt)
        folder.mkdir(parents=True, exist_ok=True)
        self.summary_path(stage, attempt).unlink(missing_ok=True)
        display = StageDisplay(self.log_path(stage, attempt))
        name = builders.attempt_name(self.run.name, stage, attempt)
        try:
            with self._services(stage, folder) as services:
                config = folder / "config.json"
                config.write_text(json.dumps(self.envelope(stage, attempt, services), indent=2, sort_keys=True))
                env = {**services.env, TERMINATION_MESSAGE_PATH_ENV: str(self.summary_path(stage, attempt))}
                exit_code = self._execute(stage, self.command(stage, config), env, display)
        except ServiceError as e:
            return _job(name, 1, json.dumps({"error": str(e)[-3000:]}), None)
        summary = self.summary_path(stage, attempt)
        message = summary.read_text() if summary.is_file() else None
        return _job(name, exit_code, message, display.last)

    def _execute(self, stage: str, command: list[str], extra_env: dict[str, str], display: StageDisplay) -> int:
        env = {**os.environ, **self._pod_env(stage), **extra_env}
        if stage == "training":
            env.setdefault("OMP_NUM_THREADS", "1")  # one thread per process: the processes share the cores
        with subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, env=env
        ) as proc:
            assert proc.stdout is not None  # stdout=PIPE
            try:
                display.follow(proc.stdout)
            finally:
                if proc.poll() is None:
                    proc.terminate()
            return proc.wait()

    def _pod_env(self, stage: str) -> dict[str, str]:
        """The literal env values the spec gives the stage's pods (valueFrom needs a cluster: left out)."""
        options = getattr(self.run.spec, ATTR[stage])
        return {e["name"]: str(e["value"]) for e in options.pod.env or [] if "value" in e}

    @contextlib.contextmanager
    def _services(self, stage: str, folder: Path) -> Iterator[Services]:
        """The servers a stage's pod finds in the cluster, started here for the attempt."""
        spec = self.run.spec
        if stage == "dataGeneration":
            teacher = spec.data_generation.required_teacher()
            with vllm(
                self.volumes.local(teacher.model_path),
                teacher.served_name,
                teacher.max_model_len,
                folder / "teacher-vllm.log",
                teacher.extra_args,
            ) as url:
                yield Services(env={TEACHER_URL_ENV: url})
        elif stage == "evaluation" and spec.evaluation.judge is not None and self.options.judge_model_path:
            name = spec.evaluation.judge.model
            judge_model = self.volumes.local(self.options.judge_model_path)
            with vllm(judge_model, name, None, folder / "judge-vllm.log", self.options.judge_extra_args) as url:
                yield Services(env={JUDGE_KEY_ENV: LOCAL_JUDGE_KEY}, section={"judge": {"endpoint": url}})
        else:
            yield Services()


@dataclass(frozen=True)
class Services:
    """What the servers started for an attempt tell its stage."""

    env: dict[str, str] = field(default_factory=dict)
    section: dict = field(default_factory=dict)
    """Merged into the stage's section of the envelope (e.g. the local judge's endpoint)."""


class ServiceError(RuntimeError):
    """A server the stage needs could not start (the message holds its log's last lines)."""


@contextlib.contextmanager
def vllm(
    model: str, served_name: str, max_model_len: int | None, log_path: Path, extra_args: list[str]
) -> Iterator[str]:
    """A local vLLM server for ``model``; yields its OpenAI base URL and stops it afterwards."""
    from longalign_trainer.vllm_server import VLLMServer, VLLMServerError

    print(f"starting vLLM for {model} (log: {log_path})", flush=True)
    server = VLLMServer(
        model, served_name=served_name, max_model_len=max_model_len, extra_args=extra_args, log_path=log_path
    )
    try:
        server.start()
    except VLLMServerError as e:
        raise ServiceError(str(e)) from None
    try:
        yield server.base_url
    finally:
        server.stop()


def _job(name: str, exit_code: int, message: str | None, progress: dict | None) -> JobView:
    """A finished attempt as the operator sees a finished Job: one pod, its exit code and termination message."""
    ok = exit_code == 0
    pod = PodView(
        name=f"{name}-local", phase="Succeeded" if ok else "Failed", exit_code=exit_code, termination_message=message
    )
    return JobView(name=name, state="Complete" if ok else "Failed", pods=(pod,), progress=progress)
