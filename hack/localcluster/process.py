"""Processes of the local cluster: started in their own process group with a parent-death signal, logged to a
file each, and stopped in reverse start order with a timeout, so nothing outlives the cluster."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    """Call ``predicate`` until it returns something truthy and return that; TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def _die_with_parent() -> None:
    """Runs in each child before exec: own process group, and SIGTERM if the parent dies."""
    os.setsid()
    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class ClusterError(RuntimeError):
    """The cluster did not come up; the message names the component and its log file."""


class Processes:
    """The cluster's processes, in start order; each logs to ``<log_dir>/<name>.log``."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._procs: list[tuple[str, subprocess.Popen]] = []
        self._logs: list = []

    def spawn(self, name: str, argv: list[str], netns: Path | None = None) -> subprocess.Popen:
        """Start ``argv`` as component ``name``; inside the network namespace ``netns`` when given.

        ``nsenter --net`` (not ``ip netns exec``, which remounts /sys and hides the cgroup mounts from a kubelet).
        """
        if netns is not None:
            argv = ["nsenter", f"--net={netns}", "--", *argv]
        log = open(self.log_dir / f"{name}.log", "a")  # noqa: SIM115 - closed in stop(); "a": a restart appends
        self._logs.append(log)
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent
        )
        self._procs.append((name, proc))
        return proc

    def check(self) -> None:
        """Raise ClusterError naming the first component that has exited."""
        for name, proc in self._procs:
            if proc.poll() is not None:
                raise ClusterError(f"{name} exited with code {proc.returncode}; see {self.log_dir / name}.log")

    @property
    def pids(self) -> list[int]:
        """Process ids of the running components."""
        return [p.pid for _, p in self._procs]

    def stop(self, names: set[str] | None = None, timeout: float = 15.0) -> None:
        """Stop components (all, or those in ``names``) in reverse start order; SIGKILL what outlives ``timeout``."""
        for name, proc in reversed(list(self._procs)):
            if names is not None and name not in names:
                continue
            self._procs.remove((name, proc))
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        if not self._procs:
            for f in self._logs:
                f.close()
            self._logs.clear()
