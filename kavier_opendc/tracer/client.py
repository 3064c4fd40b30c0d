"""Asynchronous client for OpenAI-compatible streaming completions (aiohttp).

One :class:`RequestRecord` per request holds what the client saw, on one clock
(``time.perf_counter`` relative to the start of the run): when the request was
sent, when each streamed chunk with text arrived, the server's ``usage`` counts,
and the error if it failed.  A request that fails is recorded, never retried
unless ``retries`` says so (a retried request is a different measurement), and
only when it failed before any byte of its answer arrived, after a backoff
(the server's ``Retry-After`` when it sends one).

Faults of a server during a run are bounded: four timeouts (connect, first
byte, between chunks, total), a cap on a line of the stream
(:data:`MAX_LINE_BYTES`), on the text chunks of one answer (``max_tokens`` +
:data:`EXTRA_CHUNKS`: a server that ignores ``max_tokens``), on the lines that
are not data (:data:`MAX_IGNORED_LINES`) and on an error body that is quoted
(:data:`MAX_ERROR_BODY_BYTES`).  Every message that quotes the server has the
API key replaced by ``[REDACTED]`` (a server may echo it back).

Problems with the endpoint itself (nothing listening, a wrong path, a model the
server does not have, no streaming, a stream that is not JSON) are found by
:meth:`Endpoint.check` before anything is measured and raised as one
:class:`~kavier_opendc.base.errors.KavierInputError`.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import urlsplit

import aiohttp

from kavier_opendc.base.errors import KavierInputError

API_KEY_ENV = ("KAVIER_API_KEY", "OPENAI_API_KEY")
REDACTED = "[REDACTED]"
MAX_LINE_BYTES = 1 << 20  # one line of the event stream (a token's chunk is ~200 bytes)
EXTRA_CHUNKS = 16  # text chunks tolerated beyond max_tokens before a stream is cut off
MAX_IGNORED_LINES = 100_000  # comments, other fields and junk lines in one answer
MAX_ERROR_BODY_BYTES = 64 << 10  # the part of an error reply that is read (and quoted, shortened)
MAX_JSON_BYTES = 16 << 20  # a /v1/models or /tokenize reply
MAX_RETRY_WAIT_S = 60.0  # the longest backoff, whatever Retry-After says
NOT_RETRIED = frozenset(range(400, 500)) - {408, 409, 425, 429}  # the request itself was refused


class RequestFailed(Exception):
    """A request that did not complete; ``kind`` is a short category for the summary."""

    def __init__(
        self,
        kind: str,
        message: str,
        http_status: int | None = None,
        fatal_hint: str | None = None,
        retry_after_s: float | None = None,
    ):
        super().__init__(message)
        self.kind = kind
        self.http_status = http_status
        self.fatal_hint = fatal_hint
        self.retry_after_s = retry_after_s


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header in seconds (a number of seconds or an HTTP date), None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        secs = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        secs = (when - datetime.now(timezone.utc)).total_seconds()
    if secs != secs:
        return None
    return max(0.0, secs)


async def read_limited(resp: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """Up to ``limit`` bytes of a reply's body and whether there was more (the rest is not read)."""
    buf = bytearray()
    while len(buf) <= limit:
        data = await resp.content.readany()
        if not data:
            return bytes(buf), False
        buf += data
    return bytes(buf[:limit]), True


