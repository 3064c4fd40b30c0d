"""Asynchronous client for OpenAI-compatible streaming completions (aiohttp).

One :class:`RequestRecord` per request holds what the client saw, on one clock
(``time.perf_counter`` relative to the start of the run): when the request was
sent, when each streamed chunk with text arrived, the server's ``usage`` counts,
and the error if it failed.  A request that fails is recorded, never retried
unless ``retries`` says so (a retried request is a different measurement), and
only when it failed before any byte of its answer arrived.

Problems with the endpoint itself (nothing listening, a wrong path, a model the
server does not have, no streaming, a stream that is not JSON) are found by
:meth:`Endpoint.check` before anything is measured and raised as one
:class:`~kavier_opendc.base.errors.KavierInputError`.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp

from kavier_opendc.base.errors import KavierInputError

API_KEY_ENV = ("KAVIER_API_KEY", "OPENAI_API_KEY")


class RequestFailed(Exception):
    """A request that did not complete; ``kind`` is a short category for the summary."""

    def __init__(self, kind: str, message: str, http_status: int | None = None, fatal_hint: str | None = None):
        super().__init__(message)
        self.kind = kind
        self.http_status = http_status
        self.fatal_hint = fatal_hint


@dataclass
class RequestRecord:
    request_id: int
    arrival_s: float                     # scheduled arrival, seconds after the start of the run
    target_input_tokens: int
    target_output_tokens: int
    expected_input_tokens: int | None = None  # what the server's tokenizer counted for the prompt
    start_s: float = math.nan            # handed to the HTTP client (before a connection was ready)
    send_s: float = math.nan             # the request's headers were written to the connection
    first_token_s: float = math.nan
    last_token_s: float = math.nan
    token_times_s: list = field(default_factory=list)
    prompt_tokens: int | None = None     # usage.prompt_tokens
    completion_tokens: int | None = None  # usage.completion_tokens
    cached_tokens: int | None = None     # usage.prompt_tokens_details.cached_tokens, when reported
    num_chunks: int = 0                  # streamed chunks that carried text
    ignored_lines: int = 0               # SSE lines that were not data (comments, other fields, junk)
    finish_reason: str | None = None
    status: str = "not_sent"             # not_sent | finished | error | cancelled
    error_kind: str | None = None
    error: str | None = None
    http_status: int | None = None
    attempts: int = 0


async def _headers_sent(session, ctx, params) -> None:
    """aiohttp trace hook: the moment a request went out on its connection is its send time."""
    now = time.perf_counter()
    holder = getattr(ctx, "trace_request_ctx", None)
    if isinstance(holder, dict) and "record" in holder:
        holder["record"].send_s = now - holder["clock0"]


def normalise_endpoint(endpoint: str) -> str:
    """The server's base URL: scheme and host, without a trailing /v1 or /v1/completions."""
    text = endpoint.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise KavierInputError(f"{endpoint!r} is not an HTTP URL", location="ENDPOINT",
                               expected="the server's base URL, e.g. http://localhost:8000")
    path = parts.path.rstrip("/")
    for tail in ("/completions", "/chat/completions"):
        if path.endswith(tail):
            path = path[: -len(tail)]
    if path.endswith("/v1"):
        path = path[:-3]
    return f"{parts.scheme}://{parts.netloc}{path}"


