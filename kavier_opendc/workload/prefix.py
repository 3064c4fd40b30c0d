"""Prompt identities for prefix caching (the feedback workflow).

The simulator never sees text, so reuse between requests is decided by
*identities* of prompt pieces, taken from the trace in this order:

1. ``input_tokens`` (token ids): one unit per full KV block (16 tokens in vLLM), identified
   by a hash of its tokens chained with the previous block's identity (as
   vLLM's block hashes);
2. ``hash_ids`` (Mooncake): one unit per hash block (``hash_block_size``
   tokens, 512 in Mooncake; equal ids mean equal prefixes); a partly filled
   last hash block holds only its full 16-token blocks;
3. ``session_id`` alone: identities are synthesized. Assumption (documented
   in the README): turn k+1 of a session starts with the whole conversation
   so far, i.e. turn k's prompt followed by its answer, so the block at
   position j of a session's transcript has the same identity in every turn;
   both prompt and answer blocks are reusable. When a turn's prompt is shorter
   than the previous prompt plus answer, the conversation is taken to restart
   (a new epoch) and nothing carries over.

Scope ``session`` confines reuse to requests of the same session (no shared
system prompts across users); ``global`` shares across everyone.
"""

from __future__ import annotations

import numpy as np

from kavier_opendc.workload.trace import Trace

SOURCES = ("tokens", "hash_ids", "sessions")


class PrefixIndex:
    """The identities of each request's prompt blocks, read from the trace.

    ``block_size`` is the serving engine's KV block size in tokens (the engine
    passes its own, so that a unit here is exactly one of its blocks)."""

    def __init__(self, trace: Trace, *, block_size: int, scope: str = "global"):
        self.trace = trace
        self.block_size = block_size
        self.scope = scope
        self.source: str | None
        if trace.input_tokens is not None and any(len(t) for t in trace.input_tokens):
            self.source = "tokens"
        elif trace.hash_ids is not None and any(len(h) for h in trace.hash_ids):
            self.source = "hash_ids"
        elif trace.session_id is not None:
            self.source = "sessions"
        else:
            self.source = None
        self.sessions = trace.session_id
        self._epoch = self._session_epochs() if self.source == "sessions" else None
        hb = int(getattr(trace, "hash_block_size", 512) or 512)
        self.unit_blocks = max(1, hb // block_size)

    @property
    def available(self) -> bool:
        return self.source is not None

    def _session_epochs(self) -> np.ndarray:
        tr = self.trace
        sess = np.asarray(tr.session_id, dtype=np.int64)
        p = tr.num_input_tokens
        o = tr.num_output_tokens
        epoch = np.zeros(len(tr), dtype=np.int64)
        last: dict[int, tuple[int, int]] = {}  # session -> (epoch, prompt + answer)
        for i in range(len(tr)):
            s = int(sess[i])
            prev = last.get(s)
            e = 0 if prev is None else (prev[0] if p[i] >= prev[1] else prev[0] + 1)
            epoch[i] = e
            last[s] = (e, int(p[i] + o[i]))
        return epoch

    def _session_base(self, i: int) -> int:
        assert self.sessions is not None and self._epoch is not None  # source "sessions" sets both
        return (int(self.sessions[i]) * 4096 + int(self._epoch[i]) % 4096) << 24

    def prompt_units(self, i: int) -> tuple[list, list]:
        """Identities and sizes (in blocks) of the full blocks of request i's prompt, in order."""
        p = int(self.trace.num_input_tokens[i])
        block = self.block_size
        full = p // block
        src = self.source
        if src == "sessions":
            base = self._session_base(i)
            return [base | j for j in range(full)], [1] * full
        if src == "hash_ids":
            assert self.trace.hash_ids is not None  # source "hash_ids" needs them
            hids = self.trace.hash_ids[i]
            ub = self.unit_blocks
            ids, sizes = [], []
            left = full
            sess = ("s", int(self.sessions[i])) if self.scope == "session" and self.sessions is not None else None
            for h in hids:
                if left <= 0:
                    break
                b = ub if left >= ub else left
                ids.append((sess, h, b) if sess is not None else (h if b == ub else (h, b)))
                sizes.append(b)
                left -= b
            return ids, sizes
        if src == "tokens":
            assert self.trace.input_tokens is not None  # source "tokens" needs them
            toks = self.trace.input_tokens[i]
            chain: tuple[str, int] | int = 0  # the hash chain; under session scope it starts at the session
            if self.scope == "session" and self.sessions is not None:
                chain = ("s", int(self.sessions[i]))
            ids = []
            for j in range(min(full, len(toks) // block)):
                chain = hash((chain, tuple(toks[j * block : (j + 1) * block])))
                ids.append(chain)
            return ids, [1] * len(ids)
        return [], []

    def output_units(self, i: int, first_block: int, end_block: int) -> list:
        """Identities of blocks first_block..end_block-1 beyond the prompt (known only for sessions)."""
        if self.source != "sessions":
            return []
        base = self._session_base(i)
        return [base | j for j in range(first_block, end_block)]

    def prompt_key(self, i: int):
        """Identity of the whole prompt (for the seed paper's prompt-level cache)."""
        p = int(self.trace.num_input_tokens[i])
        scope = int(self.sessions[i]) if self.scope == "session" and self.sessions is not None else None
        if self.source == "tokens":
            assert self.trace.input_tokens is not None  # source "tokens" needs them
            return (scope, hash(tuple(self.trace.input_tokens[i])))
        if self.source == "hash_ids":
            assert self.trace.hash_ids is not None  # source "hash_ids" needs them
            return (scope, tuple(self.trace.hash_ids[i]), p)
        if self.source == "sessions":
            return (scope, self._session_base(i), p)
        return None
