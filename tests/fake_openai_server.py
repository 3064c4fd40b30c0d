"""A small OpenAI-compatible streaming server for the tracer's tests (no GPU, no model).

Run as a script: ``python tests/fake_openai_server.py`` prints ``PORT <n>`` on stdout
once it listens on 127.0.0.1 (a free port chosen by the OS), then serves until killed.

Endpoints: ``GET /v1/models``, ``POST /tokenize`` (vLLM's), ``POST /v1/completions``
(streaming SSE with ``data:`` lines and ``[DONE]``, or a plain JSON reply), and two test
hooks: ``POST /_config`` (merge a JSON object into the behaviour below) and
``GET /_stats`` (requests seen, most streams open at once, headers of the last request).

Tokenizer: one BOS token plus one token per whitespace-separated word, except words
longer than 8 characters, which count as two.

Timing: a request with P prompt tokens is answered with its first token
``ttft_base_s + ttft_per_token_s * P`` after the server received it and its k-th token
(k = 0, 1, ...) at ``ttft + k * (tpot_base_s + tpot_per_token_s * P)``, scheduled against
the receipt time (no drift), so the programmed latencies are known exactly.

Engine mode (``engine``: ``{"model", "gpu", "fixed_s", "per_seq_s", "client_s"}``): the requests
share one continuously batched engine instead. A request enters it ``client_s`` after it was
received (request handling); every step runs every request in it, a whole prompt for one that
just entered and one token for the others, and lasts what Kavier's cost model gives for that
batch on ``gpu`` with ``fixed_s`` + ``per_seq_s`` x sequences of CPU time; a step's tokens are
sent when it ends. The programmed engine is the one ``kavier calibrate`` is asked to recover.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import selectors
import sys
import time

from aiohttp import web

DEFAULTS = {
    "models": ["fake-model"],
    "ttft_base_s": 0.010,
    "ttft_per_token_s": 0.0,
    "tpot_base_s": 0.010,
    "tpot_per_token_s": 0.0,
    "natural_length": 5,  # tokens produced before EOS when ignore_eos is not set
    "tokenize": True,  # serve /tokenize
    "tokenize_limit": None,  # answer only this many /tokenize calls, HTTP 500 after them (None: all)
    "list_models": True,  # serve /v1/models
    "mode": "normal",  # normal | error_mid_stream | close_mid_stream | hang | invalid_json |
    # malformed_lines | non_streaming | no_usage | http_500 |
    # faults (tests/test_tracer_faults.py): no_answer (never sends the headers) |
    # http_429 | no_done (no [DONE]) | garbage (junk lines, then invalid JSON) |
    # flood (tokens without end, max_tokens ignored) | huge_line (a data line
    # of huge_line_bytes) | echo_key (HTTP echo_status quoting the Authorization
    # header in body, headers and reason) | echo_key_stream (the same in an
    # error chunk mid-stream) | echo_key_json (... in a line of invalid JSON)
    "retry_after": None,  # http_429: the Retry-After header's value, or None for none
    "echo_status": 500,  # echo_key: the HTTP status
    "huge_line_bytes": 64 << 20,  # huge_line: bytes of the line before its end of line
    "fail_after_tokens": 2,  # error_mid_stream / close_mid_stream / hang / invalid_json
    "fail_from": 0,  # the failure mode applies from this completion request on (0: the first)
    "fail_every": 1,  # ... and then to every n-th one (by arrival order)
    "max_model_len": 4096,
    "engine": None,  # an engine to emulate (see the module doc), or None
}


class Engine:
    """A continuously batched engine whose step times come from Kavier's cost model (engine mode)."""

    def __init__(self, spec: dict):
        import dataclasses

        from kavier_opendc.engine.cost_model import CostModel
        from kavier_opendc.specs import default_catalog
        from kavier_opendc.specs.frameworks import StepOverhead, framework

        cat = default_catalog()
        gpu = cat.gpu(spec["gpu"])
        fw = dataclasses.replace(
            framework("vllm-v1"),
            step_overhead={(gpu.name, 1): StepOverhead(float(spec["fixed_s"]), float(spec.get("per_seq_s", 0.0)))},
        )
        self.cm = CostModel(cat.model(spec["model"]), gpu, 1, framework=fw)
        self.client_s = float(spec.get("client_s", 0.0))
        self.joining: list = []  # [prompt tokens, tokens to produce, queue of token times]
        self.running: list = []
        self.wake = asyncio.Event()
        self.task = asyncio.ensure_future(self.loop())

    def submit(self, p: int, n_out: int) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue()
        self.joining.append([p, n_out, q, 0])
        self.wake.set()
        return q

    async def loop(self) -> None:
        t_end = 0.0
        while True:
            if not self.joining and not self.running:
                self.wake.clear()
                await self.wake.wait()
                t_end = 0.0
            # back to back on the programmed clock: a late wake-up does not stretch the next step
            t0 = max(t_end, time.perf_counter()) if t_end == 0.0 else t_end
            new, self.joining = self.joining, []
            n_tok = pairs = kv = 0
            for p, _, _, _ in new:
                n_tok += p
                pairs += p * (p + 1) // 2
            for r in self.running:  # r[3]: tokens generated; context = prompt + generated
                c = r[0] + r[3]
                n_tok += 1
                pairs += c
                kv += c - 1
            dt = self.cm.iteration(n_tok, pairs, kv, len(new) + len(self.running))[0]
            t_end = t0 + dt
            await sleep_until(t_end)
            t = time.perf_counter()
            self.running += new
            for r in self.running:
                r[3] += 1
                r[2].put_nowait(t)
            self.running = [r for r in self.running if r[3] < r[1]]


