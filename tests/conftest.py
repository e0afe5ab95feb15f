"""Shared fixtures: the local control plane (one per test session) and a fresh namespace per test."""

from __future__ import annotations

import contextlib
import re
import time
import uuid

import pytest

from localcluster import LocalCluster, wait_for


@pytest.fixture(scope="session")
def cluster(tmp_path_factory) -> LocalCluster:
    """A real cluster with 8 GPU and 2 CPU KWOK nodes, 2 real nodes and Kueue (used only by Jobs that name a
    LocalQueue), fresh for this session, stopped at its end."""
    t0 = time.monotonic()
    with LocalCluster(data_dir=tmp_path_factory.mktemp("cluster"), kueue=True) as c:
        print(f"\nlocal cluster ready in {time.monotonic() - t0:.1f} s; KUBECONFIG={c.kubeconfig}")
        yield c


@pytest.fixture
def namespace(cluster: LocalCluster, request) -> str:
    """A namespace of its own for one test, deleted afterwards (its pods waited for)."""
    base = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    name = f"{base}-{uuid.uuid4().hex[:5]}"
    cluster.kubectl("create", "namespace", name)
    # Pods are refused until the controller manager has made the namespace's default ServiceAccount.
    wait_for(
        lambda: cluster.kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0,
        30,
        f"the default ServiceAccount in {name}",
    )
    yield name
    # The namespace goes in the background (the namespace controller's passes take 5-10 s); what a later test could
    # meet is its pods, holding their nodes' resources until they are gone: forced, they go at once. A terminating
    # namespace takes no new pods, so no Job of it makes one again.
    cluster.kubectl("delete", "namespace", name, "--wait=false")
    cluster.kubectl("delete", "pods", "--all", "-n", name, "--force", "--grace-period=0", check=False)
    wait_for(lambda: not cluster.get("pods", "-n", name)["items"], 60, f"the pods of namespace {name} to be gone")


# ---------------------------------------------------------------------------------------------------------------
# One real vLLM CPU server per session, shared by the data generation and evaluation tests.
#
# It serves the tiny random Llama (built here in seconds) as "tiny" with a 4096-token context. ``FaultProxy``
# stands between a client and that server to produce what a healthy vLLM will not produce on demand (429, 503,
# slow answers, a server that goes away); whatever it forwards is the real server's answer.

import json  # noqa: E402
import os  # noqa: E402
import threading  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

from longalign_trainer.tiny_model import build_tiny_model  # noqa: E402
from longalign_trainer.vllm_server import VLLMServer  # noqa: E402

SERVER_CONTEXT = 4096


# For quick iterations only: reuse a server you started yourself (serving TINY_MODEL as "tiny", 4096 context).
REUSE_URL, REUSE_MODEL = os.environ.get("LONGALIGN_TEST_VLLM_URL"), os.environ.get("LONGALIGN_TEST_TINY_MODEL")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    if REUSE_URL and REUSE_MODEL:
        return Path(REUSE_MODEL)
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def vllm_server(tiny_model_dir, tmp_path_factory):
    """One real vLLM OpenAI server (CPU) for the whole session, stopped at its end."""
    if REUSE_URL and REUSE_MODEL:
        yield SimpleNamespace(base_url=REUSE_URL)
        return
    t0 = time.monotonic()
    server = VLLMServer(
        tiny_model_dir,
        served_name="tiny",
        max_model_len=SERVER_CONTEXT,
        extra_args=["--enforce-eager"],  # a tiny model: no torch.compile (30 s of each start here)
        log_path=tmp_path_factory.mktemp("vllm") / "server.log",
    )
    with server:
        print(f"\nvLLM server ready in {time.monotonic() - t0:.0f} s at {server.base_url}")
        yield server


class FaultProxy:
    """An HTTP server speaking the OpenAI API by forwarding to ``upstream``, except where ``fault(n)`` says.

    ``fault(n)`` is called for the n-th chat completion request (from 0) and returns None (forward), an HTTP
    status to answer with an OpenAI-style error body, ``("delay", seconds)`` to forward after a pause, or
    ``"drop"`` to close the connection without an answer.
    ``stop()`` closes the listening socket: later requests get "connection refused", as from a dead server.
    ``requests`` records what clients sent (to check prompts and that an API key travels only in its header).
    """

    def __init__(self, upstream: str, fault=lambda n: None, port: int = 0) -> None:
        self.upstream = upstream.rstrip("/")
        self.fault = fault
        self.completions = 0
        self.requests: list[dict] = []  # each chat completion's JSON body and Authorization header, in order
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                self._forward(None)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path.endswith("/chat/completions"):
                    with proxy.lock:
                        n = proxy.completions
                        proxy.completions += 1
                        proxy.requests.append(
                            {"body": json.loads(body or b"{}"), "authorization": self.headers.get("Authorization")}
                        )
                    action = proxy.fault(n)
                    if isinstance(action, int):
                        return self._reply(
                            action,
                            json.dumps(
                                {
                                    "error": {
                                        "message": f"injected fault {action}",
                                        "type": "server_error",
                                        "code": action,
                                    }
                                }
                            ).encode(),
                            {"Retry-After": "0"} if action == 429 else {},
                        )
                    if isinstance(action, tuple) and action[0] == "delay":
                        time.sleep(action[1])
                    if action == "drop":  # the connection closes without an answer, as when a server crashes
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                self._forward(body)

            def _forward(self, body):
                root = proxy.upstream.removesuffix("/v1")  # self.path already starts with /v1
                req = urllib.request.Request(
                    root + self.path, data=body, method=self.command, headers={"Content-Type": "application/json"}
                )
                try:
                    with urllib.request.urlopen(req, timeout=120) as resp:
                        self._reply(resp.status, resp.read())
                except urllib.error.HTTPError as e:
                    self._reply(e.code, e.read())
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _reply(self, status, data, headers=None):
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fault_proxy(vllm_server):
    """Factory: ``fault_proxy(fault, port=0)`` starts a FaultProxy in front of the session's server."""
    proxies = []

    def make(fault=lambda n: None, port: int = 0) -> FaultProxy:
        p = FaultProxy(vllm_server.base_url, fault, port)
        proxies.append(p)
        return p

    yield make
    for p in proxies:
        with contextlib.suppress(OSError):
            p.stop()
