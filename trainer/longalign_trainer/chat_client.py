"""The one client for every model endpoint (the teacher, the evaluated checkpoint, the judge): chat completions
over one or more OpenAI-compatible servers, with retries and failover.

Every request goes through ``ChatClient.complete``, which

* bounds the requests in flight (one semaphore over all servers);
* retries 429, 5xx, timeouts and lost connections with exponential backoff and jitter (honouring
  ``Retry-After``), moving to the next server after a lost connection or a server error;
* turns "the prompt does not fit the context" (HTTP 400 from vLLM) into ``ContextOverflow``, which the caller
  counts and skips: retrying it can never succeed;
* turns any other 4xx (wrong model name, bad key, ...) into ``FatalRequestError``: the run stops, because every
  other request would fail the same way.

Every error names the server's URL. How requests are sent (``EngineConfig``) is the ``engine`` section of the
data generation and evaluation configs alike.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

import openai
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam

_CONTEXT = re.compile(
    r"maximum context length|max_model_len|context length|too long|exceeds.*(limit|context)", re.IGNORECASE
)


class EngineConfig(BaseModel):
    """How requests are sent."""

    model_config = ConfigDict(extra="forbid")

    concurrency: int = Field(
        16,
        gt=0,
        description="documents in flight at once (each sends its requests back "
        "to back); set it high enough to keep every server's queue full",
    )
    request_timeout_s: float = Field(600.0, gt=0)
    max_retries: int = Field(5, ge=0, description="retries of one request on 429, 5xx, timeouts, lost connections")
    backoff_initial_s: float = Field(1.0, ge=0)
    backoff_max_s: float = Field(30.0, ge=0)
    startup_wait_s: float = Field(
        1800.0,
        ge=0,
        description="data generation: wait this long at the start for a teacher server to serve the model "
        "(servers started beside the generator, e.g. the teacher's pods, load their model first)",
    )
    max_consecutive_failures: int = Field(
        8,
        gt=0,
        description="stop the run (resumable) after this many documents in a row failed for lack of a usable server",
    )


class EndpointSettings(Protocol):
    """What the client reads of an endpoint's settings (datagen's ``teacher``, evaluation's ``Endpoint``)."""

    base_urls: list[str]
    model: str
    api_key_env: str
    temperature: float
    top_p: float
    send_seed: bool
    max_model_len: int | None


class ContextOverflow(Exception):
    """The request can never fit the server's context."""


class RequestFailed(Exception):
    """Retries are exhausted on transient errors (the server is down, overloaded or too slow)."""


class FatalRequestError(Exception):
    """A client error that retrying cannot fix (e.g. unknown model, rejected key)."""


@dataclass
class Completion:
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    endpoint: int


