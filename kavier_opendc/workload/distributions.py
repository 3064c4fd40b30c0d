"""Length, think-time and session distributions of synthetic workloads (``input``, ``output``, ``sessions``).

Each spec is a small frozen dataclass parsed from a plain value or a mapping
(``from_value`` reports every problem with its path) and drawn with a seeded
:class:`numpy.random.Generator`. What the parameters mean is documented in
``synthetic.py``, which turns them into a trace.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping, TypeGuard

import numpy as np

from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.workload.trace import load_trace, read_length_column

LENGTH_DISTS: tuple[str, ...] = ("constant", "uniform", "lognormal", "zipf", "histogram")
THINK_DISTS: tuple[str, ...] = ("constant", "exponential", "uniform", "lognormal")

_ZIPF_TABLE_LIMIT = 20_000_000  # largest finite zipf support sampled by table look-up


def spec_path(base: str, key: str | int) -> str:
    """The path of ``key`` under ``base`` in problem messages: ``$.input.min``, ``$.bins[2]``."""
    return f"{base}[{key}]" if isinstance(key, int) else f"{base}.{key}"


def is_int(x: Any) -> TypeGuard[int | np.integer]:
    """An integer (numpy's too), not a bool."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def is_num(x: Any) -> TypeGuard[int | float | np.integer | np.floating]:
    """A finite number (numpy's too), not a bool."""
    return (
        isinstance(x, (int, float, np.integer, np.floating))
        and not isinstance(x, (bool, np.bool_))
        and math.isfinite(float(x))
    )


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
    def lognormal(
        cls,
        *,
        sigma: float,
        mean: float | None = None,
        median: float | None = None,
        min: int = 1,
        max: int | None = None,
    ) -> "LengthSpec":  # noqa: A002
        return cls("lognormal", mean=mean, median=median, sigma=sigma, min=min, max=max)

    @classmethod
    def zipf(cls, alpha: float, min: int = 1, max: int | None = None) -> "LengthSpec":  # noqa: A002
        return cls("zipf", alpha=alpha, min=min, max=max)

    @classmethod
    def histogram(
        cls,
        *,
        file: str | os.PathLike | None = None,
        column: str | None = None,
        bins=None,
        values=None,
        weights=None,
        min: int = 1,  # noqa: A002
        max: int | None = None,
    ) -> "LengthSpec":  # noqa: A002
        return cls(
            "histogram",
            file=None if file is None else str(file),
            column=column,
            bins=None if bins is None else tuple(bins),
            values=None if values is None else tuple(values),
            weights=None if weights is None else tuple(weights),
            min=min,
            max=max,
        )

    @classmethod
    def coerce(cls, obj: Any, path: str = "$") -> "LengthSpec":
        """A LengthSpec from a LengthSpec, an integer (constant) or a dict; raises on problems."""
        spec, problems = cls.parse(obj, path)
        if problems:
            raise KavierInputError("invalid length distribution: " + "; ".join(problems))
        assert spec is not None  # parse returns None only together with problems
        return spec

    @classmethod
    def parse(cls, obj: Any, path: str) -> tuple["LengthSpec | None", list[str]]:
        if isinstance(obj, LengthSpec):
            return obj, obj.problems(path)
        if is_int(obj):
            spec = cls.constant(int(obj))
            return spec, spec.problems(path)
        if not isinstance(obj, Mapping):
            return None, [
                f"{path}: {obj!r} is not a length distribution; expected a positive integer "
                f"or an object with 'dist' one of {', '.join(LENGTH_DISTS)}"
            ]
        dist = obj.get("dist", "constant" if "value" in obj else None)
        if dist not in LENGTH_DISTS:
            return None, [
                f"{spec_path(path, 'dist')}: {dist!r} is not a length distribution; expected one "
                f"of {', '.join(LENGTH_DISTS)}"
            ]
        allowed = _COMMON_LENGTH_KEYS | _LENGTH_KEYS[dist]
        problems = [
            f"{spec_path(path, k)}: not used by dist {dist!r} (allowed keys: {', '.join(sorted(allowed))})"
            for k in obj
            if k not in allowed
        ]
        kw: dict[str, Any] = {}
        for k in allowed - {"dist"}:
            if k in obj and obj[k] is not None:
                v = obj[k]
                if k in ("bins", "values", "weights"):
                    if not isinstance(v, (list, tuple, np.ndarray)):
                        problems.append(f"{spec_path(path, k)}: {v!r} is not a list")
                        continue
                    v = tuple(v)
                elif k == "file":
                    v = str(v)
                kw[k] = v
        spec = cls(dist=dist, **kw)
        return spec, problems + spec.problems(path)

    def problems(self, path: str = "$") -> list[str]:
        """Everything wrong with this spec, each message starting with its JSON path."""
        p = functools.partial(spec_path, path)
        out: list[str] = []
        if self.dist not in LENGTH_DISTS:
            return [f"{p('dist')}: {self.dist!r} is not one of {', '.join(LENGTH_DISTS)}"]
        for k in (f.name for f in fields(self)):
            if k in ("dist", "min", "max") or getattr(self, k) is None:
                continue
            if k not in _LENGTH_KEYS[self.dist]:
                out.append(f"{p(k)}: not used by dist {self.dist!r}")
        if not is_int(self.min) or self.min < 1:
            out.append(f"{p('min')}: {self.min!r} must be an integer >= 1")
        if self.max is not None and (not is_int(self.max) or self.max < 1):
            out.append(f"{p('max')}: {self.max!r} must be an integer >= 1")
        elif self.max is not None and is_int(self.min) and self.max < self.min:
            out.append(f"{p('max')}: {self.max} is smaller than min {self.min}")
        if self.dist == "constant":
            if self.value is None:
                out.append(f"{path}: 'value' is required for dist 'constant'")
            elif not is_int(self.value) or self.value < 1:
                out.append(f"{p('value')}: {self.value!r} must be an integer >= 1")
        elif self.dist == "uniform":
            for k in ("low", "high"):
                v = getattr(self, k)
                if v is None:
                    out.append(f"{path}: '{k}' is required for dist 'uniform'")
                elif not is_int(v) or v < 1:
                    out.append(f"{p(k)}: {v!r} must be an integer >= 1")
            if is_int(self.low) and is_int(self.high) and self.low > self.high:
                out.append(f"{p('high')}: {self.high} is smaller than low {self.low}")
        elif self.dist == "lognormal":
            if (self.mean is None) == (self.median is None):
                out.append(f"{path}: give exactly one of 'mean' and 'median' for dist 'lognormal'")
            for k in ("mean", "median"):
                v = getattr(self, k)
                if v is not None and (not is_num(v) or v <= 0):
                    out.append(f"{p(k)}: {v!r} must be a number > 0")
            if self.sigma is None:
                out.append(f"{path}: 'sigma' is required for dist 'lognormal'")
            elif not is_num(self.sigma) or self.sigma < 0:
                out.append(f"{p('sigma')}: {self.sigma!r} must be a number >= 0")
        elif self.dist == "zipf":
            if self.alpha is None:
                out.append(f"{path}: 'alpha' is required for dist 'zipf'")
            elif not is_num(self.alpha) or self.alpha <= 0:
                out.append(f"{p('alpha')}: {self.alpha!r} must be a number > 0")
            elif self.max is None and self.alpha <= 1:
                out.append(
                    f"{p('alpha')}: {self.alpha} must be > 1 when 'max' is not given "
                    "(otherwise the distribution cannot be normalised)"
                )
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
                bad = [i for i, x in enumerate(w) if not is_num(x) or x < 0]
                if bad:
                    out.append(f"{spec_path(p('weights'), bad[0])}: {w[bad[0]]!r} must be a number >= 0")
                elif sum(float(x) for x in w) <= 0:
                    out.append(f"{p('weights')}: must not all be 0")
            if self.bins is not None:
                b = self.bins
                bad = [i for i, x in enumerate(b) if not is_int(x) or x < 1]
                if len(b) < 2:
                    out.append(f"{p('bins')}: needs at least 2 edges")
                elif bad:
                    out.append(f"{spec_path(p('bins'), bad[0])}: {b[bad[0]]!r} must be an integer >= 1")
                elif any(b[i + 1] <= b[i] for i in range(len(b) - 1)):
                    i = next(i for i in range(len(b) - 1) if b[i + 1] <= b[i])
                    out.append(
                        f"{spec_path(p('bins'), i + 1)}: bin edges must increase strictly ({b[i + 1]} after {b[i]})"
                    )
                if w is None:
                    out.append(f"{path}: 'weights' (one per bin) are required with 'bins'")
                elif len(w) != len(b) - 1:
                    out.append(f"{p('weights')}: {len(w)} weights for {len(b) - 1} bins; expected one per bin")
            if self.values is not None:
                v = self.values
                bad = [i for i, x in enumerate(v) if not is_int(x) or x < 1]
                if not v:
                    out.append(f"{p('values')}: must not be empty")
                elif bad:
                    out.append(f"{spec_path(p('values'), bad[0])}: {v[bad[0]]!r} must be an integer >= 1")
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

    def sample(
        self, rng: np.random.Generator, size: int, *, role: str = "input", base_dir: str | os.PathLike | None = None
    ) -> np.ndarray:
        """``size`` int64 lengths, clipped to ``[min, max]``.

        The spec is a valid one (``problems()`` empty): the fields its ``dist`` needs are set."""
        d = self.dist
        if d == "constant":
            assert self.value is not None
            out = np.full(size, int(self.value), dtype=np.int64)
        elif d == "uniform":
            assert self.low is not None and self.high is not None
            out = rng.integers(int(self.low), int(self.high), size=size, endpoint=True, dtype=np.int64)
        elif d == "lognormal":
            assert self.sigma is not None
            sigma = float(self.sigma)
            if self.median is not None:
                mu = math.log(self.median)
            else:
                assert self.mean is not None  # exactly one of mean and median is given
                mu = math.log(self.mean) - sigma * sigma / 2
            x = rng.lognormal(mu, sigma, size=size)
            np.rint(x, out=x)
            hi = float(self.max) if self.max is not None else 2.0**53
            np.clip(x, float(self.min), hi, out=x)
            out = x.astype(np.int64)
        elif d == "zipf":
            out = self._sample_zipf(rng, size)
        else:
            out = self._sample_histogram(rng, size, role, base_dir)
        return self.clip(out)

    def clip(self, out: np.ndarray) -> np.ndarray:
        lo = int(self.min)
        hi = None if self.max is None else int(self.max)
        if (out < lo).any() or (hi is not None and (out > hi).any()):
            np.clip(out, lo, hi, out=out)
        return out

    def _sample_zipf(self, rng: np.random.Generator, size: int) -> np.ndarray:
        assert self.alpha is not None  # required for dist 'zipf' (a valid spec)
        a = float(self.alpha)
        lo = int(self.min)
        if self.max is not None and int(self.max) - lo + 1 <= _ZIPF_TABLE_LIMIT:
            k = np.arange(1, int(self.max) - lo + 2, dtype=np.float64)
            cdf = np.cumsum(k**-a)
            cdf /= cdf[-1]
            idx = np.searchsorted(cdf, rng.random(size), side="right")
            np.minimum(idx, k.size - 1, out=idx)
            return idx.astype(np.int64) + lo
        x = rng.zipf(a, size=size).astype(np.int64)  # >= 1
        x += lo - 1
        return x

    def _sample_histogram(
        self, rng: np.random.Generator, size: int, role: str, base_dir: str | os.PathLike | None
    ) -> np.ndarray:
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
        """Analytic mean where cheap (used for defaults only); the spec is a valid one."""
        if self.dist == "constant":
            assert self.value is not None
            return float(self.value)
        if self.dist == "uniform":
            assert self.low is not None and self.high is not None
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
            raise KavierInputError(
                f"a histogram file used for {role} needs 'column' naming the column to sample", source=path
            )
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
    def parse(cls, obj: Any, path: str) -> tuple["ThinkTimeSpec | None", list[str]]:
        if isinstance(obj, ThinkTimeSpec):
            return obj, obj.problems(path)
        if is_num(obj):
            spec = cls("constant", value=float(obj))
            return spec, spec.problems(path)
        if not isinstance(obj, Mapping):
            return None, [
                f"{path}: {obj!r} is not a duration; expected seconds (a number >= 0) or an "
                f"object with 'dist' one of {', '.join(THINK_DISTS)}"
            ]
        dist = obj.get("dist", "constant" if "value" in obj else None)
        if dist not in THINK_DISTS:
            return None, [f"{spec_path(path, 'dist')}: {dist!r} is not one of {', '.join(THINK_DISTS)}"]
        allowed = {"dist"} | _THINK_KEYS[dist]
        problems = [f"{spec_path(path, k)}: not used by dist {dist!r}" for k in obj if k not in allowed]
        spec = cls(dist=dist, **{k: obj[k] for k in _THINK_KEYS[dist] if obj.get(k) is not None})
        return spec, problems + spec.problems(path)

    def problems(self, path: str) -> list[str]:
        p = functools.partial(spec_path, path)
        out: list[str] = []
        need = {
            "constant": ("value",),
            "exponential": ("mean",),
            "uniform": ("low", "high"),
            "lognormal": ("sigma",),
        }.get(self.dist)
        if need is None:
            return [f"{p('dist')}: {self.dist!r} is not one of {', '.join(THINK_DISTS)}"]
        for k in need:
            v = getattr(self, k)
            if v is None:
                out.append(f"{path}: '{k}' is required for dist {self.dist!r}")
            elif not is_num(v) or v < 0:
                out.append(f"{p(k)}: {v!r} must be a number >= 0")
        if self.dist == "uniform" and is_num(self.low) and is_num(self.high) and self.low > self.high:
            out.append(f"{p('high')}: {self.high} is smaller than low {self.low}")
        if self.dist == "lognormal":
            if (self.mean is None) == (self.median is None):
                out.append(f"{path}: give exactly one of 'mean' and 'median' for dist 'lognormal'")
            for k in ("mean", "median"):
                v = getattr(self, k)
                if v is not None and (not is_num(v) or v <= 0):
                    out.append(f"{p(k)}: {v!r} must be a number > 0")
        return out

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` durations; the spec is a valid one (``problems()`` empty): the fields its ``dist`` needs are set."""
        if self.dist == "constant":
            assert self.value is not None
            return np.full(size, float(self.value))
        if self.dist == "exponential":
            assert self.mean is not None
            return rng.exponential(float(self.mean), size=size) if self.mean > 0 else np.zeros(size)
        if self.dist == "uniform":
            assert self.low is not None and self.high is not None
            return rng.uniform(float(self.low), float(self.high), size=size)
        assert self.sigma is not None
        sigma = float(self.sigma)
        if self.median is not None:
            mu = math.log(self.median)
        else:
            assert self.mean is not None  # exactly one of mean and median is given
            mu = math.log(self.mean) - sigma * sigma / 2
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
    def parse(cls, obj: Any, path: str) -> tuple["SessionSpec | None", list[str]]:
        if isinstance(obj, SessionSpec):
            return obj, []
        if not isinstance(obj, Mapping):
            return None, [f"{path}: {obj!r} is not an object; expected {{'turns': ..., 'think_time_s': ...}}"]
        allowed = {"turns", "think_time_s", "num_sessions", "rate", "accumulate_context"}
        problems = [
            f"{spec_path(path, k)}: unknown key (allowed: {', '.join(sorted(allowed))})"
            for k in obj
            if k not in allowed
        ]
        turns = think = None
        if "turns" not in obj:
            problems.append(f"{path}: 'turns' is required")
        else:
            turns, pr = LengthSpec.parse(obj["turns"], spec_path(path, "turns"))
            problems += pr
        if "think_time_s" not in obj:
            problems.append(f"{path}: 'think_time_s' is required")
        else:
            think, pr = ThinkTimeSpec.parse(obj["think_time_s"], spec_path(path, "think_time_s"))
            problems += pr
        ns = obj.get("num_sessions")
        if ns is not None and (not is_int(ns) or ns < 1):
            problems.append(f"{spec_path(path, 'num_sessions')}: {ns!r} must be an integer >= 1")
        rate = obj.get("rate")
        if rate is not None and (not is_num(rate) or rate <= 0):
            problems.append(f"{spec_path(path, 'rate')}: {rate!r} must be a number > 0 (sessions per second)")
        acc = obj.get("accumulate_context", False)
        if not isinstance(acc, bool):
            problems.append(f"{spec_path(path, 'accumulate_context')}: {acc!r} must be true or false")
        if problems or turns is None or think is None:
            return None, problems
        return cls(
            turns=turns,
            think_time_s=think,
            num_sessions=None if ns is None else int(ns),
            rate=None if rate is None else float(rate),
            accumulate_context=acc,
        ), []