async def sleep_until(deadline: float) -> None:
    """Wake at ``deadline`` (perf_counter).  The server's event loop runs on select(), whose timeout
    has microsecond resolution (epoll's is a millisecond), so its timers are not late by design."""
    delay = deadline - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)


def count_tokens(text: str) -> int:
    return 1 + sum(2 if len(w) > 8 else 1 for w in text.split())


class FakeServer:
    def __init__(self):
        self.cfg = dict(DEFAULTS)
        self.seen = 0
        self.tokenized = 0
        self.open_streams = 0
        self.max_open_streams = 0
        self.last_headers: dict = {}
        self.bodies: list = []
        self.lateness: list = []  # actual minus scheduled write time of every token, seconds
        self.engine: Engine | None = None

    # ------------------------------------------------------------------ hooks
    async def config(self, request: web.Request) -> web.Response:
        self.cfg.update(await request.json())  # a new configuration also resets the statistics
        if self.engine is not None:
            self.engine.task.cancel()
        self.engine = Engine(self.cfg["engine"]) if self.cfg.get("engine") else None
        self.seen = 0
        self.tokenized = 0
        self.max_open_streams = 0
        self.bodies = []
        self.lateness = []
        return web.json_response(self.cfg)

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "seen": self.seen,
                "max_open_streams": self.max_open_streams,
                "open_streams": self.open_streams,
                "last_headers": self.last_headers,
                "bodies": self.bodies[-5:],
                "lateness_max_s": max(self.lateness, default=0.0),
                "lateness_mean_s": sum(self.lateness) / max(1, len(self.lateness)),
            }
        )

    # ------------------------------------------------------------------ OpenAI-compatible API
    async def models(self, request: web.Request) -> web.Response:
        if not self.cfg["list_models"]:
            raise web.HTTPNotFound()
        return web.json_response(
            {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "test"} for m in self.cfg["models"]]}
        )

    async def tokenize(self, request: web.Request) -> web.Response:
        if not self.cfg["tokenize"]:
            raise web.HTTPNotFound()
        self.tokenized += 1
        if self.cfg["tokenize_limit"] is not None and self.tokenized > self.cfg["tokenize_limit"]:
            return self._error(500, "tokenizer crashed (programmed)", "InternalServerError")
        body = await request.json()
        n = count_tokens(body.get("prompt", ""))
        return web.json_response({"count": n, "max_model_len": self.cfg["max_model_len"], "tokens": list(range(n))})

    def _error(self, status: int, message: str, kind: str) -> web.Response:
        return web.json_response(
            {"object": "error", "message": message, "type": kind, "param": None, "code": status}, status=status
        )

    async def completions(self, request: web.Request) -> web.StreamResponse:
        t_recv = time.perf_counter()
        cfg = self.cfg
        self.last_headers = {k: v for k, v in request.headers.items()}
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return self._error(400, "invalid JSON body", "BadRequestError")
        self.bodies.append(body)
        idx = self.seen
        self.seen += 1
        if body.get("model") not in cfg["models"]:
            return self._error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        prompt = body.get("prompt", "")
        p = count_tokens(prompt)
        max_tokens = int(body.get("max_tokens") or 16)
        n_out = max_tokens if body.get("ignore_eos") else min(max_tokens, cfg["natural_length"])
        ttft = cfg["ttft_base_s"] + cfg["ttft_per_token_s"] * p
        tpot = cfg["tpot_base_s"] + cfg["tpot_per_token_s"] * p
        failing = idx >= cfg["fail_from"] and (idx - cfg["fail_from"]) % max(1, int(cfg["fail_every"])) == 0
        mode = cfg["mode"] if failing else "normal"
        if mode == "http_500":
            return self._error(500, "internal server error (programmed)", "InternalServerError")
        auth = request.headers.get("Authorization", "")
        if mode == "http_429":
            resp = self._error(429, "rate limit exceeded (programmed)", "RateLimitError")
            if cfg["retry_after"] is not None:
                resp.headers["Retry-After"] = str(cfg["retry_after"])
            return resp
        if mode == "echo_key":
            return web.json_response(
                {
                    "error": {
                        "message": f"invalid credentials {auth} for this server",
                        "type": "AuthError",
                        "code": cfg["echo_status"],
                    }
                },
                status=cfg["echo_status"],
                reason=f"Bad {auth}",
                headers={"X-Echo-Authorization": auth, "WWW-Authenticate": auth},
            )
        if mode == "no_answer":
            await asyncio.sleep(3600)
        created = int(time.time())
        rid = f"cmpl-{idx}"

        def chunk(text: str, finish=None) -> bytes:
            obj = {
                "id": rid,
                "object": "text_completion",
                "created": created,
                "model": body["model"],
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
            }
            return f"data: {json.dumps(obj)}\n\n".encode()

        if mode == "non_streaming" or not body.get("stream"):
            await sleep_until(t_recv + ttft + (n_out - 1) * tpot)
            return web.json_response(
                {
                    "id": rid,
                    "object": "text_completion",
                    "created": created,
                    "model": body["model"],
                    "choices": [{"index": 0, "text": " tok" * n_out, "finish_reason": "length"}],
                    "usage": {"prompt_tokens": p, "completion_tokens": n_out, "total_tokens": p + n_out},
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        if self.engine is not None:
            return await self._engine_stream(resp, chunk, body, p, n_out, max_tokens, t_recv)
        self.open_streams += 1
        self.max_open_streams = max(self.max_open_streams, self.open_streams)
        try:
            if mode in ("flood", "huge_line", "garbage", "echo_key_stream", "echo_key_json", "no_done"):
                return await self._fault_stream(resp, chunk, mode, body, p, n_out, auth)
            for k in range(n_out):
                if (
                    mode in ("error_mid_stream", "close_mid_stream", "hang", "invalid_json")
                    and k == cfg["fail_after_tokens"]
                ):
                    if mode == "error_mid_stream":
                        err = {
                            "error": {
                                "object": "error",
                                "message": "CUDA out of memory (programmed)",
                                "type": "InternalServerError",
                                "code": 500,
                            }
                        }
                        await resp.write(f"data: {json.dumps(err)}\n\n".encode())
                        await resp.write(b"data: [DONE]\n\n")
                        return resp
                    if mode == "close_mid_stream":
                        request.transport.close()
                        return resp
                    if mode == "hang":
                        await asyncio.sleep(3600)
                    if mode == "invalid_json":
                        await resp.write(b'data: {"id": "broken", "choices": [\n\n')
                        await resp.write(b"data: [DONE]\n\n")
                        return resp
                await sleep_until(t_recv + ttft + k * tpot)
                if mode == "malformed_lines":
                    await resp.write(b": keep-alive comment\n\nevent: ping\n\nthis line is not SSE\n\ndata:\n\n")
                finish = "length" if k == n_out - 1 and n_out == max_tokens else ("stop" if k == n_out - 1 else None)
                self.lateness.append(time.perf_counter() - (t_recv + ttft + k * tpot))
                await resp.write(chunk(f" t{k}", finish))
            so = body.get("stream_options") or {}
            if so.get("include_usage") and mode != "no_usage":
                usage = {
                    "id": rid,
                    "object": "text_completion",
                    "created": created,
                    "model": body["model"],
                    "choices": [],
                    "usage": {"prompt_tokens": p, "completion_tokens": n_out, "total_tokens": p + n_out},
                }
                await resp.write(f"data: {json.dumps(usage)}\n\n".encode())
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        finally:
            self.open_streams -= 1

    async def _fault_stream(self, resp, chunk, mode: str, body, p: int, n_out: int, auth: str):
        """The misbehaving streams of tests/test_tracer_faults.py (a client hanging up ends them)."""
        cfg = self.cfg
        await resp.write(chunk(" t0"))
        if mode == "flood":  # tokens without end, max_tokens ignored
            k = 1
            while True:
                await resp.write(b"".join(chunk(f" t{k + i}") for i in range(50)))
                k += 50
                await asyncio.sleep(0.001)
        if mode == "huge_line":  # one line of huge_line_bytes, in pieces of 256 KiB
            await resp.write(b"data: ")
            left = int(cfg["huge_line_bytes"])
            piece = b"x" * (256 << 10)
            while left > 0:
                await resp.write(piece[:left])
                left -= len(piece)
            await resp.write(b"\n\n")
        elif mode == "garbage":  # junk that is skipped, then data that is not JSON
            await resp.write(b"\x00\xff\xfe garbage\n\nevent: x\ndata\n:::\n\n")
            await resp.write(chunk(" t1"))
            await resp.write(b"data: {not json at all\n\n")
        elif mode == "echo_key_stream":
            err = {"error": {"message": f"token {auth} rejected mid-stream", "type": "AuthError", "code": 401}}
            await resp.write(f"data: {json.dumps(err)}\n\n".encode())
        elif mode == "echo_key_json":
            await resp.write(f"data: {{'{auth}' is not JSON\n\n".encode())
        elif mode == "no_done":  # a whole answer, usage included, but no [DONE]
            for k in range(1, n_out):
                await resp.write(chunk(f" t{k}", "length" if k == n_out - 1 else None))
            usage = {
                "choices": [],
                "usage": {"prompt_tokens": p, "completion_tokens": n_out, "total_tokens": p + n_out},
            }
            await resp.write(f"data: {json.dumps(usage)}\n\n".encode())
            await resp.write_eof()
            return resp
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _engine_stream(
        self, resp, chunk, body, p: int, n_out: int, max_tokens: int, t_recv: float
    ) -> web.StreamResponse:
        engine = self.engine
        await sleep_until(t_recv + engine.client_s)
        q = engine.submit(p, n_out)
        for k in range(n_out):
            await q.get()
            finish = ("length" if n_out == max_tokens else "stop") if k == n_out - 1 else None
            await resp.write(chunk(f" t{k}", finish))
        so = body.get("stream_options") or {}
        if so.get("include_usage"):
            await resp.write(
                (
                    "data: "
                    + json.dumps(
                        {
                            "choices": [],
                            "usage": {"prompt_tokens": p, "completion_tokens": n_out, "total_tokens": p + n_out},
                        }
                    )
                    + "\n\n"
                ).encode()
            )
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def make_app() -> web.Application:
    srv = FakeServer()
    app = web.Application()
    app.add_routes(
        [
            web.get("/v1/models", srv.models),
            web.post("/tokenize", srv.tokenize),
            web.post("/v1/completions", srv.completions),
            web.post("/_config", srv.config),
            web.get("/_stats", srv.stats),
        ]
    )
    return app


async def _serve() -> None:
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    logging.getLogger("aiohttp").setLevel(logging.CRITICAL)  # a client hanging up is part of the tests
    gc.freeze()  # no collector pauses over the start-up objects while serving
    print(f"PORT {port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    loop = asyncio.SelectorEventLoop(selectors.SelectSelector())
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(_serve())
    except KeyboardInterrupt:
        sys.exit(0)