def public_url(url: str) -> str:
    """The URL without user:password (a credential must not reach messages or outputs)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


def api_key_from_env(environ) -> str | None:
    for name in API_KEY_ENV:
        if environ.get(name):
            return environ[name]
    return None


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _server_message(text: str) -> str:
    """The message of an OpenAI-style error body, or the body itself, shortened."""
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return _short(text)
    if isinstance(obj, dict):
        err = obj.get("error", obj)
        if isinstance(err, dict) and err.get("message"):
            return _short(err["message"])
        if isinstance(err, str):
            return _short(err)
        if obj.get("message"):
            return _short(obj["message"])
        if obj.get("detail"):
            return _short(obj["detail"])
    return _short(text)


class Endpoint:
    """An OpenAI-compatible server: base URL, model, credentials and timeouts."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, *, timeout_s: float = 600.0,
                 connect_timeout_s: float = 10.0, read_timeout_s: float = 60.0, concurrency: int = 1,
                 ignore_eos: bool = True, retries: int = 0, extra_body: dict | None = None):
        self.base = normalise_endpoint(base_url)
        self.public = public_url(self.base)
        self.model = model
        self._api_key = api_key
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, connect=connect_timeout_s,
                                             sock_read=read_timeout_s)
        self.timeout_s, self.connect_timeout_s, self.read_timeout_s = timeout_s, connect_timeout_s, read_timeout_s
        self.concurrency = concurrency
        self.ignore_eos = ignore_eos
        self.retries = retries
        self.extra_body = dict(extra_body or {})
        self.session: aiohttp.ClientSession | None = None
        self.has_tokenize = False
        self.served_models: list[str] | None = None
        self.usage_reported = True

    # ------------------------------------------------------------------ session
    async def __aenter__(self) -> "Endpoint":
        headers = {"Accept": "text/event-stream, application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        connector = aiohttp.TCPConnector(limit=max(1, self.concurrency) + 2, force_close=False)
        tracing = aiohttp.TraceConfig()
        tracing.on_request_headers_sent.append(_headers_sent)
        self.session = aiohttp.ClientSession(headers=headers, connector=connector, timeout=self.timeout,
                                             trace_configs=[tracing])
        return self

    async def __aexit__(self, *exc) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    def url(self, path: str) -> str:
        return self.base + path

    # ------------------------------------------------------------------ small JSON calls
    async def _get_json(self, path: str, body: dict | None = None) -> tuple[int, object]:
        """(HTTP status, parsed JSON or None) of a GET (no body) or POST; connection errors propagate."""
        assert self.session is not None
        method = self.session.post if body is not None else self.session.get
        async with method(self.url(path), json=body,
                          timeout=aiohttp.ClientTimeout(total=min(self.timeout_s, 60.0),
                                                        connect=self.connect_timeout_s)) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except (json.JSONDecodeError, ValueError):
                return resp.status, None

    async def count_tokens(self, text: str) -> int:
        """The server tokenizer's count for ``text`` (vLLM's ``/tokenize``)."""
        status, obj = await self._get_json("/tokenize", {"model": self.model, "prompt": text})
        if status != 200 or not isinstance(obj, dict):
            raise RequestFailed("tokenize", f"/tokenize answered HTTP {status}", status)
        if isinstance(obj.get("count"), int):
            return obj["count"]
        if isinstance(obj.get("tokens"), list):
            return len(obj["tokens"])
        raise RequestFailed("tokenize", "/tokenize answered without a token count", status)

    # ------------------------------------------------------------------ the preflight check
    async def check(self) -> dict:
        """Fail with one clear error if the endpoint cannot be measured; return what was learnt."""
        where = self.public
        try:
            status, obj = await self._get_json("/v1/models")
        except (aiohttp.ClientConnectorError, aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
            raise KavierInputError(f"cannot connect to {where}: {_short(getattr(exc, 'os_error', exc) or exc)}",
                                   location="ENDPOINT",
                                   expected="a running OpenAI-compatible server at this address") from None
        except asyncio.TimeoutError:
            raise KavierInputError(f"{where} did not answer GET /v1/models within "
                                   f"{min(self.timeout_s, 60.0):g} s", location="ENDPOINT",
                                   expected="a responsive OpenAI-compatible server") from None
        except aiohttp.ClientError as exc:
            raise KavierInputError(f"cannot talk to {where}: {_short(exc)}", location="ENDPOINT",
                                   expected="an OpenAI-compatible HTTP server") from None
        if status in (401, 403):
            raise KavierInputError(f"{where} refused the credentials (HTTP {status})", location="ENDPOINT",
                                   expected=f"an API key in ${API_KEY_ENV[0]} or ${API_KEY_ENV[1]}")
        if status == 200 and isinstance(obj, dict) and isinstance(obj.get("data"), list):
            self.served_models = [str(m.get("id")) for m in obj["data"] if isinstance(m, dict)]
            if self.served_models and self.model not in self.served_models:
                raise KavierInputError(f"model {self.model!r} is not served by {where}",
                                       location="--model",
                                       expected="one of: " + ", ".join(self.served_models))
        try:
            self.has_tokenize = isinstance(await self.count_tokens("Hello world"), int)
        except (RequestFailed, aiohttp.ClientError, asyncio.TimeoutError):
            self.has_tokenize = False
        probe = RequestRecord(-1, 0.0, 0, 2)
        await self.stream(probe, "Hello world, this is a short test.", 2, clock0=time.perf_counter())
        if probe.status != "finished":
            hint = {
                "http": "an OpenAI-compatible server: give its base URL, e.g. http://host:8000",
                "not_streaming": "a streaming reply (Content-Type text/event-stream) to stream: true",
                "invalid_json": "SSE 'data:' lines holding JSON chunks",
                "server_error": "a stream of completion chunks",
                "timeout": "a server that answers within the timeouts (--timeout, --read-timeout)",
                "connection": "a server that keeps the connection open until [DONE]",
                "no_tokens": "at least one streamed token",
            }.get(probe.error_kind or "", "a working /v1/completions endpoint")
            if probe.error_kind == "http" and probe.http_status in (400, 404) and probe.error \
                    and "model" in probe.error.lower():
                raise KavierInputError(f"{where}/v1/completions rejected model {self.model!r}: {probe.error}",
                                       location="--model", expected="a model name the server serves")
            raise KavierInputError(f"test request to {where}/v1/completions failed: {probe.error}",
                                   location="ENDPOINT", expected=hint)
        self.usage_reported = probe.prompt_tokens is not None
        return {"served_models": self.served_models, "tokenize": self.has_tokenize,
                "usage_reported": self.usage_reported}

    # ------------------------------------------------------------------ one streamed request
    def body(self, prompt: str, max_tokens: int) -> dict:
        b = {"model": self.model, "prompt": prompt, "max_tokens": int(max_tokens), "stream": True,
             "stream_options": {"include_usage": True}}
        if self.ignore_eos:
            b["ignore_eos"] = True
        b.update(self.extra_body)
        return b

    async def stream(self, rec: RequestRecord, prompt: str, max_tokens: int, clock0: float) -> RequestRecord:
        """Send one request and fill ``rec``; never raises for a failed request (cancellation aside)."""
        body = self.body(prompt, max_tokens)
        for attempt in range(self.retries + 1):
            rec.attempts = attempt + 1
            rec.token_times_s = []
            rec.num_chunks = 0
            try:
                await self._stream_once(rec, body, clock0)
                rec.status, rec.error_kind, rec.error = "finished", None, None
                return rec
            except RequestFailed as exc:
                rec.status, rec.error_kind, rec.error = "error", exc.kind, str(exc)
                if exc.http_status is not None:
                    rec.http_status = exc.http_status
            except asyncio.TimeoutError:
                phase = "the first token" if not rec.token_times_s else "the next token"
                rec.status, rec.error_kind = "error", "timeout"
                rec.error = (f"no answer within the timeouts while waiting for {phase} "
                             f"(read {self.read_timeout_s:g} s, total {self.timeout_s:g} s)")
            except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
                rec.status, rec.error_kind = "error", "connection"
                rec.error = f"the server closed the connection mid-stream ({_short(exc)})"
            except aiohttp.ClientConnectorError as exc:
                rec.status, rec.error_kind = "error", "connection"
                rec.error = f"cannot connect: {_short(getattr(exc, 'os_error', exc) or exc)}"
            except aiohttp.ClientError as exc:
                rec.status, rec.error_kind = "error", "connection"
                rec.error = _short(f"{type(exc).__name__}: {exc}")
            if rec.token_times_s:      # part of the answer arrived: retrying would measure something else
                break
        return rec

    async def _stream_once(self, rec: RequestRecord, body: dict, clock0: float) -> None:
        assert self.session is not None
        clock = time.perf_counter
        rec.start_s = clock() - clock0
        rec.send_s = math.nan
        async with self.session.post(self.url("/v1/completions"), json=body,
                                     trace_request_ctx={"record": rec, "clock0": clock0}) as resp:
            if math.isnan(rec.send_s):
                rec.send_s = rec.start_s
            rec.http_status = resp.status
            if resp.status != 200:
                text = await resp.text()
                raise RequestFailed("http", f"HTTP {resp.status} {resp.reason}: {_server_message(text)}",
                                    resp.status)
            ctype = resp.headers.get("Content-Type", "")
            if "text/event-stream" not in ctype:
                text = await resp.text()
                raise RequestFailed("not_streaming",
                                    f"the server answered stream: true with Content-Type {ctype or '(none)'} "
                                    f"instead of text/event-stream: {_short(text, 100)}")
            done = False
            times = rec.token_times_s
            async for raw in resp.content:
                now = clock() - clock0
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if not line:
                    continue
                if not line.startswith("data:"):
                    rec.ignored_lines += 1      # SSE comments, other fields, junk: not data
                    continue
                data = line[5:]
                if data.startswith(" "):
                    data = data[1:]
                if not data.strip():
                    rec.ignored_lines += 1
                    continue
                if data.strip() == "[DONE]":
                    done = True
                    break
                try:
                    obj = json.loads(data)
                except (json.JSONDecodeError, ValueError):
                    raise RequestFailed("invalid_json", f"invalid JSON in the stream: {_short(data, 80)!r}") \
                        from None
                if not isinstance(obj, dict):
                    raise RequestFailed("invalid_json", f"a stream chunk is not a JSON object: {_short(data, 80)!r}")
                if "error" in obj or obj.get("object") == "error":
                    raise RequestFailed("server_error", f"the server reported an error mid-stream: "
                                                        f"{_server_message(data)}")
                text_seen = False
                for ch in obj.get("choices") or []:
                    if not isinstance(ch, dict):
                        continue
                    piece = ch.get("text")
                    if piece is None and isinstance(ch.get("delta"), dict):
                        piece = ch["delta"].get("content")
                    if piece:
                        text_seen = True
                    if ch.get("finish_reason"):
                        rec.finish_reason = str(ch["finish_reason"])
                if text_seen:
                    times.append(now)
                    rec.num_chunks += 1
                usage = obj.get("usage")
                if isinstance(usage, dict):
                    if isinstance(usage.get("prompt_tokens"), int):
                        rec.prompt_tokens = usage["prompt_tokens"]
                    if isinstance(usage.get("completion_tokens"), int):
                        rec.completion_tokens = usage["completion_tokens"]
                    details = usage.get("prompt_tokens_details")
                    if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
                        rec.cached_tokens = details["cached_tokens"]
            if not done:
                raise RequestFailed("connection", "the stream ended before 'data: [DONE]' "
                                                  "(the server closed the connection mid-stream)")
            if not times:
                raise RequestFailed("no_tokens", "the stream ended without any generated text")
            rec.first_token_s = times[0]
            rec.last_token_s = times[-1]
