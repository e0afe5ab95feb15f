"""The client of every model endpoint names the server it could not reach."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from longalign_trainer.chat_client import ChatClient, EngineConfig, FatalRequestError, RequestFailed


@dataclass
class Endpoint:
    base_urls: list[str]
    model: str = "m"
    api_key_env: str = "LONGALIGN_TEST_NO_KEY"
    temperature: float = 0.0
    top_p: float = 1.0
    send_seed: bool = False
    max_model_len: int | None = None


def closed_port_url() -> str:
    """The URL of a port on this machine where nothing listens (bound for a moment, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_an_unreachable_server_is_named_with_the_reason_once_retries_are_exhausted():
    url = closed_port_url()
    client = ChatClient(Endpoint([url]), EngineConfig(max_retries=1, backoff_initial_s=0.0, request_timeout_s=5))

    async def ask() -> None:
        try:
            with pytest.raises(RequestFailed) as completion:
                await client.complete([{"role": "user", "content": "hi"}], max_tokens=1, endpoint=0)
            with pytest.raises(RequestFailed) as models:
                await client.max_model_len()
        finally:
            await client.close()
        assert str(completion.value) == (
            f"gave up after 2 attempts; last: {url}/: cannot connect (All connection attempts failed)"
        )
        assert str(models.value).startswith(f"no server answered /models: {url}/: ")

    asyncio.run(ask())
    assert client.stats["connection_errors"] == 2


def _models_server(port: int, model: str) -> ThreadingHTTPServer:
    """An OpenAI-style ``GET /v1/models`` listing ``model``, on ``port`` (what vLLM answers once loaded)."""

    class Models(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"object": "list", "data": [{"id": model, "object": "model"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Models)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_the_client_waits_for_a_server_that_starts_later_and_names_one_that_never_does():
    url = closed_port_url()
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    client = ChatClient(Endpoint([url]), EngineConfig())
    servers: list[ThreadingHTTPServer] = []
    starter = threading.Timer(1.5, lambda: servers.append(_models_server(port, "m")))
    starter.start()

    async def wait(c: ChatClient, timeout: float) -> float:
        try:
            return await c.wait_until_serving(timeout, interval_s=0.2)
        finally:
            await c.close()

    try:
        waited = asyncio.run(wait(client, 30))
        assert 1.0 <= waited < 10  # it waited for the late server, then went on at once
        never = closed_port_url()
        with pytest.raises(RequestFailed, match=rf"not serving 'm' after 1 s: {re.escape(never)}/ \("):
            asyncio.run(wait(ChatClient(Endpoint([never]), EngineConfig()), 1))
        with pytest.raises(FatalRequestError, match=r"does not serve 'other' \(it serves \['m'\]\)"):
            asyncio.run(wait(ChatClient(Endpoint([url], model="other"), EngineConfig()), 5))
    finally:
        starter.cancel()
        for s in servers:
            s.shutdown()
