"""Fixtures of the data generation tests: one real vLLM CPU server for the session, documents, a faulty proxy.

The server serves the tiny random Llama (built here in seconds) with a 4096-token context; every test shares it.
``FaultProxy`` stands between the generator and that server to produce what a healthy vLLM will not produce on
demand (429, 503, slow answers, a server that goes away); whatever it forwards is the real server's answer.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from longalign_trainer.tiny_model import build_tiny_model, local_corpus
from longalign_trainer.vllm_server import VLLMServer

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
    server = VLLMServer(tiny_model_dir, served_name="tiny", max_model_len=SERVER_CONTEXT,
                        log_path=tmp_path_factory.mktemp("vllm") / "server.log")
    with server:
        print(f"\nvLLM server ready in {time.monotonic() - t0:.0f} s at {server.base_url}")
        yield server


def corpus_documents(n: int, chars: int, start: int = 0) -> list[str]:
    """``n`` documents of about ``chars`` characters each, made of stdlib docstrings (paragraphs)."""
    texts = local_corpus()
    docs, cur, i = [], "", start
    while len(docs) < n:
        text = texts[i % len(texts)].strip()
        if len(text) > chars:  # bound each piece: a document stays under about twice ``chars``
            text = text[:text.rfind("\n\n", 0, chars) if "\n\n" in text[:chars] else chars]
        cur += text + "\n\n"
        i += 1
        if len(cur) >= chars:
            docs.append(cur.strip())
            cur = ""
    return docs


def base_config(tmp_path: Path, documents_dir: Path, base_urls: list[str], tiny_model_dir: Path, **overrides) -> dict:
    """A datagen config for the tiny teacher: short outputs, so that tests stay fast on 2 cores."""
    cfg = {
        "documents_dir": str(documents_dir),
        "min_tokens": 200, "max_tokens": 1500,
        "teacher": {"base_urls": base_urls, "model": "tiny", "tokenizer": str(tiny_model_dir),
                    "question_max_tokens": 1200, "answer_max_tokens": 48, "temperature": 1.0},
        "question_max_chars": 60,
        "keep_truncated_answers": True,  # a random model rarely ends on its own
        "engine": {"concurrency": 4, "request_timeout_s": 30, "max_retries": 3, "backoff_initial_s": 0.1,
                   "backoff_max_s": 1.0, "max_consecutive_failures": 3},
        "output_dir": str(tmp_path / "out"),
        "shard_max_samples": 2,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(json.dumps(cfg))
    return path


class FaultProxy:
    """An HTTP server speaking the OpenAI API by forwarding to ``upstream``, except where ``fault(n)`` says.

    ``fault(n)`` is called for the n-th chat completion request (from 0) and returns None (forward), an HTTP
    status to answer with an OpenAI-style error body, ``("delay", seconds)`` to forward after a pause, or
    ``"drop"`` to close the connection without an answer.
    ``stop()`` closes the listening socket: later requests get "connection refused", as from a dead server.
    """

    def __init__(self, upstream: str, fault=lambda n: None, port: int = 0) -> None:
        self.upstream = upstream.rstrip("/")
        self.fault = fault
        self.completions = 0
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
                    action = proxy.fault(n)
                    if isinstance(action, int):
                        return self._reply(action, json.dumps({"error": {
                            "message": f"injected fault {action}", "type": "server_error", "code": action}}).encode(),
                            {"Retry-After": "0"} if action == 429 else {})
                    if isinstance(action, tuple) and action[0] == "delay":
                        time.sleep(action[1])
                    if action == "drop":  # the connection closes without an answer, as when a server crashes
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                self._forward(body)

            def _forward(self, body):
                root = proxy.upstream.removesuffix("/v1")  # self.path already starts with /v1
                req = urllib.request.Request(root + self.path, data=body, method=self.command,
                                             headers={"Content-Type": "application/json"})
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
        try:
            p.stop()
        except OSError:
            pass
