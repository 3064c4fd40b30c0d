"""Synthetic request traces (input C without a trace file): arrival processes, lengths, sessions, prefix hashes.

The distributions themselves live in ``distributions.py``; this module
parses a workload's parameters, generates the trace and reads spec files.

:func:`synthetic_trace` builds a :class:`~kavier_opendc.workload.trace.Trace`
from a few parameters, fully vectorised with a seeded :class:`numpy.random.Generator`
(the same arguments and seed always give the same trace; one million
requests take well under a second without ``hash_ids``).
:func:`load_synthetic_spec` reads the same parameters from a JSON/YAML file
(or dict) validated against ``schemas/synthetic_workload.schema.json``.

Arrivals (``arrival``), with ``rate`` in requests per second:

* ``poisson``: exponential inter-arrival times with mean ``1/rate``;
* ``gamma``: gamma inter-arrival times with mean ``1/rate`` and coefficient of
  variation ``cv`` (``cv > 1`` is burstier than Poisson, ``cv < 1`` smoother,
  ``cv == 1`` is Poisson);
* ``constant``: exactly ``1/rate`` apart;
* ``batch``: an offline batch, every request at 0 (``rate`` is ignored);
* ``closed-loop``: ``concurrency`` clients (an integer >= 1), each sending its
  next request ``think_time_s`` seconds (default 0) after its previous one
  ends, as benchmark clients do (``rate`` is ignored). The end times come
  from the simulation: the trace holds every request at 0 and the clients
  (:class:`~kavier_opendc.workload.trace.ClosedLoop`); the simulator sets the
  arrival times (engine/closed_loop.py). No sessions with it.

The first request always arrives at 0.

Lengths (``input`` and ``output``) are :class:`LengthSpec` objects, plain
integers (a constant) or dicts with ``dist`` one of

* ``constant`` (``value``), ``uniform`` (``low``, ``high``, both inclusive),
* ``lognormal`` (``mean`` *or* ``median``, and ``sigma`` of the underlying
  normal; rounded to integers),
* ``zipf`` (exponent ``alpha``; support ``[min, max]`` with probability
  proportional to ``(k - min + 1) ** -alpha``, unbounded above when ``max`` is
  not given, which needs ``alpha > 1``),
* ``histogram``: the empirical distribution of a file (``file``, any trace
  :func:`load_trace` reads, e.g. ``sharegpt_lengths_llama2.csv`` whose
  ``num_prefill_tokens``/``num_decode_tokens`` are the input/output lengths,
  or a named integer ``column`` of a CSV/Parquet/JSON Lines file), explicit
  ``bins`` (edges; an integer is drawn uniformly within ``[edge_i,
  edge_i+1)`` of a bin picked with the given ``weights``) or explicit
  ``values`` with optional ``weights``.

Every distribution is then clipped to ``[min, max]`` (``min`` defaults to 1).
When input and output are both histograms of the same file, rows are drawn
jointly (``joint=None`` auto, ``True`` to insist, ``False`` for independent
draws) so that the correlation of prompt and answer lengths is kept.

Sessions (multi-turn conversations, ``sessions`` dict):

* ``turns``: length spec of the number of turns per session (>= 1);
* ``think_time_s``: seconds between the *arrivals* of consecutive turns, a
  number or ``{"dist": "constant"|"exponential"|"uniform"|"lognormal", ...}``;
* ``num_sessions`` (optional): generate exactly this many sessions; otherwise
  sessions are generated until ``num_requests`` turns exist and the last
  session is cut short;
* ``rate`` (optional): session starts per second; by default
  ``rate / mean(turns)`` so that the long-run request rate is ``rate``;
* ``accumulate_context`` (default false): the prompt of turn k+1 contains the
  whole conversation so far (previous prompt + previous answer + the new
  message, whose length is drawn from ``input``).

Approximation: the real time at which turn k's answer is complete depends
on the simulated server, which is unknown when the trace is generated, so
turn k+1 arrives at turn k's *arrival* time plus the think time.  Choose the
think time to include the expected answer time.

``deferrable`` (``{share, deadline_s}``) makes each request offline batch work with probability
``share`` (a stream of the seed of its own: the other draws are unchanged), with a deadline
``deadline_s`` seconds after its arrival (``Trace.deadline_s``; engine/deferral.py).

``shared_prefix_tokens`` prepends a common prefix (a system prompt) to every
prompt.  ``hash_ids=True`` attaches Mooncake-style prefix-block hashes (one
per ``hash_block_size`` tokens): full blocks of the shared prefix share ids
across all requests, full blocks of a session's accumulated conversation
share ids across its turns, and every partially filled last block is unique.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from kavier_opendc.base import limits
from kavier_opendc.base.documents import parse_document
from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.base.validation import schema_file, schema_validator
from kavier_opendc.workload.distributions import LengthSpec, SessionSpec, is_int, is_num
from kavier_opendc.workload.trace import ClosedLoop, Trace

ARRIVAL_KINDS: tuple[str, ...] = ("poisson", "gamma", "constant", "batch", "closed-loop")
#: arrival kinds without a rate (every request at 0 in the generated trace)
_NO_RATE = ("batch", "closed-loop")

_SCHEMA_NAME = "synthetic_workload.schema.json"

# synthetic_trace's default lengths (LengthSpec is frozen, so one instance serves every call)
_DEFAULT_INPUT = LengthSpec.constant(512)
_DEFAULT_OUTPUT = LengthSpec.constant(128)


# --------------------------------------------------------------------------- generation


def _gaps(kind: str, rate: float | None, cv: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """Arrival times of ``n`` events, the first at 0."""
    if n == 0:
        return np.zeros(0)
    if kind in _NO_RATE:
        return np.zeros(n)
    assert rate is not None  # validated: every arrival kind but batch requires a rate
    if kind == "constant":
        return np.arange(n, dtype=np.float64) / rate
    if kind == "poisson":
        g = rng.exponential(1.0 / rate, size=n)
    else:  # gamma, mean 1/rate, coefficient of variation cv
        shape = 1.0 / (cv * cv)
        g = rng.gamma(shape, 1.0 / (rate * shape), size=n)
    g[0] = 0.0
    return np.cumsum(g, out=g)


def _segment_offsets(counts: np.ndarray) -> np.ndarray:
    starts = np.zeros(counts.size, dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    return starts


def synthetic_trace(
    num_requests: int | None,
    rate: float | None,
    arrival: str = "poisson",
    cv: float = 1.0,
    input: LengthSpec | int | Mapping = _DEFAULT_INPUT,  # noqa: A002 - public name
    output: LengthSpec | int | Mapping = _DEFAULT_OUTPUT,
    seed: int = 0,
    sessions: Mapping | SessionSpec | None = None,
    *,
    joint: bool | None = None,
    shared_prefix_tokens: int = 0,
    hash_ids: bool = False,
    hash_block_size: int = 512,
    base_dir: str | os.PathLike | None = None,
    source: str | None = None,
    concurrency: int | None = None,
    think_time_s: float | None = None,
    deferrable: Mapping | None = None,
) -> Trace:
    """Generate a synthetic trace (see the module documentation for every parameter).

    ``base_dir`` resolves relative histogram ``file`` paths (default: the
    current directory).  Raises :class:`KavierInputError` for invalid
    parameters, listing every problem with its path.
    """
    params: dict[str, Any] = {
        "num_requests": num_requests,
        "rate": rate,
        "arrival": arrival,
        "cv": cv,
        "input": input,
        "output": output,
        "seed": seed,
        "joint": joint,
        "shared_prefix_tokens": shared_prefix_tokens,
        "hash_ids": hash_ids,
        "hash_block_size": hash_block_size,
    }
    if concurrency is not None:
        params["concurrency"] = concurrency
    if think_time_s is not None:
        params["think_time_s"] = think_time_s
    if sessions is not None:
        params["sessions"] = sessions
    if deferrable is not None:
        params["deferrable"] = deferrable
    parsed, problems = _parse_params(params, base_dir)
    if problems:
        raise KavierInputError(_problems_text(problems), source=source or "synthetic workload")
    return _generate(parsed, base_dir, source)


def _parse_params(p: Mapping[str, Any], base_dir) -> tuple[dict, list[str]]:
    problems: list[str] = []
    out: dict[str, Any] = {}
    arrival = p.get("arrival", "poisson")
    if arrival not in ARRIVAL_KINDS:
        problems.append(f"$.arrival: {arrival!r} is not one of {', '.join(ARRIVAL_KINDS)}")
    out["arrival"] = arrival
    rate = p.get("rate")
    closed = arrival == "closed-loop"
    conc, think = p.get("concurrency"), p.get("think_time_s", 0.0)
    if think is None:
        think = 0.0
    if closed and conc is None:
        problems.append("$.concurrency: required for arrival 'closed-loop' (the number of clients)")
    elif conc is not None and (not is_int(conc) or conc < 1):
        problems.append(f"$.concurrency: {conc!r} must be an integer >= 1 (the number of clients)")
    if not is_num(think) or not np.isfinite(think) or think < 0:
        problems.append(f"$.think_time_s: {think!r} must be a number >= 0 (seconds)")
    if not closed and (conc is not None or p.get("think_time_s") is not None):
        key = "concurrency" if conc is not None else "think_time_s"
        problems.append(f"$.{key}: only for arrival 'closed-loop' (got arrival {arrival!r})")
    if closed and p.get("sessions") is not None:
        problems.append("$.sessions: not with arrival 'closed-loop' (each client sends the trace's next request)")
    out["closed_loop"] = (
        ClosedLoop(int(conc), float(think)) if closed and is_int(conc) and conc >= 1 and is_num(think) else None
    )
    if arrival not in _NO_RATE:
        if rate is None:
            problems.append(f"$.rate: required for arrival {arrival!r} (requests per second)")
        elif not is_num(rate) or rate <= 0:
            problems.append(f"$.rate: {rate!r} must be a number > 0 (requests per second)")
    out["rate"] = float(rate) if is_num(rate) else None
    cv = p.get("cv", 1.0)
    if cv is None:
        cv = 1.0
    if not is_num(cv) or cv <= 0:
        problems.append(f"$.cv: {cv!r} must be a number > 0")
    out["cv"] = float(cv) if is_num(cv) else 1.0
    seed = p.get("seed", 0)
    if seed is None:
        seed = 0
    if not is_int(seed) or seed < 0:
        problems.append(f"$.seed: {seed!r} must be an integer >= 0")
    out["seed"] = int(seed) if is_int(seed) and seed >= 0 else 0
    for role in ("input", "output"):
        spec, pr = LengthSpec.parse(p.get(role), f"$.{role}")
        problems += pr
        out[role] = spec
    sess = None
    if p.get("sessions") is not None:
        sess, pr = SessionSpec.parse(p["sessions"], "$.sessions")
        problems += pr
    out["sessions"] = sess
    n = p.get("num_requests")
    if n is None:
        if not (isinstance(p.get("sessions"), Mapping) and p["sessions"].get("num_sessions") is not None) and not (
            isinstance(p.get("sessions"), SessionSpec) and p["sessions"].num_sessions
        ):
            problems.append("$.num_requests: required (unless sessions.num_sessions is given)")
    elif not is_int(n) or n < 1:
        problems.append(f"$.num_requests: {n!r} must be an integer >= 1")
    out["num_requests"] = int(n) if is_int(n) else None
    problems += _size_problems(out, p)
    for key, lo in (("shared_prefix_tokens", 0), ("hash_block_size", 1)):
        v = p.get(key, 0 if key == "shared_prefix_tokens" else 512)
        if not is_int(v) or v < lo:
            problems.append(f"$.{key}: {v!r} must be an integer >= {lo}")
        out[key] = int(v) if is_int(v) else lo
    for key in ("hash_ids",):
        v = p.get(key, False)
        if not isinstance(v, bool):
            problems.append(f"$.{key}: {v!r} must be true or false")
        out[key] = bool(v)
    out["deferrable"] = None
    d = p.get("deferrable")
    if d is not None:
        share = d.get("share") if isinstance(d, Mapping) else None
        window = d.get("deadline_s") if isinstance(d, Mapping) else None
        if not (is_num(share) and 0 <= share <= 1):
            problems.append(f"$.deferrable.share: {share!r} must be a number in [0, 1] (the deferrable fraction)")
        elif not (is_num(window) and np.isfinite(window) and window >= 0):
            problems.append(f"$.deferrable.deadline_s: {window!r} must be a number >= 0 (seconds after arrival)")
        elif closed:
            problems.append("$.deferrable: not with arrival 'closed-loop' (deferral holds open-loop arrivals)")
        else:
            out["deferrable"] = (float(share), float(window))
    joint = p.get("joint")
    if joint is not None and not isinstance(joint, bool):
        problems.append(f"$.joint: {joint!r} must be true, false or null")
    ins, outs = out["input"], out["output"]
    same_file = (
        isinstance(ins, LengthSpec)
        and isinstance(outs, LengthSpec)
        and ins.dist == "histogram"
        and outs.dist == "histogram"
        and ins.file is not None
        and outs.file is not None
        and _same_file(ins.resolved_file(base_dir), outs.resolved_file(base_dir))
    )
    if joint is True and not same_file and not problems:
        problems.append("$.joint: joint sampling needs input and output to be histograms of the same file")
    out["joint"] = same_file if joint is None else bool(joint) and same_file
    # Histogram files must exist (report with their JSON path).
    for role in ("input", "output"):
        spec = out[role]
        if isinstance(spec, LengthSpec) and spec.file is not None:
            f = spec.resolved_file(base_dir)
            assert f is not None  # spec.file is set
            if not f.is_file():
                problems.append(f"$.{role}.file: {str(f)!r} does not exist")
            else:
                try:
                    spec.observed(role, base_dir)
                except KavierInputError as exc:
                    problems.append(f"$.{role}.file: {exc}")
    if sess is not None and sess.turns.file is not None:
        f = sess.turns.resolved_file(base_dir)
        assert f is not None  # sess.turns.file is set
        if not f.is_file():
            problems.append(f"$.sessions.turns.file: {str(f)!r} does not exist")
        elif sess.turns.column is None:
            problems.append("$.sessions.turns.column: required when turns come from a file")
        else:
            try:
                sess.turns.observed("turns", base_dir)
            except KavierInputError as exc:
                problems.append(f"$.sessions.turns.file: {exc}")
    return out, problems


def _size_problems(out: dict, p: Mapping[str, Any]) -> list[str]:
    """Sizes no machine could generate or simulate (``base/limits.py``), found before any allocation."""
    problems = []
    requests = limits.requests_limit()
    n = out["num_requests"]
    if n is not None and n > requests.value:
        problems.append(f"$.num_requests: {requests.above(n)}")
    sessions = p.get("sessions")
    num_sessions = sessions.get("num_sessions") if isinstance(sessions, Mapping) else None
    if is_int(num_sessions) and num_sessions > requests.value:
        problems.append(f"$.sessions.num_sessions: {requests.above(num_sessions)}")
    rate = out["rate"]
    if rate is not None and rate > limits.RATE_RPS.value:
        problems.append(f"$.rate: {limits.RATE_RPS.above(rate)}")
    if rate is not None and rate > 0 and n is not None and out["arrival"] not in _NO_RATE:
        span = n / rate
        if span > limits.DURATION_S.value:
            problems.append(
                f"$.rate: {rate:g} requests/s spreads {n:,} requests over {span:.3g} s, above the "
                f"limit of {limits.DURATION_S.text()} ({limits.DURATION_S.why})"
            )
    return problems


def _check_generated(n_in: np.ndarray, n_out: np.ndarray, source: str | None, accumulate: bool) -> None:
    """Lengths beyond any model's context (an unclipped heavy tail, a conversation that grows without
    end) are an error naming the field, not requests nobody could serve."""
    lim = limits.CONTEXT_TOKENS
    for role, arr in (("input", n_in), ("output", n_out)):
        if arr.size and int(arr.max()) > lim.value:
            how = (
                " (with the conversation so far, sessions.accumulate_context)" if accumulate and role == "input" else ""
            )
            raise KavierInputError(
                f"$.{role}: one request gets {int(arr.max()):,} tokens{how}, above the limit "
                f"of {lim.text()} ({lim.why}); give the distribution a smaller 'max'",
                source=source or "synthetic workload",
            )


def _problems_text(problems: list[str]) -> str:
    n = len(problems)
    return f"invalid synthetic workload description ({n} problem{'s' if n != 1 else ''}): " + "; ".join(problems)


def _same_file(a: Path | None, b: Path | None) -> bool:
    if a is None or b is None:
        return False
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return str(a) == str(b)


def _generate(p: dict, base_dir, source: str | None) -> Trace:
    ss = np.random.SeedSequence(p["seed"])
    rng_arr, rng_in, rng_out, rng_sess, rng_think = (np.random.default_rng(s) for s in ss.spawn(5))
    sess: SessionSpec | None = p["sessions"]
    arrival, rate, cv = p["arrival"], p["rate"], p["cv"]

    # ---- request skeleton: sessions, turns, arrival times (generation order)
    if sess is None:
        n = p["num_requests"]
        arrival_s = _gaps(arrival, rate, cv, n, rng_arr)
        owner = None
        turn_counts = None
    else:
        turn_counts = _draw_turns(sess, p["num_requests"], rng_sess, base_dir)
        n = int(turn_counts.sum())
        requests = limits.requests_limit()
        if n > requests.value:
            raise KavierInputError(
                f"$.sessions: {turn_counts.size:,} sessions give {n:,} requests, above the "
                f"limit of {requests.text()} ({requests.why}); give num_requests to cap them",
                source=source or "synthetic workload",
            )
        s_count = turn_counts.size
        s_rate = sess.rate if sess.rate is not None else (None if rate is None else rate / float(turn_counts.mean()))
        starts = _gaps(arrival, s_rate, cv, s_count, rng_arr)
        owner_sess = np.repeat(np.arange(s_count, dtype=np.int64), turn_counts)
        first = _segment_offsets(turn_counts)
        think = sess.think_time_s.sample(rng_think, n)
        think[first] = 0.0
        csum = np.cumsum(think, out=think)
        arrival_s = csum
        arrival_s -= np.repeat(csum[first], turn_counts)
        arrival_s += np.repeat(starts, turn_counts)
        del starts
        owner = owner_sess

    # ---- lengths
    ins: LengthSpec = p["input"]
    outs: LengthSpec = p["output"]
    if p["joint"]:
        obs_in = ins.observed("input", base_dir)
        obs_out = outs.observed("output", base_dir)
        if obs_in.size != obs_out.size:
            raise KavierInputError(
                "joint sampling needs the same number of rows for input and output",
                source=str(ins.resolved_file(base_dir)),
            )
        rows = rng_in.integers(0, obs_in.size, size=n)
        new_in = ins.clip(obs_in[rows])
        n_out = outs.clip(obs_out[rows])
        del rows
    else:
        new_in = ins.sample(rng_in, n, role="input", base_dir=base_dir)
        n_out = outs.sample(rng_out, n, role="output", base_dir=base_dir)

    accumulate = sess is not None and sess.accumulate_context
    if accumulate:
        assert turn_counts is not None  # accumulate implies sessions, whose turns were drawn above
        first = _segment_offsets(turn_counts)
        c = new_in + n_out
        csum = np.cumsum(c)
        prior = csum - c
        prior -= np.repeat(prior[first], turn_counts)
        n_in = new_in + prior
        del c, csum, prior
    else:
        n_in = new_in
    if p["shared_prefix_tokens"]:
        n_in = n_in + p["shared_prefix_tokens"]
    _check_generated(n_in, n_out, source, accumulate)

    # ---- prefix-block hashes (generation order)
    hashes = None
    if p["hash_ids"]:
        stream_owner = owner if accumulate else np.arange(n, dtype=np.int64)
        assert stream_owner is not None  # accumulate implies sessions, which set owner
        hashes = _block_hashes(n_in, stream_owner, p["shared_prefix_tokens"], p["hash_block_size"])

    # ---- sort by arrival (stable: ties keep generation order)
    session_id = None
    if sess is not None:
        order = np.argsort(arrival_s, kind="stable")
        arrival_s = arrival_s[order]
        n_in = n_in[order]
        n_out = n_out[order]
        # Session starts are non-decreasing in the session index and each session's first
        # turn arrives at its start, so after the stable sort the indices already appear
        # for the first time in increasing order: they are the dense ids.
        assert owner is not None  # set with the sessions above
        session_id = owner[order]
        if hashes is not None:
            hashes = [hashes[i] for i in order.tolist()]
    if arrival_s.size:
        arrival_s -= arrival_s[0]
    deadline = None
    if p.get("deferrable") is not None:
        share, window = p["deferrable"]
        rng_defer = np.random.default_rng(ss.spawn(1)[0])  # the sixth stream of the seed: the others unchanged
        deadline = np.where(rng_defer.random(n) < share, arrival_s + window, np.nan)

    desc = source or (
        f"synthetic: {n} requests, {arrival} arrivals"
        + (
            ""
            if arrival == "batch"
            else f", {p['closed_loop'].concurrency} clients"
            if arrival == "closed-loop"
            else f" at {rate:g}/s"
        )
        + f", seed {p['seed']}"
    )
    return Trace(
        arrival_s=np.ascontiguousarray(arrival_s, dtype=np.float64),
        num_input_tokens=np.ascontiguousarray(n_in, dtype=np.int64),
        num_output_tokens=np.ascontiguousarray(n_out, dtype=np.int64),
        session_id=session_id,
        hash_ids=hashes,
        hash_block_size=p["hash_block_size"],
        source=desc,
        format="synthetic",
        closed_loop=p.get("closed_loop"),
        deadline_s=deadline,
    )


def _draw_turns(sess: SessionSpec, num_requests: int | None, rng: np.random.Generator, base_dir) -> np.ndarray:
    if sess.num_sessions is not None:
        t = sess.turns.sample(rng, sess.num_sessions, role="turns", base_dir=base_dir)
        if num_requests is not None and t.sum() > num_requests:
            cs = np.cumsum(t)
            k = int(np.searchsorted(cs, num_requests))  # first session reaching the cap
            t = t[: k + 1].copy()
            t[k] -= int(cs[k] - num_requests)
        return t
    # validated: num_requests is required when sessions.num_sessions is not given
    assert num_requests is not None
    chunks: list[np.ndarray] = []
    total = 0
    est = sess.turns.mean_estimate() or 4.0
    while total < num_requests:
        size = max(16, int((num_requests - total) / max(est, 1.0) * 1.1) + 16)
        c = sess.turns.sample(rng, size, role="turns", base_dir=base_dir)
        chunks.append(c)
        total += int(c.sum())
    t = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
    cs = np.cumsum(t)
    k = int(np.searchsorted(cs, num_requests))
    t = t[: k + 1].copy()
    t[k] -= int(cs[k] - num_requests)
    return t


def _block_hashes(n_in: np.ndarray, owner: np.ndarray, shared: int, block: int) -> list[list[int]]:
    """Mooncake-style block hash ids (see the module documentation)."""
    n = n_in.size
    g = shared // block  # full blocks of the shared prefix, ids 0..g-1
    full = n_in // block
    partial = (n_in % block) != 0
    own_full = np.maximum(full - g, 0)  # owner-specific full blocks of each request
    n_owner = int(owner.max()) + 1 if n else 0
    per_owner = np.zeros(n_owner, dtype=np.int64)
    np.maximum.at(per_owner, owner, own_full)
    owner_base = np.zeros(n_owner, dtype=np.int64)
    np.cumsum(per_owner[:-1], out=owner_base[1:])
    partial_base = g + int(per_owner.sum())
    counts = full + partial
    total = int(counts.sum())
    starts = _segment_offsets(counts)
    j = np.arange(total, dtype=np.int64) - np.repeat(starts, counts)
    r_full = np.repeat(full, counts)
    ids = np.where(j < g, j, g + np.repeat(owner_base[owner], counts) + (j - g))
    last_partial = j >= r_full
    ids[last_partial] = partial_base + np.repeat(np.arange(n, dtype=np.int64), counts)[last_partial]
    flat = ids.tolist()
    ends = (starts + counts).tolist()
    return [flat[a:b] for a, b in zip(starts.tolist(), ends, strict=True)]


# --------------------------------------------------------------------------- spec files


def schema_path() -> Path:
    """The packaged JSON Schema for synthetic workload specs."""
    return schema_file(_SCHEMA_NAME)


def _validator():
    return schema_validator(_SCHEMA_NAME)


def _read_spec_file(path: Path) -> Any:
    if not path.exists():
        raise KavierInputError(
            "file not found", source=str(path), expected="a JSON or YAML synthetic workload description"
        )
    if path.is_dir():
        raise KavierInputError("is a directory, not a workload description", source=str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KavierInputError(f"cannot read the file: {exc}", source=str(path)) from None
    return parse_document(text, "json" if path.suffix.lower() == ".json" else "yaml", str(path))


def validate_synthetic_spec(spec: Any) -> list[str]:
    """Every schema violation of ``spec``, as ``"<json path>: <message>"`` strings."""
    errors = sorted(_validator().iter_errors(spec), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    return [f"{e.json_path}: {_schema_message(e)}" for e in errors]


def _schema_message(err) -> str:
    """jsonschema's message, or the size limit's own wording (``base/limits.py``)."""
    name = err.schema.get("x-kavier-limit") if isinstance(err.schema, dict) else None
    if err.validator == "maximum" and name:
        return limits.named(name).above(err.instance)
    return err.message


def load_synthetic_spec(path_or_dict: str | os.PathLike | Mapping, base_dir: str | os.PathLike | None = None) -> Trace:
    """Generate the trace described by a JSON/YAML file or an already-parsed dict.

    The description is validated against ``schemas/synthetic_workload.schema.json``
    and then checked for consistency; every problem is reported (with its
    JSON path) in one :class:`KavierInputError`.  Relative histogram files
    are resolved against the description file's directory (or ``base_dir``).
    """
    if isinstance(path_or_dict, Mapping):
        spec = dict(path_or_dict)
        name = "synthetic workload"
        bdir = Path(base_dir) if base_dir is not None else None
    else:
        p = Path(path_or_dict)
        spec = _read_spec_file(p)
        name = str(p)
        bdir = Path(base_dir) if base_dir is not None else p.resolve().parent
    problems = validate_synthetic_spec(spec)
    if problems:
        raise KavierInputError(_problems_text(problems), source=name)
    params = {k: v for k, v in spec.items() if k not in ("$schema", "name", "description", "kind")}
    parsed, problems = _parse_params(params, bdir)
    if problems:
        raise KavierInputError(_problems_text(problems), source=name)
    return _generate(parsed, bdir, name if not isinstance(path_or_dict, Mapping) else None)
