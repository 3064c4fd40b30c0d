"""Synthetic request traces: arrival processes, length distributions, sessions.

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
* ``batch``: an offline batch, every request at 0 (``rate`` is ignored).

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

``shared_prefix_tokens`` prepends a common prefix (a system prompt) to every
prompt.  ``hash_ids=True`` attaches Mooncake-style prefix-block hashes (one
per ``hash_block_size`` tokens): full blocks of the shared prefix share ids
across all requests, full blocks of a session's accumulated conversation
share ids across its turns, and every partially filled last block is unique.
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.base.validation import schema_file, schema_validator
from kavier_opendc.workload.trace import Trace, load_trace, read_length_column

ARRIVAL_KINDS: tuple[str, ...] = ("poisson", "gamma", "constant", "batch")
LENGTH_DISTS: tuple[str, ...] = ("constant", "uniform", "lognormal", "zipf", "histogram")
THINK_DISTS: tuple[str, ...] = ("constant", "exponential", "uniform", "lognormal")

_SCHEMA_NAME = "synthetic_workload.schema.json"
_ZIPF_TABLE_LIMIT = 20_000_000  # largest finite zipf support sampled by table look-up


def _fmt_path(base: str, key: str | int) -> str:
    return f"{base}[{key}]" if isinstance(key, int) else f"{base}.{key}"


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_)) \
        and math.isfinite(float(x))


# --------------------------------------------------------------------------- length specs

_LENGTH_KEYS = {
    "constant": {"value"},
    "uniform": {"low", "high"},
    "lognormal": {"mean", "median", "sigma"},
    "zipf": {"alpha"},
    "histogram": {"file", "column", "bins", "values", "weights"},
}
_COMMON_LENGTH_KEYS = {"dist", "min", "max"}


@dataclass(frozen=True)
class LengthSpec:
    """A distribution of positive integer lengths (tokens or turns)."""

    dist: str = "constant"
    value: int | None = None
    low: int | None = None
    high: int | None = None
    mean: float | None = None
    median: float | None = None
    sigma: float | None = None
    alpha: float | None = None
    min: int = 1
    max: int | None = None
    file: str | None = None
    column: str | None = None
    bins: tuple[float, ...] | None = None
    values: tuple[int, ...] | None = None
    weights: tuple[float, ...] | None = None

    # -- constructors
    @classmethod
    def constant(cls, value: int) -> "LengthSpec":
        return cls("constant", value=value)

    @classmethod
    def uniform(cls, low: int, high: int) -> "LengthSpec":
        return cls("uniform", low=low, high=high)

    @classmethod
    def lognormal(cls, *, sigma: float, mean: float | None = None, median: float | None = None,
                  min: int = 1, max: int | None = None) -> "LengthSpec":  # noqa: A002
        return cls("lognormal", mean=mean, median=median, sigma=sigma, min=min, max=max)

    @classmethod
    def zipf(cls, alpha: float, min: int = 1, max: int | None = None) -> "LengthSpec":  # noqa: A002
        return cls("zipf", alpha=alpha, min=min, max=max)

    @classmethod
    def histogram(cls, *, file: str | os.PathLike | None = None, column: str | None = None,
                  bins=None, values=None, weights=None, min: int = 1,  # noqa: A002
                  max: int | None = None) -> "LengthSpec":  # noqa: A002
        return cls("histogram", file=None if file is None else str(file), column=column,
                   bins=None if bins is None else tuple(bins),
                   values=None if values is None else tuple(values),
                   weights=None if weights is None else tuple(weights), min=min, max=max)

    @classmethod
    def coerce(cls, obj: Any, path: str = "$") -> "LengthSpec":
        """A LengthSpec from a LengthSpec, an integer (constant) or a dict; raises on problems."""
        spec, problems = cls._parse(obj, path)
        if problems:
            raise KavierInputError("invalid length distribution: " + "; ".join(problems))
        return spec

    @classmethod
    def _parse(cls, obj: Any, path: str) -> tuple["LengthSpec | None", list[str]]:
        if isinstance(obj, LengthSpec):
            return obj, obj.problems(path)
        if _is_int(obj):
            spec = cls.constant(int(obj))
            return spec, spec.problems(path)
        if not isinstance(obj, Mapping):
            return None, [f"{path}: {obj!r} is not a length distribution; expected a positive integer "
                          f"or an object with 'dist' one of {', '.join(LENGTH_DISTS)}"]
        dist = obj.get("dist", "constant" if "value" in obj else None)
        if dist not in LENGTH_DISTS:
            return None, [f"{_fmt_path(path, 'dist')}: {dist!r} is not a length distribution; expected one "
                          f"of {', '.join(LENGTH_DISTS)}"]
        allowed = _COMMON_LENGTH_KEYS | _LENGTH_KEYS[dist]
        problems = [f"{_fmt_path(path, k)}: not used by dist {dist!r} (allowed keys: "
                    f"{', '.join(sorted(allowed))})" for k in obj if k not in allowed]
        kw: dict[str, Any] = {}
        for k in allowed - {"dist"}:
            if k in obj and obj[k] is not None:
                v = obj[k]
                if k in ("bins", "values", "weights"):
                    if not isinstance(v, (list, tuple, np.ndarray)):
                        problems.append(f"{_fmt_path(path, k)}: {v!r} is not a list")
                        continue
                    v = tuple(v)
                elif k == "file":
                    v = str(v)
                kw[k] = v
        spec = cls(dist=dist, **kw)
        return spec, problems + spec.problems(path)

    def problems(self, path: str = "$") -> list[str]:
        """Everything wrong with this spec, each message starting with its JSON path."""
        p = functools.partial(_fmt_path, path)
        out: list[str] = []
        if self.dist not in LENGTH_DISTS:
            return [f"{p('dist')}: {self.dist!r} is not one of {', '.join(LENGTH_DISTS)}"]
        for k in (f.name for f in fields(self)):
            if k in ("dist", "min", "max") or getattr(self, k) is None:
                continue
            if k not in _LENGTH_KEYS[self.dist]:
                out.append(f"{p(k)}: not used by dist {self.dist!r}")
        if not _is_int(self.min) or self.min < 1:
            out.append(f"{p('min')}: {self.min!r} must be an integer >= 1")
        if self.max is not None and (not _is_int(self.max) or self.max < 1):
            out.append(f"{p('max')}: {self.max!r} must be an integer >= 1")
        elif self.max is not None and _is_int(self.min) and self.max < self.min:
            out.append(f"{p('max')}: {self.max} is smaller than min {self.min}")
        if self.dist == "constant":
            if self.value is None:
                out.append(f"{path}: 'value' is required for dist 'constant'")
            elif not _is_int(self.value) or self.value < 1:
                out.append(f"{p('value')}: {self.value!r} must be an integer >= 1")
        elif self.dist == "uniform":
            for k in ("low", "high"):
                v = getattr(self, k)
                if v is None:
                    out.append(f"{path}: '{k}' is required for dist 'uniform'")
                elif not _is_int(v) or v < 1:
                    out.append(f"{p(k)}: {v!r} must be an integer >= 1")
            if _is_int(self.low) and _is_int(self.high) and self.low > self.high:
                out.append(f"{p('high')}: {self.high} is smaller than low {self.low}")
        elif self.dist == "lognormal":
            if (self.mean is None) == (self.median is None):
                out.append(f"{path}: give exactly one of 'mean' and 'median' for dist 'lognormal'")
            for k in ("mean", "median"):
                v = getattr(self, k)
                if v is not None and (not _is_num(v) or v <= 0):
                    out.append(f"{p(k)}: {v!r} must be a number > 0")
            if self.sigma is None:
                out.append(f"{path}: 'sigma' is required for dist 'lognormal'")
            elif not _is_num(self.sigma) or self.sigma < 0:
                out.append(f"{p('sigma')}: {self.sigma!r} must be a number >= 0")
        elif self.dist == "zipf":
            if self.alpha is None:
                out.append(f"{path}: 'alpha' is required for dist 'zipf'")
            elif not _is_num(self.alpha) or self.alpha <= 0:
                out.append(f"{p('alpha')}: {self.alpha!r} must be a number > 0")
            elif self.max is None and self.alpha <= 1:
                out.append(f"{p('alpha')}: {self.alpha} must be > 1 when 'max' is not given "
                           "(otherwise the distribution cannot be normalised)")
        elif self.dist == "histogram":
            given = [k for k in ("file", "bins", "values") if getattr(self, k) is not None]
            if len(given) != 1:
                out.append(f"{path}: give exactly one of 'file', 'bins' and 'values' for dist 'histogram'")
            if self.column is not None and self.file is None:
                out.append(f"{p('column')}: only used together with 'file'")
            if self.weights is not None and self.file is not None:
                out.append(f"{p('weights')}: not used together with 'file'")
            w = self.weights
            if w is not None:
                bad = [i for i, x in enumerate(w) if not _is_num(x) or x < 0]
                if bad:
                    out.append(f"{_fmt_path(p('weights'), bad[0])}: {w[bad[0]]!r} must be a number >= 0")
                elif sum(float(x) for x in w) <= 0:
                    out.append(f"{p('weights')}: must not all be 0")
            if self.bins is not None:
                b = self.bins
                bad = [i for i, x in enumerate(b) if not _is_int(x) or x < 1]
                if len(b) < 2:
                    out.append(f"{p('bins')}: needs at least 2 edges")
                elif bad:
                    out.append(f"{_fmt_path(p('bins'), bad[0])}: {b[bad[0]]!r} must be an integer >= 1")
                elif any(b[i + 1] <= b[i] for i in range(len(b) - 1)):
                    i = next(i for i in range(len(b) - 1) if b[i + 1] <= b[i])
                    out.append(f"{_fmt_path(p('bins'), i + 1)}: bin edges must increase strictly "
                               f"({b[i + 1]} after {b[i]})")
                if w is None:
                    out.append(f"{path}: 'weights' (one per bin) are required with 'bins'")
                elif len(w) != len(b) - 1:
                    out.append(f"{p('weights')}: {len(w)} weights for {len(b) - 1} bins; expected one per bin")
            if self.values is not None:
                v = self.values
                bad = [i for i, x in enumerate(v) if not _is_int(x) or x < 1]
                if not v:
                    out.append(f"{p('values')}: must not be empty")
                elif bad:
                    out.append(f"{_fmt_path(p('values'), bad[0])}: {v[bad[0]]!r} must be an integer >= 1")
                if w is not None and len(w) != len(v):
                    out.append(f"{p('weights')}: {len(w)} weights for {len(v)} values; expected one per value")
        return out

    # -- sampling
    def resolved_file(self, base_dir: str | os.PathLike | None) -> Path | None:
        if self.file is None:
            return None
        f = Path(self.file).expanduser()
        if not f.is_absolute() and base_dir is not None:
            f = Path(base_dir) / f
        return f

    def observed(self, role: str, base_dir: str | os.PathLike | None = None) -> np.ndarray:
        """The observed lengths of a file histogram (int64, read once and cached)."""
        f = self.resolved_file(base_dir)
        if f is None:
            raise ValueError("not a file histogram")
        try:
            st = f.stat()
            key = (str(f.resolve()), st.st_mtime_ns, st.st_size)
        except OSError:
            key = (str(f), 0, 0)
        return _observed_cached(key, str(f), self.column, role)

    def sample(self, rng: np.random.Generator, size: int, *, role: str = "input",
               base_dir: str | os.PathLike | None = None) -> np.ndarray:
        """``size`` int64 lengths, clipped to ``[min, max]``."""
        d = self.dist
        if d == "constant":
            out = np.full(size, int(self.value), dtype=np.int64)
        elif d == "uniform":
            out = rng.integers(int(self.low), int(self.high), size=size, endpoint=True, dtype=np.int64)
        elif d == "lognormal":
            sigma = float(self.sigma)
            mu = math.log(self.median) if self.median is not None else math.log(self.mean) - sigma * sigma / 2
            x = rng.lognormal(mu, sigma, size=size)
            np.rint(x, out=x)
            hi = float(self.max) if self.max is not None else 2.0**53
            np.clip(x, float(self.min), hi, out=x)
            out = x.astype(np.int64)
        elif d == "zipf":
            out = self._sample_zipf(rng, size)
        else:
            out = self._sample_histogram(rng, size, role, base_dir)
        return self._clip(out)

    def _clip(self, out: np.ndarray) -> np.ndarray:
        lo = int(self.min)
        hi = None if self.max is None else int(self.max)
        if (out < lo).any() or (hi is not None and (out > hi).any()):
            np.clip(out, lo, hi, out=out)
        return out

    def _sample_zipf(self, rng: np.random.Generator, size: int) -> np.ndarray:
        a = float(self.alpha)
        lo = int(self.min)
        if self.max is not None and int(self.max) - lo + 1 <= _ZIPF_TABLE_LIMIT:
            k = np.arange(1, int(self.max) - lo + 2, dtype=np.float64)
            cdf = np.cumsum(k ** -a)
            cdf /= cdf[-1]
            idx = np.searchsorted(cdf, rng.random(size), side="right")
            np.minimum(idx, k.size - 1, out=idx)
            return idx.astype(np.int64) + lo
        x = rng.zipf(a, size=size).astype(np.int64)  # >= 1
        x += lo - 1
        return x

    def _sample_histogram(self, rng: np.random.Generator, size: int, role: str,
                          base_dir: str | os.PathLike | None) -> np.ndarray:
        if self.file is not None:
            obs = self.observed(role, base_dir)
            return obs[rng.integers(0, obs.size, size=size)]
        if self.values is not None:
            vals = np.asarray(self.values, dtype=np.int64)
            if self.weights is None:
                return vals[rng.integers(0, vals.size, size=size)]
            p = np.asarray(self.weights, dtype=np.float64)
            return vals[_pick(rng, p, size)]
        edges = np.asarray(self.bins, dtype=np.int64)
        b = _pick(rng, np.asarray(self.weights, dtype=np.float64), size)
        return rng.integers(edges[b], edges[b + 1], dtype=np.int64)

    def mean_estimate(self) -> float | None:
        """Analytic mean where cheap (used for defaults only)."""
        if self.dist == "constant":
            return float(self.value)
        if self.dist == "uniform":
            return (self.low + self.high) / 2
        return None


def _pick(rng: np.random.Generator, weights: np.ndarray, size: int) -> np.ndarray:
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    idx = np.searchsorted(cdf, rng.random(size), side="right")
    np.minimum(idx, weights.size - 1, out=idx)
    return idx


@functools.lru_cache(maxsize=16)
def _observed_cached(key: tuple, path: str, column: str | None, role: str) -> np.ndarray:
    if column is not None:
        arr = read_length_column(path, column)
    else:
        if role not in ("input", "output"):
            raise KavierInputError(f"a histogram file used for {role} needs 'column' naming the column "
                                   "to sample", source=path)
        tr = load_trace(path)
        arr = tr.num_input_tokens if role == "input" else tr.num_output_tokens
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    arr.setflags(write=False)
    return arr


# --------------------------------------------------------------------------- think time


_THINK_KEYS = {
    "constant": {"value"},
    "exponential": {"mean"},
    "uniform": {"low", "high"},
    "lognormal": {"mean", "median", "sigma"},
}


@dataclass(frozen=True)
class ThinkTimeSpec:
    """A distribution of non-negative durations in seconds."""

    dist: str = "constant"
    value: float | None = None
    mean: float | None = None
    low: float | None = None
    high: float | None = None
    median: float | None = None
    sigma: float | None = None

    @classmethod
    def _parse(cls, obj: Any, path: str) -> tuple["ThinkTimeSpec | None", list[str]]:
        if isinstance(obj, ThinkTimeSpec):
            return obj, obj.problems(path)
        if _is_num(obj):
            spec = cls("constant", value=float(obj))
            return spec, spec.problems(path)
        if not isinstance(obj, Mapping):
            return None, [f"{path}: {obj!r} is not a duration; expected seconds (a number >= 0) or an "
                          f"object with 'dist' one of {', '.join(THINK_DISTS)}"]
        dist = obj.get("dist", "constant" if "value" in obj else None)
        if dist not in THINK_DISTS:
            return None, [f"{_fmt_path(path, 'dist')}: {dist!r} is not one of {', '.join(THINK_DISTS)}"]
        allowed = {"dist"} | _THINK_KEYS[dist]
        problems = [f"{_fmt_path(path, k)}: not used by dist {dist!r}" for k in obj if k not in allowed]
        spec = cls(dist=dist, **{k: obj[k] for k in _THINK_KEYS[dist] if obj.get(k) is not None})
        return spec, problems + spec.problems(path)

    def problems(self, path: str) -> list[str]:
        p = functools.partial(_fmt_path, path)
        out: list[str] = []
        need = {"constant": ("value",), "exponential": ("mean",), "uniform": ("low", "high"),
                "lognormal": ("sigma",)}.get(self.dist)
        if need is None:
            return [f"{p('dist')}: {self.dist!r} is not one of {', '.join(THINK_DISTS)}"]
        for k in need:
            v = getattr(self, k)
            if v is None:
                out.append(f"{path}: '{k}' is required for dist {self.dist!r}")
            elif not _is_num(v) or v < 0:
                out.append(f"{p(k)}: {v!r} must be a number >= 0")
        if self.dist == "uniform" and _is_num(self.low) and _is_num(self.high) and self.low > self.high:
            out.append(f"{p('high')}: {self.high} is smaller than low {self.low}")
        if self.dist == "lognormal":
            if (self.mean is None) == (self.median is None):
                out.append(f"{path}: give exactly one of 'mean' and 'median' for dist 'lognormal'")
            for k in ("mean", "median"):
                v = getattr(self, k)
                if v is not None and (not _is_num(v) or v <= 0):
                    out.append(f"{p(k)}: {v!r} must be a number > 0")
        return out

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        if self.dist == "constant":
            return np.full(size, float(self.value))
        if self.dist == "exponential":
            return rng.exponential(float(self.mean), size=size) if self.mean > 0 else np.zeros(size)
        if self.dist == "uniform":
            return rng.uniform(float(self.low), float(self.high), size=size)
        sigma = float(self.sigma)
        mu = math.log(self.median) if self.median is not None else math.log(self.mean) - sigma * sigma / 2
        return rng.lognormal(mu, sigma, size=size)


@dataclass(frozen=True)
class SessionSpec:
    """Multi-turn sessions (see the module documentation)."""

    turns: LengthSpec
    think_time_s: ThinkTimeSpec
    num_sessions: int | None = None
    rate: float | None = None
    accumulate_context: bool = False

    @classmethod
    def _parse(cls, obj: Any, path: str) -> tuple["SessionSpec | None", list[str]]:
        if isinstance(obj, SessionSpec):
            return obj, []
        if not isinstance(obj, Mapping):
            return None, [f"{path}: {obj!r} is not an object; expected {{'turns': ..., 'think_time_s': ...}}"]
        allowed = {"turns", "think_time_s", "num_sessions", "rate", "accumulate_context"}
        problems = [f"{_fmt_path(path, k)}: unknown key (allowed: {', '.join(sorted(allowed))})"
                    for k in obj if k not in allowed]
        turns = think = None
        if "turns" not in obj:
            problems.append(f"{path}: 'turns' is required")
        else:
            turns, pr = LengthSpec._parse(obj["turns"], _fmt_path(path, "turns"))
            problems += pr
        if "think_time_s" not in obj:
            problems.append(f"{path}: 'think_time_s' is required")
        else:
            think, pr = ThinkTimeSpec._parse(obj["think_time_s"], _fmt_path(path, "think_time_s"))
            problems += pr
        ns = obj.get("num_sessions")
        if ns is not None and (not _is_int(ns) or ns < 1):
            problems.append(f"{_fmt_path(path, 'num_sessions')}: {ns!r} must be an integer >= 1")
        rate = obj.get("rate")
        if rate is not None and (not _is_num(rate) or rate <= 0):
            problems.append(f"{_fmt_path(path, 'rate')}: {rate!r} must be a number > 0 (sessions per second)")
        acc = obj.get("accumulate_context", False)
        if not isinstance(acc, bool):
            problems.append(f"{_fmt_path(path, 'accumulate_context')}: {acc!r} must be true or false")
        if problems or turns is None or think is None:
            return None, problems
        return cls(turns=turns, think_time_s=think, num_sessions=None if ns is None else int(ns),
                   rate=None if rate is None else float(rate), accumulate_context=acc), []


# --------------------------------------------------------------------------- generation


def _gaps(kind: str, rate: float | None, cv: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """Arrival times of ``n`` events, the first at 0."""
    if n == 0:
        return np.zeros(0)
    if kind == "batch":
        return np.zeros(n)
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
    input: LengthSpec | int | Mapping = LengthSpec.constant(512),  # noqa: A002 - public name
    output: LengthSpec | int | Mapping = LengthSpec.constant(128),
    seed: int = 0,
    sessions: Mapping | SessionSpec | None = None,
    *,
    joint: bool | None = None,
    shared_prefix_tokens: int = 0,
    hash_ids: bool = False,
    hash_block_size: int = 512,
    base_dir: str | os.PathLike | None = None,
    source: str | None = None,
) -> Trace:
    """Generate a synthetic trace (see the module documentation for every parameter).

    ``base_dir`` resolves relative histogram ``file`` paths (default: the
    current directory).  Raises :class:`KavierInputError` for invalid
    parameters, listing every problem with its path.
    """
    params = {"num_requests": num_requests, "rate": rate, "arrival": arrival, "cv": cv, "input": input,
              "output": output, "seed": seed, "joint": joint, "shared_prefix_tokens": shared_prefix_tokens,
              "hash_ids": hash_ids, "hash_block_size": hash_block_size}
    if sessions is not None:
        params["sessions"] = sessions
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
    if arrival != "batch":
        if rate is None:
            problems.append(f"$.rate: required for arrival {arrival!r} (requests per second)")
        elif not _is_num(rate) or rate <= 0:
            problems.append(f"$.rate: {rate!r} must be a number > 0 (requests per second)")
    out["rate"] = float(rate) if _is_num(rate) else None
    cv = p.get("cv", 1.0)
    if cv is None:
        cv = 1.0
    if not _is_num(cv) or cv <= 0:
        problems.append(f"$.cv: {cv!r} must be a number > 0")
    out["cv"] = float(cv) if _is_num(cv) else 1.0
    seed = p.get("seed", 0)
    if seed is None:
        seed = 0
    if not _is_int(seed) or seed < 0:
        problems.append(f"$.seed: {seed!r} must be an integer >= 0")
    out["seed"] = int(seed) if _is_int(seed) and seed >= 0 else 0
    for role in ("input", "output"):
        spec, pr = LengthSpec._parse(p.get(role), f"$.{role}")
        problems += pr
        out[role] = spec
    sess = None
    if p.get("sessions") is not None:
        sess, pr = SessionSpec._parse(p["sessions"], "$.sessions")
        problems += pr
    out["sessions"] = sess
    n = p.get("num_requests")
    if n is None:
        if not (isinstance(p.get("sessions"), Mapping) and p["sessions"].get("num_sessions") is not None) \
                and not (isinstance(p.get("sessions"), SessionSpec) and p["sessions"].num_sessions):
            problems.append("$.num_requests: required (unless sessions.num_sessions is given)")
    elif not _is_int(n) or n < 1:
        problems.append(f"$.num_requests: {n!r} must be an integer >= 1")
    out["num_requests"] = int(n) if _is_int(n) else None
    for key, lo in (("shared_prefix_tokens", 0), ("hash_block_size", 1)):
        v = p.get(key, 0 if key == "shared_prefix_tokens" else 512)
        if not _is_int(v) or v < lo:
            problems.append(f"$.{key}: {v!r} must be an integer >= {lo}")
        out[key] = int(v) if _is_int(v) else lo
    for key in ("hash_ids",):
        v = p.get(key, False)
        if not isinstance(v, bool):
            problems.append(f"$.{key}: {v!r} must be true or false")
        out[key] = bool(v)
    joint = p.get("joint")
    if joint is not None and not isinstance(joint, bool):
        problems.append(f"$.joint: {joint!r} must be true, false or null")
    ins, outs = out["input"], out["output"]
    same_file = (isinstance(ins, LengthSpec) and isinstance(outs, LengthSpec) and ins.dist == "histogram"
                 and outs.dist == "histogram" and ins.file is not None and outs.file is not None
                 and _same_file(ins.resolved_file(base_dir), outs.resolved_file(base_dir)))
    if joint is True and not same_file and not problems:
        problems.append("$.joint: joint sampling needs input and output to be histograms of the same file")
    out["joint"] = same_file if joint is None else bool(joint) and same_file
    # Histogram files must exist (report with their JSON path).
    for role in ("input", "output"):
        spec = out[role]
        if isinstance(spec, LengthSpec) and spec.file is not None:
            f = spec.resolved_file(base_dir)
            if not f.is_file():
                problems.append(f"$.{role}.file: {str(f)!r} does not exist")
            else:
                try:
                    spec.observed(role, base_dir)
                except KavierInputError as exc:
                    problems.append(f"$.{role}.file: {exc}")
    if sess is not None and sess.turns.file is not None:
        f = sess.turns.resolved_file(base_dir)
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


def _problems_text(problems: list[str]) -> str:
    n = len(problems)
    return (f"invalid synthetic workload description ({n} problem{'s' if n != 1 else ''}): "
            + "; ".join(problems))


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
        s_count = turn_counts.size
        s_rate = sess.rate if sess.rate is not None else (None if rate is None else
                                                          rate / float(turn_counts.mean()))
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
            raise KavierInputError("joint sampling needs the same number of rows for input and output",
                                   source=str(ins.resolved_file(base_dir)))
        rows = rng_in.integers(0, obs_in.size, size=n)
        new_in = ins._clip(obs_in[rows])
        n_out = outs._clip(obs_out[rows])
        del rows
    else:
        new_in = ins.sample(rng_in, n, role="input", base_dir=base_dir)
        n_out = outs.sample(rng_out, n, role="output", base_dir=base_dir)

    accumulate = sess is not None and sess.accumulate_context
    if accumulate:
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

    # ---- prefix-block hashes (generation order)
    hashes = None
    if p["hash_ids"]:
        stream_owner = owner if accumulate else np.arange(n, dtype=np.int64)
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
        session_id = owner[order]
        if hashes is not None:
            hashes = [hashes[i] for i in order.tolist()]
    if arrival_s.size:
        arrival_s -= arrival_s[0]

    desc = source or (f"synthetic: {n} requests, {arrival} arrivals"
                      + ("" if arrival == "batch" else f" at {rate:g}/s") + f", seed {p['seed']}")
    return Trace(arrival_s=np.ascontiguousarray(arrival_s, dtype=np.float64),
                 num_input_tokens=np.ascontiguousarray(n_in, dtype=np.int64),
                 num_output_tokens=np.ascontiguousarray(n_out, dtype=np.int64),
                 session_id=session_id, hash_ids=hashes, hash_block_size=p["hash_block_size"],
                 source=desc, format="synthetic")


def _draw_turns(sess: SessionSpec, num_requests: int | None, rng: np.random.Generator,
                base_dir) -> np.ndarray:
    if sess.num_sessions is not None:
        t = sess.turns.sample(rng, sess.num_sessions, role="turns", base_dir=base_dir)
        if num_requests is not None and t.sum() > num_requests:
            cs = np.cumsum(t)
            k = int(np.searchsorted(cs, num_requests))  # first session reaching the cap
            t = t[: k + 1].copy()
            t[k] -= int(cs[k] - num_requests)
        return t
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
    g = shared // block                       # full blocks of the shared prefix, ids 0..g-1
    full = n_in // block
    partial = (n_in % block) != 0
    own_full = np.maximum(full - g, 0)        # owner-specific full blocks of each request
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
    return [flat[a:b] for a, b in zip(starts.tolist(), ends)]


# --------------------------------------------------------------------------- spec files


def schema_path() -> Path:
    """The packaged JSON Schema for synthetic workload specs."""
    return schema_file(_SCHEMA_NAME)


def _validator():
    return schema_validator(_SCHEMA_NAME)


def _read_spec_file(path: Path) -> Any:
    if not path.exists():
        raise KavierInputError("file not found", source=str(path),
                               expected="a JSON or YAML synthetic workload description")
    if path.is_dir():
        raise KavierInputError("is a directory, not a workload description", source=str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KavierInputError(f"cannot read the file: {exc}", source=str(path)) from None
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise KavierInputError(f"invalid JSON: {exc.msg}", source=str(path),
                                   location=f"line {exc.lineno}, column {exc.colno}") from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        loc = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise KavierInputError(f"invalid YAML: {problem}", source=str(path), location=loc) from None


def validate_synthetic_spec(spec: Any) -> list[str]:
    """Every schema violation of ``spec``, as ``"<json path>: <message>"`` strings."""
    errors = sorted(_validator().iter_errors(spec), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    return [f"{e.json_path}: {e.message}" for e in errors]


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