@dataclass
class RequestRecord:
    request_id: int
    arrival_s: float  # scheduled arrival, seconds after the start of the run
    target_input_tokens: int
    target_output_tokens: int
    expected_input_tokens: int | None = None  # what the server's tokenizer counted for the prompt
    start_s: float = math.nan  # handed to the HTTP client (before a connection was ready)
    send_s: float = math.nan  # the request's headers were written to the connection
    first_token_s: float = math.nan
    last_token_s: float = math.nan
    token_times_s: list = field(default_factory=list)
    prompt_tokens: int | None = None  # usage.prompt_tokens
    completion_tokens: int | None = None  # usage.completion_tokens
    cached_tokens: int | None = None  # usage.prompt_tokens_details.cached_tokens, when reported
    num_chunks: int = 0  # streamed chunks that carried text
    ignored_lines: int = 0  # SSE lines that were not data (comments, other fields, junk)
    finish_reason: str | None = None
    status: str = "not_sent"  # not_sent | finished | error | cancelled
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
        raise KavierInputError(
            f"{endpoint!r} is not an HTTP URL",
            location="ENDPOINT",
            expected="the server's base URL, e.g. http://localhost:8000",
        )
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

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 600.0,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 60.0,
        first_byte_timeout_s: float | None = None,
        concurrency: int = 1,
        ignore_eos: bool = True,
        retries: int = 0,
        retry_backoff_s: float = 1.0,
        extra_body: dict | None = None,
        max_line_bytes: int = MAX_LINE_BYTES,
    ):
        self.base = normalise_endpoint(base_url)
        self.public = public_url(self.base)
        self.model = model
        self._api_key = api_key
        if first_byte_timeout_s is None:
            first_byte_timeout_s = read_timeout_s
        # connect: DNS, TCP (and TLS); the rest is timed per phase by _stream_once itself
        self.timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout_s, sock_read=None)
        self.timeout_s, self.connect_timeout_s, self.read_timeout_s = timeout_s, connect_timeout_s, read_timeout_s
        self.first_byte_timeout_s = first_byte_timeout_s
        self.concurrency = concurrency
        self.ignore_eos = ignore_eos
        self.retries = retries
        self.retry_backoff_s = retry_backoff_s
        self.max_line_bytes = max_line_bytes
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
        self.session = aiohttp.ClientSession(
            headers=headers, connector=connector, timeout=self.timeout, trace_configs=[tracing]
        )
        return self

    async def __aexit__(self, *exc) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    def url(self, path: str) -> str:
        return self.base + path

    # ------------------------------------------------------------------ credentials out of every message
    def redact(self, text):
        """``text`` with the API key (and user:password of the URL) replaced by [REDACTED]."""
        if text is None:
            return None
        text = str(text)
        for secret in (self._api_key, urlsplit(self.base).password):
            if secret:
                text = text.replace(secret, REDACTED)
        return text

    def quote(self, text, limit: int = 160) -> str:
        """Server (or library) text for a message: the key redacted first, then shortened."""
        return _short(self.redact(text) or "", limit)

    # ------------------------------------------------------------------ small JSON calls
    async def _get_json(self, path: str, body: dict | None = None) -> tuple[int, object]:
        """(HTTP status, parsed JSON or None) of a GET (no body) or POST; connection errors propagate."""
        assert self.session is not None
        method = self.session.post if body is not None else self.session.get
        async with method(
            self.url(path),
            json=body,
            timeout=aiohttp.ClientTimeout(
                total=self.json_timeout_s, connect=self.connect_timeout_s, sock_read=self.first_byte_timeout_s
            ),
        ) as resp:
            raw, more = await read_limited(resp, MAX_JSON_BYTES)
            if more:
                return resp.status, None
            try:
                return resp.status, json.loads(raw.decode("utf-8", "replace"))
            except (json.JSONDecodeError, ValueError):
                return resp.status, None

    @property
    def json_timeout_s(self) -> float:
        """The longest a small JSON call (/v1/models, /tokenize) may take."""
        return min(self.timeout_s, 60.0)

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
        except aiohttp.ClientConnectorDNSError as exc:
            raise KavierInputError(
                f"cannot resolve the host name of {where}: {self.quote(getattr(exc, 'os_error', exc) or exc)}",
                location="ENDPOINT",
                expected="a host name that resolves (DNS) or an IP address",
            ) from None
        except aiohttp.ConnectionTimeoutError:
            raise KavierInputError(
                f"cannot connect to {where}: no connection within --connect-timeout {self.connect_timeout_s:g} s",
                location="ENDPOINT",
                expected="a reachable server at this address",
            ) from None
        except (aiohttp.ClientConnectorError, aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
            raise KavierInputError(
                f"cannot connect to {where}: {self.quote(getattr(exc, 'os_error', exc) or exc)}",
                location="ENDPOINT",
                expected="a running OpenAI-compatible server at this address",
            ) from None
        except asyncio.TimeoutError:
            raise KavierInputError(
                f"{where} accepted the connection but did not answer GET /v1/models within "
                f"{min(self.json_timeout_s, self.first_byte_timeout_s):g} s",
                location="ENDPOINT",
                expected="a responsive OpenAI-compatible server (--first-byte-timeout)",
            ) from None
        except aiohttp.ClientError as exc:
            raise KavierInputError(
                f"cannot talk to {where}: {self.quote(exc)}",
                location="ENDPOINT",
                expected="an OpenAI-compatible HTTP server",
            ) from None
        if status in (401, 403):
            raise KavierInputError(
                f"{where} refused the credentials (HTTP {status})",
                location="ENDPOINT",
                expected=f"an API key in ${API_KEY_ENV[0]} or ${API_KEY_ENV[1]}",
            )
        if status == 200 and isinstance(obj, dict) and isinstance(obj.get("data"), list):
            self.served_models = [str(m.get("id")) for m in obj["data"] if isinstance(m, dict)]
            if self.served_models and self.model not in self.served_models:
                raise KavierInputError(
                    f"model {self.model!r} is not served by {where}",
                    location="--model",
                    expected="one of: " + ", ".join(self.served_models),
                )
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
                "rate_limited": "a server that accepts requests (it answered HTTP 429: --retries, --retry-backoff)",
                "timeout": "a server that answers within the timeouts (--connect-timeout, --first-byte-timeout, "
                "--read-timeout, --timeout)",
                "connection": "a server that keeps the connection open until [DONE]",
                "incomplete_stream": "a stream that ends with 'data: [DONE]'",
                "no_tokens": "at least one streamed token",
                "flood": "a server that honours max_tokens",
                "line_too_long": f"stream lines shorter than {self.max_line_bytes} bytes",
            }.get(probe.error_kind or "", "a working /v1/completions endpoint")
            if probe.error_kind == "http" and (probe.http_status or 0) >= 500:
                hint = "a server that answers a short completion (it failed with a server error)"
            elif probe.error_kind == "http" and probe.http_status in (401, 403):
                hint = f"an API key it accepts, in ${API_KEY_ENV[0]} or ${API_KEY_ENV[1]}"
            if (
                probe.error_kind == "http"
                and probe.http_status in (400, 404)
                and probe.error
                and "model" in probe.error.lower()
            ):
                raise KavierInputError(
                    f"{where}/v1/completions rejected model {self.model!r}: {self.redact(probe.error)}",
                    location="--model",
                    expected="a model name the server serves",
                )
            raise KavierInputError(
                f"test request to {where}/v1/completions failed: {self.redact(probe.error)}",
                location="ENDPOINT",
                expected=hint,
            )
        self.usage_reported = probe.prompt_tokens is not None
        return {
            "served_models": self.served_models,
            "tokenize": self.has_tokenize,
            "usage_reported": self.usage_reported,
        }

    # ------------------------------------------------------------------ one streamed request
    def body(self, prompt: str, max_tokens: int) -> dict:
        b = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": int(max_tokens),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
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
            rec.ignored_lines = 0
            retry_after = None
            retryable = True
            try:
                await self._stream_once(rec, body, clock0, int(max_tokens))
                rec.status, rec.error_kind, rec.error = "finished", None, None
                return rec
            except RequestFailed as exc:
                rec.status, rec.error_kind, rec.error = "error", exc.kind, str(exc)
                if exc.http_status is not None:
                    rec.http_status = exc.http_status
                    retryable = exc.http_status not in NOT_RETRIED
                retry_after = exc.retry_after_s
            except aiohttp.ConnectionTimeoutError:
                rec.status, rec.error_kind = "error", "timeout"
                rec.error = f"no connection within --connect-timeout {self.connect_timeout_s:g} s"
            except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
                rec.status, rec.error_kind = "error", "connection"
                rec.error = f"the server closed the connection mid-stream ({self.quote(exc)})"
            except aiohttp.ClientConnectorDNSError as exc:
                rec.status, rec.error_kind = "error", "connection"
                rec.error = f"cannot resolve the host name: {self.quote(getattr(exc, 'os_error', exc) or exc)}"
            except aiohttp.ClientConnectorError as exc:
                rec.status, rec.error_kind = "error", "connection"
                rec.error = f"cannot connect: {self.quote(getattr(exc, 'os_error', exc) or exc)}"
            except aiohttp.ClientError as exc:
                rec.status, rec.error_kind = "error", "connection"
                rec.error = self.quote(f"{type(exc).__name__}: {exc}")
            except asyncio.TimeoutError:  # a timer of aiohttp's own (ours are RequestFailed("timeout"))
                rec.status, rec.error_kind = "error", "timeout"
                rec.error = f"no answer within the timeouts (total {self.timeout_s:g} s)"
            except (OSError, ValueError, UnicodeError) as exc:  # the socket or the bytes: still a failed request
                rec.status, rec.error_kind = "error", "connection"
                rec.error = self.quote(f"{type(exc).__name__}: {exc}")
            rec.error = self.redact(rec.error)
            if rec.token_times_s or not retryable:  # part of the answer arrived: a retry measures something else
                break
            if attempt < self.retries:
                wait = retry_after if retry_after is not None else self.retry_backoff_s * 2**attempt
                await asyncio.sleep(min(wait, MAX_RETRY_WAIT_S))
        if rec.attempts > 1:
            rec.error = f"{rec.error} (gave up after {rec.attempts} attempts)"
        return rec

    async def _stream_once(self, rec: RequestRecord, body: dict, clock0: float, max_tokens: int) -> None:
        """One attempt. Its timers: until the first byte of the reply (``first_byte_timeout_s``, the connection
        included), then between two reads of the stream (``read_timeout_s``), all within ``timeout_s``."""
        assert self.session is not None
        clock = time.perf_counter
        loop = asyncio.get_running_loop()
        rec.start_s = clock() - clock0
        rec.send_s = math.nan
        deadline = loop.time() + self.timeout_s
        phase = ["first byte of the reply", self.first_byte_timeout_s, "--first-byte-timeout"]

        def arm(timer, what: str, seconds: float, flag: str) -> None:
            phase[:] = [what, seconds, flag]
            timer.reschedule(min(loop.time() + seconds, deadline))

        timer = asyncio.timeout_at(min(loop.time() + self.first_byte_timeout_s, deadline))
        try:
            async with timer:
                resp = await self.session.post(
                    self.url("/v1/completions"), json=body, trace_request_ctx={"record": rec, "clock0": clock0}
                )
                try:
                    await self._read_reply(
                        rec,
                        resp,
                        clock,
                        clock0,
                        max_tokens,
                        lambda what: arm(timer, what, self.read_timeout_s, "--read-timeout"),
                    )
                except BaseException:
                    resp.close()  # a connection with an unread or broken stream is not reused
                    raise
                resp.release()
        except TimeoutError:
            if not timer.expired():  # aiohttp's own (the connect timeout): the caller's
                raise
            if loop.time() >= deadline - 1e-3:
                raise RequestFailed(
                    "timeout",
                    f"the request took longer than --timeout {self.timeout_s:g} s (waiting for the {phase[0]})",
                ) from None
            raise RequestFailed("timeout", f"no {phase[0]} within {phase[2]} {phase[1]:g} s") from None

    async def _read_reply(
        self, rec: RequestRecord, resp: aiohttp.ClientResponse, clock, clock0: float, max_tokens: int, arm
    ) -> None:
        if math.isnan(rec.send_s):
            rec.send_s = rec.start_s
        rec.http_status = resp.status
        arm("rest of the reply")
        if resp.status != 200:
            raw, more = await read_limited(resp, MAX_ERROR_BODY_BYTES)
            text = raw.decode("utf-8", "replace")
            kind = "rate_limited" if resp.status == 429 else "http"
            wait = retry_after_seconds(resp.headers.get("Retry-After"))
            raise RequestFailed(
                kind,
                f"HTTP {resp.status} {self.quote(resp.reason or '', 60)}: "
                f"{_server_message(self.redact(text))}" + (f" (Retry-After {wait:g} s)" if wait is not None else ""),
                resp.status,
                retry_after_s=wait,
            )
        ctype = resp.headers.get("Content-Type", "")
        if "text/event-stream" not in ctype:
            raw, _ = await read_limited(resp, MAX_ERROR_BODY_BYTES)
            raise RequestFailed(
                "not_streaming",
                f"the server answered stream: true with Content-Type "
                f"{self.quote(ctype, 60) or '(none)'} instead of text/event-stream: "
                f"{self.quote(raw.decode('utf-8', 'replace'), 100)}",
            )
        arm("first token")
        limit = self.max_line_bytes
        max_chunks = max_tokens + EXTRA_CHUNKS
        times = rec.token_times_s
        buf = bytearray()
        done = False
        while not done:
            data = await resp.content.readany()
            now = clock() - clock0
            if not data:
                break
            buf += data
            start = 0
            while True:
                nl = buf.find(b"\n", start)
                if nl < 0:
                    break
                if nl - start > limit:
                    raise RequestFailed(
                        "line_too_long", f"a line of the stream is longer than {limit} bytes: stopped reading"
                    )
                line = bytes(buf[start:nl])
                start = nl + 1
                if self._line(rec, line, now, max_chunks, max_tokens):
                    done = True
                    break
            del buf[:start]
            if len(buf) > limit:
                raise RequestFailed(
                    "line_too_long",
                    f"a line of the stream is longer than {limit} bytes "
                    f"(no end of line after {len(buf)} bytes): stopped reading",
                )
            arm("next chunk of the stream" if times else "first token")
        if not done:
            if buf.strip() and self._line(rec, bytes(buf), clock() - clock0, max_chunks, max_tokens):
                done = True
        if not done:
            raise RequestFailed(
                "incomplete_stream",
                f"the stream ended without 'data: [DONE]' after {rec.num_chunks} chunks of text "
                f"(finish_reason {rec.finish_reason or 'none'}): the answer may be incomplete",
            )
        if not times:
            raise RequestFailed("no_tokens", "the stream ended without any generated text")
        rec.first_token_s = times[0]
        rec.last_token_s = times[-1]

    def _line(self, rec: RequestRecord, raw: bytes, now: float, max_chunks: int, max_tokens: int) -> bool:
        """Take one line of the stream into ``rec``; True at ``data: [DONE]``."""
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            return False
        if not line.startswith("data:"):
            rec.ignored_lines += 1  # SSE comments, other fields, junk: not data
            self._check_ignored(rec)
            return False
        data = line[5:]
        if data.startswith(" "):
            data = data[1:]
        if not data.strip():
            rec.ignored_lines += 1
            self._check_ignored(rec)
            return False
        if data.strip() == "[DONE]":
            return True
        try:
            obj = json.loads(data)
        except (json.JSONDecodeError, ValueError):
            raise RequestFailed("invalid_json", f"invalid JSON in the stream: {self.quote(data, 80)!r}") from None
        if not isinstance(obj, dict):
            raise RequestFailed("invalid_json", f"a stream chunk is not a JSON object: {self.quote(data, 80)!r}")
        if "error" in obj or obj.get("object") == "error":
            raise RequestFailed(
                "server_error", f"the server reported an error mid-stream: {_server_message(self.redact(data))}"
            )
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
                rec.finish_reason = _short(self.redact(ch["finish_reason"]), 40)
        if text_seen:
            rec.token_times_s.append(now)
            rec.num_chunks += 1
            if rec.num_chunks > max_chunks:
                raise RequestFailed(
                    "flood",
                    f"the server streamed more than {max_chunks} chunks of text for "
                    f"max_tokens {max_tokens} (it does not honour max_tokens): "
                    f"stopped reading",
                )
        usage = obj.get("usage")
        if isinstance(usage, dict):
            if isinstance(usage.get("prompt_tokens"), int):
                rec.prompt_tokens = usage["prompt_tokens"]
            if isinstance(usage.get("completion_tokens"), int):
                rec.completion_tokens = usage["completion_tokens"]
            details = usage.get("prompt_tokens_details")
            if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
                rec.cached_tokens = details["cached_tokens"]
        return False

    @staticmethod
    def _check_ignored(rec: RequestRecord) -> None:
        if rec.ignored_lines > MAX_IGNORED_LINES:
            raise RequestFailed(
                "flood",
                f"more than {MAX_IGNORED_LINES} lines of the stream were not data (comments or junk): stopped reading",
            )