class ChatClient:
    """Async chat completions against ``endpoint.base_urls`` with the ``engine`` settings."""

    def __init__(self, endpoint: EndpointSettings, engine: EngineConfig) -> None:
        self.cfg, self.engine = endpoint, engine
        key = os.environ.get(endpoint.api_key_env) or "none"
        self.clients = [
            openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0, timeout=engine.request_timeout_s)
            for url in endpoint.base_urls
        ]
        self.semaphore = asyncio.Semaphore(engine.concurrency)
        self.in_flight = [0] * len(self.clients)  # documents assigned to each server
        self.stats: Counter[str] = Counter()

    async def close(self) -> None:
        for c in self.clients:
            await c.close()

    def assign(self) -> int:
        """The server with the fewest documents in flight (a document's requests stay on one server)."""
        i = min(range(len(self.clients)), key=lambda k: self.in_flight[k])
        self.in_flight[i] += 1
        return i

    def release(self, i: int) -> None:
        self.in_flight[i] -= 1

    async def wait_until_serving(self, timeout_s: float, interval_s: float = 2.0) -> float:
        """Until a server lists the model in ``/models`` (requests fail over from the others); returns the
        seconds waited. ``RequestFailed`` naming every server after ``timeout_s``; ``FatalRequestError`` when a
        server answers that it serves other models or refuses the key."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        last: dict[str, str] = {}
        while True:
            for client in self.clients:
                try:
                    models = await client.models.list()
                except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
                    raise FatalRequestError(f"{client.base_url}: {e}") from None
                except (openai.APIConnectionError, openai.APIStatusError) as e:
                    last[str(client.base_url)] = str(e)
                    continue
                served = [m.id for m in models.data]
                if self.cfg.model not in served:
                    raise FatalRequestError(f"{client.base_url} does not serve {self.cfg.model!r} (it serves {served})")
                return loop.time() - t0
            if loop.time() - t0 >= timeout_s:
                servers = ", ".join(f"{url} ({reason})" for url, reason in last.items())
                raise RequestFailed(f"not serving {self.cfg.model!r} after {timeout_s:.0f} s: {servers}")
            await asyncio.sleep(interval_s)

    async def max_model_len(self) -> int:
        """The servers' context length: from the config, else vLLM's ``max_model_len`` in ``/v1/models``."""
        if self.cfg.max_model_len:
            return self.cfg.max_model_len
        last = ""
        for attempt in range(self.engine.max_retries + 1):
            client = self.clients[attempt % len(self.clients)]
            try:
                models = await client.models.list()
            except (openai.APIConnectionError, openai.APIStatusError) as e:
                last = f"{client.base_url}: {e}"
                await asyncio.sleep(self._backoff(attempt))
                continue
            for m in models.data:
                if m.id == self.cfg.model:
                    value = (m.model_extra or {}).get("max_model_len")
                    if not value:
                        raise FatalRequestError(
                            f"{client.base_url} does not report max_model_len for "
                            f"{self.cfg.model}: set max_model_len in the config"
                        )
                    return int(value)
            raise FatalRequestError(
                f"{client.base_url} does not serve {self.cfg.model!r} (it serves {[m.id for m in models.data]})"
            )
        raise RequestFailed(f"no server answered /models: {last}")

    def _backoff(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(retry_after, self.engine.backoff_max_s)
        base = min(self.engine.backoff_max_s, self.engine.backoff_initial_s * 2**attempt)
        return base * random.uniform(0.5, 1.0)

    async def complete(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int,
        endpoint: int,
        seed: int | None = None,
        **constraint: Any,
    ) -> Completion:
        """One chat completion; see the module docstring for what is retried, skipped or fatal."""
        last = ""
        for attempt in range(self.engine.max_retries + 1):
            i = endpoint % len(self.clients)
            url = self.clients[i].base_url
            retry_after = None
            try:
                async with self.semaphore:
                    self.stats["requests"] += 1
                    resp = await self.clients[i].chat.completions.create(
                        model=self.cfg.model,
                        messages=cast("list[ChatCompletionMessageParam]", messages),
                        max_tokens=max_tokens,
                        temperature=self.cfg.temperature,
                        top_p=self.cfg.top_p,
                        **constraint,
                        seed=seed if self.cfg.send_seed and seed is not None else openai.omit,
                    )
            except openai.APITimeoutError as e:  # a subclass of APIConnectionError: test it first
                self.stats["timeouts"] += 1
                last = f"{url}: timeout after {self.engine.request_timeout_s:.0f} s ({e})"
            except openai.APIConnectionError as e:
                self.stats["connection_errors"] += 1
                last = f"{url}: cannot connect ({e.__cause__ or e})"  # the cause says why: refused, DNS, ...
                endpoint += 1
            except openai.APIStatusError as e:
                code = e.status_code
                if code == 400 and _CONTEXT.search(str(e)):
                    self.stats["context_overflows"] += 1
                    raise ContextOverflow(f"{url}: {e}") from e
                if code == 429 or code >= 500 or code == 408:
                    self.stats[f"http_{code}"] += 1
                    last = f"{url}: HTTP {code}: {e}"
                    retry_after = _retry_after(e.response)
                    if code >= 500:
                        endpoint += 1
                else:
                    raise FatalRequestError(f"HTTP {code} from {url}: {e}") from e
            else:
                choice = resp.choices[0]
                usage = resp.usage
                self.stats["prompt_tokens"] += usage.prompt_tokens if usage else 0
                self.stats["completion_tokens"] += usage.completion_tokens if usage else 0
                return Completion(
                    choice.message.content or "",
                    choice.finish_reason,
                    usage.prompt_tokens if usage else 0,
                    usage.completion_tokens if usage else 0,
                    i,
                )
            if attempt < self.engine.max_retries:
                self.stats["retries"] += 1
                await asyncio.sleep(self._backoff(attempt, retry_after))
        raise RequestFailed(f"gave up after {self.engine.max_retries + 1} attempts; last: {last}")


def _retry_after(response: Any) -> float | None:
    try:
        value = response.headers.get("retry-after")
        return max(0.0, float(value)) if value is not None else None
    except (AttributeError, TypeError, ValueError):
        return None
