"""The client of every model endpoint names the server it could not reach."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

import pytest

from longalign_trainer.chat_client import ChatClient, EngineConfig, RequestFailed


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
