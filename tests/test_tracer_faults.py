"""``kavier trace`` against endpoints that misbehave at run time (issue 17): real sockets on 127.0.0.1.

Each fault ends in one of two ways: the request is recorded as failed with its reason (``error_kind``,
``error``) and counted in summary.json, or the whole command stops with one ``kavier: error:`` line and a
non-zero exit; never a traceback, never a hang, never an output that looks complete when it is not, and
never the API key in a file, a message or stdout/stderr. Timing here is only ever bounded from above
generously (a loaded 2-core machine) or from below (a backoff that must have been waited).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO
from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.cli import main
from kavier_opendc.tracer.client import EXTRA_CHUNKS, MAX_LINE_BYTES, REDACTED, Endpoint, retry_after_seconds
from test_tracer import SERVER, Server, _free_port, write_trace

KEY = "sk-faults-SECRET-7f3a9c1e"
BOUND_S = 60  # "does not hang": every case here ends well within this, even on a loaded machine


@pytest.fixture(scope="module")
def server():
    sys.path.insert(0, str(SERVER.parent))
    s = Server()
    yield s
    s.stop()


@pytest.fixture
def srv(server):
    server.configure()
    return server


def run(srv, out, trace, *extra, url=None, capsys=None):
    """main() in this process: (exit status, stdout, stderr), with the checks every fault shares."""
    t = time.perf_counter()
    rc = main(
        ["trace", url or srv.url, "--model", "fake-model", "--out", str(out), "--quiet", "--trace", str(trace), *extra]
    )
    assert time.perf_counter() - t < BOUND_S
    cap = capsys.readouterr() if capsys else None
    if cap:
        assert "Traceback" not in cap.err + cap.out
    return rc, (cap.out if cap else ""), (cap.err if cap else "")


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kavier: error: "), err
    return lines[0]


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def assert_marked_incomplete(out: Path) -> None:
    s = summary(out)
    assert s["complete"] is False and (out / "INCOMPLETE").is_file()


# ------------------------------------------------------------------ small raw-socket servers
class RawServer:
    """A TCP server on 127.0.0.1 whose every connection is handed to ``handle(conn, request_bytes)``
    (``accept_only``: connections are accepted and never read or answered)."""

    def __init__(self, handle=None, accept_only: bool = False):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.handle, self.accept_only = handle, accept_only
        self.conns: list[socket.socket] = []
        self.completions = 0
        self.stopped = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            if not self.accept_only:
                threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        try:
            while True:
                data = b""
                while b"\r\n\r\n" not in data:
                    got = conn.recv(65536)
                    if not got:
                        return
                    data += got
                head, _, rest = data.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v)
                while len(rest) < length:
                    rest += conn.recv(65536)
                if not self.handle(self, conn, head.split(b" ")[1].decode(), rest):
                    return
        except OSError:
            return
        finally:
            conn.close()

    def close(self):
        self.stopped = True
        self.sock.close()
        for c in self.conns:
            c.close()


def _reply(conn, status: str, body: bytes, ctype: str = "application/json") -> bool:
    conn.sendall(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    return True


def _chunk(text: str) -> bytes:
    return ("data: " + json.dumps({"choices": [{"index": 0, "text": text, "finish_reason": None}]}) + "\n\n").encode()


def eof_mid_stream(server, conn, path, body) -> bool:
    """Models, no /tokenize; the first completion (the check's) whole, every later one ended by closing the
    connection after two tokens: a body without length or chunking, so the close looks like a clean end."""
    if path == "/v1/models":
        return _reply(conn, "200 OK", json.dumps({"data": [{"id": "fake-model"}]}).encode())
    if path != "/v1/completions":
        return _reply(conn, "404 Not Found", b'{"error": "no"}')
    server.completions += 1
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
    conn.sendall(_chunk(" a") + _chunk(" b"))
    if server.completions == 1 or (server.completions > 1 and b"Hello world" in body):
        usage = {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}}
        conn.sendall(("data: " + json.dumps(usage) + "\n\n").encode() + b"data: [DONE]\n\n")
    return False  # close the connection


# ------------------------------------------------------------------ (1) closed mid-stream
def test_closed_mid_stream_every_request_fails_marked_incomplete(srv, tmp_path, capsys):
    srv.configure(mode="close_mid_stream", fail_from=1, fail_after_tokens=2, ttft_base_s=0.002, tpot_base_s=0.002)
    out = tmp_path / "o"
    rc, _, err = run(srv, out, write_trace(tmp_path / "t.csv", [10] * 3, [5] * 3), "--retries", "2", capsys=capsys)
    assert rc == 3
    line = one_error_line(err)
    assert "all 3 requests" in line and "closed the connection mid-stream" in line and "incomplete" in line
    s = summary(out)
    assert s["status"] == "all_failed" and s["errors"] == {"connection": 3}
    assert_marked_incomplete(out)
    df = pd.read_parquet(out / "requests.parquet")
    assert (df["attempts"] == 1).all()  # part of the answer had arrived: not retried
    assert (df["num_chunks"] == 2).all() and df["ttft_s"].isna().all()


def test_clean_eof_before_done_is_an_incomplete_stream(tmp_path, capsys):
    raw = RawServer(eof_mid_stream)
    try:
        out = tmp_path / "o"
        rc, _, err = run(None, out, write_trace(tmp_path / "t.csv", [10] * 2, [4] * 2), url=raw.url, capsys=capsys)
    finally:
        raw.close()
    assert rc == 3 and "without 'data: [DONE]'" in one_error_line(err)
    assert summary(out)["errors"] == {"incomplete_stream": 2}
    assert_marked_incomplete(out)


# ------------------------------------------------------------------ (2) malformed SSE
def test_garbage_lines_skipped_invalid_json_recorded(srv, tmp_path, capsys):
    srv.configure(mode="garbage", fail_from=1, fail_every=2, ttft_base_s=0.002, tpot_base_s=0.002)
    out = tmp_path / "o"
    rc, _, err = run(srv, out, write_trace(tmp_path / "t.csv", [10] * 4, [3] * 4), "--concurrency", "1", capsys=capsys)
    assert rc == 0
    assert err.startswith("kavier: warning: 2 of 4 requests failed (invalid_json: 2") and err.count("\n") == 1
    df = pd.read_parquet(out / "requests.parquet")
    assert list(df["status"]) == ["error", "finished", "error", "finished"]
    bad = df[df["status"] == "error"]
    assert (bad["error_kind"] == "invalid_json").all() and bad["error"].str.contains("invalid JSON").all()
    assert (bad["sse_ignored_lines"] == 4).all()  # the binary junk, event:, a bare field, a comment
    s = summary(out)
    assert s["status"] == "some_failed" and s["complete"] is True and s["errors"] == {"invalid_json": 2}
    assert not (out / "INCOMPLETE").exists()


def test_missing_done_is_recorded_not_taken_as_complete(srv, tmp_path, capsys):
    srv.configure(mode="no_done", fail_from=1, fail_every=2, ttft_base_s=0.002, tpot_base_s=0.002)
    out = tmp_path / "o"
    rc, _, err = run(srv, out, write_trace(tmp_path / "t.csv", [10] * 4, [3] * 4), "--concurrency", "1", capsys=capsys)
    assert rc == 0 and "incomplete_stream: 2" in err
    df = pd.read_parquet(out / "requests.parquet")
    bad = df[df["status"] == "error"]
    assert list(bad["request_id"]) == [0, 2] and bad["e2e_s"].isna().all()
    assert bad["error"].str.contains("the answer may be incomplete").all()


# ------------------------------------------------------------------ (3) never answers
def test_accepts_but_never_answers_the_check(tmp_path, capsys):
    raw = RawServer(accept_only=True)
    try:
        out = tmp_path / "o"
        t = time.perf_counter()
        rc, _, err = run(
            None,
            out,
            write_trace(tmp_path / "t.csv", [10], [3]),
            "--first-byte-timeout",
            "0.5",
            url=raw.url,
            capsys=capsys,
        )
        assert time.perf_counter() - t < BOUND_S
    finally:
        raw.close()
    assert rc == 2
    line = one_error_line(err)
    assert "accepted the connection but did not answer GET /v1/models within 0.5 s" in line
    assert not out.exists()


def test_first_byte_timeout_records_every_request(srv, tmp_path, capsys):
    srv.configure(mode="no_answer", fail_from=1, ttft_base_s=0.002, tpot_base_s=0.002)
    out = tmp_path / "o"
    rc, _, err = run(
        srv,
        out,
        write_trace(tmp_path / "t.csv", [10] * 3, [3] * 3),
        "--first-byte-timeout",
        "0.5",
        "--read-timeout",
        "30",
        capsys=capsys,
    )
    assert rc == 3 and "no first byte of the reply within --first-byte-timeout 0.5 s" in one_error_line(err)
    assert summary(out)["errors"] == {"timeout": 3}
    assert_marked_incomplete(out)


def test_total_timeout_ends_a_stalled_stream(srv, tmp_path, capsys):
    srv.configure(mode="hang", fail_from=1, fail_after_tokens=1, ttft_base_s=0.002, tpot_base_s=0.002)
    out = tmp_path / "o"
    rc, _, err = run(
        srv,
        out,
        write_trace(tmp_path / "t.csv", [10] * 2, [4] * 2),
        "--timeout",
        "1",
        "--read-timeout",
        "30",
        capsys=capsys,
    )
    assert rc == 3
    assert "took longer than --timeout 1 s (waiting for the next chunk of the stream)" in one_error_line(err)
    df = pd.read_parquet(out / "requests.parquet")
    assert (df["error_kind"] == "timeout").all() and (df["num_chunks"] == 1).all()


def test_between_chunks_timeout(srv, tmp_path, capsys):
    srv.configure(mode="hang", fail_from=1, fail_after_tokens=1, ttft_base_s=0.002, tpot_base_s=0.002)
    out = tmp_path / "o"
    rc, _, err = run(srv, out, write_trace(tmp_path / "t.csv", [10], [4]), "--read-timeout", "0.5", capsys=capsys)
    assert rc == 3 and "no next chunk of the stream within --read-timeout 0.5 s" in one_error_line(err)


# ------------------------------------------------------------------ (4) 429 and 500, retried with backoff
def test_429_with_retry_after_is_waited_then_succeeds(srv, tmp_path, capsys):
    srv.configure(mode="http_429", retry_after=1, fail_from=1, fail_every=1000, ttft_base_s=0.001, tpot_base_s=0.001)
    out = tmp_path / "o"
    t = time.perf_counter()
    rc, _, err = run(
        srv,
        out,
        write_trace(tmp_path / "t.csv", [10] * 2, [3] * 2),
        "--concurrency",
        "1",
        "--retries",
        "2",
        "--retry-backoff",
        "0.01",
        capsys=capsys,
    )
    assert time.perf_counter() - t >= 0.95  # Retry-After: 1 was waited, not the 0.01 s backoff
    assert rc == 0 and err == ""
    df = pd.read_parquet(out / "requests.parquet")
    assert (df["status"] == "finished").all() and df["attempts"].tolist() == [2, 1]


def test_429_without_retry_after_backs_off_then_is_recorded(srv, tmp_path, capsys):
    srv.configure(mode="http_429", retry_after=None, fail_from=1, ttft_base_s=0.001, tpot_base_s=0.001)
    out = tmp_path / "o"
    t = time.perf_counter()
    rc, _, err = run(
        srv,
        out,
        write_trace(tmp_path / "t.csv", [10] * 2, [3] * 2),
        "--concurrency",
        "1",
        "--retries",
        "2",
        "--retry-backoff",
        "0.1",
        capsys=capsys,
    )
    assert time.perf_counter() - t >= 2 * (0.1 + 0.2) * 0.9  # 0.1 s, then 0.2 s, for each request
    assert rc == 3
    line = one_error_line(err)
    assert "HTTP 429" in line and "rate limit exceeded" in line and "gave up after 3 attempts" in line
    df = pd.read_parquet(out / "requests.parquet")
    assert (df["attempts"] == 3).all() and (df["http_status"] == 429).all()
    assert summary(out)["errors"] == {"rate_limited": 2}
    assert_marked_incomplete(out)


def test_500_retried_then_recorded_and_4xx_not_retried(srv, tmp_path, capsys):
    srv.configure(mode="http_500", fail_from=1, fail_every=2, ttft_base_s=0.001, tpot_base_s=0.001)
    out = tmp_path / "a"
    # arrival order 1 (fails), 2 (ok: the retry), 3 (fails), 4 (ok) ...: every request ends finished
    rc, _, err = run(
        srv,
        out,
        write_trace(tmp_path / "t.csv", [10] * 3, [3] * 3),
        "--concurrency",
        "1",
        "--retries",
        "1",
        "--retry-backoff",
        "0.01",
        capsys=capsys,
    )
    assert rc == 0
    df = pd.read_parquet(out / "requests.parquet")
    assert (df["status"] == "finished").all() and df["attempts"].tolist() == [2, 2, 2]
    srv.configure(mode="http_500", fail_from=1, ttft_base_s=0.001, tpot_base_s=0.001)
    rc, _, err = run(
        srv, tmp_path / "b", tmp_path / "t.csv", "--retries", "1", "--retry-backoff", "0.01", capsys=capsys
    )
    assert rc == 3 and "HTTP 500" in one_error_line(err)
    assert (pd.read_parquet(tmp_path / "b" / "requests.parquet")["attempts"] == 2).all()
    srv.configure(mode="echo_key", echo_status=400, fail_from=1, ttft_base_s=0.001, tpot_base_s=0.001)
    rc, _, err = run(
        srv, tmp_path / "c", tmp_path / "t.csv", "--retries", "3", "--retry-backoff", "0.01", capsys=capsys
    )
    assert rc == 3 and "HTTP 400" in one_error_line(err)
    assert (pd.read_parquet(tmp_path / "c" / "requests.parquet")["attempts"] == 1).all()


def test_retry_after_header_forms():
    assert retry_after_seconds("3") == 3.0 and retry_after_seconds(" 0.5 ") == 0.5
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    assert retry_after_seconds("-4") == 0.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: now


# ------------------------------------------------------------------ (5) floods
def test_tokens_without_end_are_cut_off(srv, tmp_path, capsys):
    srv.configure(mode="flood", fail_from=1, ttft_base_s=0.001, tpot_base_s=0.001)
    out = tmp_path / "o"
    rc, _, err = run(srv, out, write_trace(tmp_path / "t.csv", [10] * 2, [5] * 2), capsys=capsys)
    assert rc == 3 and "does not honour max_tokens" in one_error_line(err)
    df = pd.read_parquet(out / "requests.parquet")
    assert (df["error_kind"] == "flood").all() and (df["num_chunks"] == 5 + EXTRA_CHUNKS + 1).all()
    assert_marked_incomplete(out)


def test_huge_line_is_cut_off_at_the_line_cap(srv, tmp_path, capsys):
    srv.configure(
        mode="huge_line",
        huge_line_bytes=8 * MAX_LINE_BYTES,
        fail_from=1,
        fail_every=2,
        ttft_base_s=0.001,
        tpot_base_s=0.001,
    )
    out = tmp_path / "o"
    rc, _, err = run(srv, out, write_trace(tmp_path / "t.csv", [10] * 2, [3] * 2), "--concurrency", "1", capsys=capsys)
    assert rc == 0 and "line_too_long: 1" in err
    df = pd.read_parquet(out / "requests.parquet")
    assert list(df["status"]) == ["error", "finished"]
    assert f"longer than {MAX_LINE_BYTES} bytes" in df["error"].iloc[0]
    assert summary(out)["errors"] == {"line_too_long": 1}


# ------------------------------------------------------------------ (6) the API key, echoed back
def _assert_key_nowhere(out: Path, *texts: str) -> None:
    for f in out.rglob("*") if out.exists() else []:
        if f.is_file():
            assert KEY.encode() not in f.read_bytes(), f
    for t in texts:
        assert KEY not in t


@pytest.mark.parametrize(
    "mode,kind", [("echo_key", "http"), ("echo_key_stream", "server_error"), ("echo_key_json", "invalid_json")]
)
def test_echoed_api_key_is_redacted_everywhere(srv, tmp_path, capsys, monkeypatch, mode, kind):
    monkeypatch.setenv("KAVIER_API_KEY", KEY)
    srv.configure(mode=mode, fail_from=1, fail_every=2, ttft_base_s=0.001, tpot_base_s=0.001)
    out = tmp_path / "o"
    rc, stdout, err = run(
        srv, out, write_trace(tmp_path / "t.csv", [10] * 4, [3] * 4), "--concurrency", "1", capsys=capsys
    )
    assert srv.stats()["last_headers"]["Authorization"] == f"Bearer {KEY}"  # the key did go over the wire
    assert rc == 0 and f"{kind}: 2" in err
    df = pd.read_parquet(out / "requests.parquet")
    bad = df[df["status"] == "error"]
    assert len(bad) == 2 and bad["error"].str.contains(REDACTED, regex=False).all()
    _assert_key_nowhere(out, stdout, err)


def test_echoed_api_key_redacted_in_the_check_error_and_a_separate_process(srv, tmp_path):
    srv.configure(mode="echo_key", fail_from=0, ttft_base_s=0.001, tpot_base_s=0.001)
    trace = write_trace(tmp_path / "t.csv", [10], [3])
    out = tmp_path / "o"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "kavier_opendc.cli",
            "trace",
            srv.url,
            "--model",
            "fake-model",
            "--trace",
            str(trace),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO), KAVIER_API_KEY=KEY),
        timeout=BOUND_S,
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr
    line = one_error_line(p.stderr)
    assert "HTTP 500" in line and REDACTED in line
    _assert_key_nowhere(out, p.stdout, p.stderr)
    assert not out.exists()

    async def check():
        async with Endpoint(srv.url, "fake-model", KEY) as ep:
            await ep.check()

    with pytest.raises(KavierInputError) as info:  # the exception itself, not only what the CLI prints
        asyncio.run(check())
    assert KEY not in str(info.value) and KEY not in repr(info.value.args)


# ------------------------------------------------------------------ unreachable endpoints
def test_connection_refused_and_dns_failure_one_paragraph(tmp_path, capsys):
    trace = write_trace(tmp_path / "t.csv", [10], [3])
    rc, _, err = run(None, tmp_path / "a", trace, url=f"http://127.0.0.1:{_free_port()}", capsys=capsys)
    assert rc == 2 and "cannot connect to http://127.0.0.1:" in one_error_line(err)
    rc, _, err = run(
        None, tmp_path / "b", trace, "--connect-timeout", "10", url="http://no-such-host.invalid:8000", capsys=capsys
    )
    line = one_error_line(err)
    assert rc == 2 and (
        "cannot resolve the host name of http://no-such-host.invalid:8000" in line
        or "no connection within --connect-timeout" in line
    ), line
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_endpoint_lost_while_preparing_prompts(srv, tmp_path, capsys):
    srv.configure(tokenize_limit=1, ttft_base_s=0.001, tpot_base_s=0.001)  # the check's call, then HTTP 500
    out = tmp_path / "o"
    rc, _, err = run(srv, out, write_trace(tmp_path / "t.csv", [10] * 3, [3] * 3), capsys=capsys)
    assert rc == 3
    assert "stopped answering while the prompts were prepared (POST /tokenize)" in one_error_line(err)
    assert not out.exists()


# ------------------------------------------------------------------ earlier results
def test_complete_earlier_measurement_is_kept(srv, tmp_path, capsys):
    srv.configure(ttft_base_s=0.001, tpot_base_s=0.001)
    out = tmp_path / "o"
    trace = write_trace(tmp_path / "t.csv", [10] * 2, [3] * 2)
    assert run(srv, out, trace, capsys=capsys)[0] == 0
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    rc, _, err = run(srv, out, trace, capsys=capsys)  # no --overwrite: refused
    assert rc == 2 and "already holds a complete measurement" in one_error_line(err)
    srv.configure(mode="echo_key", fail_from=0)  # --overwrite, the check fails
    rc, _, err = run(srv, out, trace, "--overwrite", capsys=capsys)
    assert rc == 2
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before  # untouched
    srv.configure(mode="close_mid_stream", fail_from=1, ttft_base_s=0.001, tpot_base_s=0.001)
    rc, _, err = run(srv, out, trace, "--overwrite", capsys=capsys)  # replaced, marked incomplete
    assert rc == 3
    assert_marked_incomplete(out)
    srv.configure(ttft_base_s=0.001, tpot_base_s=0.001)
    assert run(srv, out, trace, capsys=capsys)[0] == 0  # an incomplete one is replaced
    assert summary(out)["complete"] is True and not (out / "INCOMPLETE").exists()
