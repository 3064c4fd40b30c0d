"""Prefix caching over a replica's KV memory (vLLM automatic prefix caching).

A prompt is a chain of *units*: runs of KV blocks whose identity is a hash of
their tokens and of everything before them (see
``kavier_opendc.workload.prefix``). A unit is one 16-token block when token
identities are known per token (token ids, synthesized sessions) and one
Mooncake hash block (512 tokens = 32 blocks) when the trace gives only
``hash_ids``: the trace cannot tell blocks inside a hash block apart.

Memory model (per replica, in blocks):
- ``used`` blocks are referenced by running requests (shared units count once);
- cached units nobody references are *evictable*: they stay in memory, in an
  LRU order, until an allocation needs their space (vLLM keeps freed blocks
  with their hashes and evicts the least recently freed first);
- everything else is free.
A request's freed units enter the LRU tail-first, so the end of a prompt is
evicted before its beginning, as in vLLM. Allocation takes free blocks before
evicting cached ones.

``capacity_tokens`` bounds the cache independently of GPU memory: with a
number, evictable units live in a separate pool of that size; with ``inf``
nothing is ever evicted (the what-if of an unbounded cache). An optional host
memory tier keeps units evicted from the GPU; a hit there is loaded over PCIe
instead of being recomputed.
"""

from __future__ import annotations

from collections import OrderedDict


class PrefixCache:
    __slots__ = (
        "gpu_capacity",
        "separate",
        "pool_cap",
        "ref",
        "size",
        "lru",
        "lru_blocks",
        "host",
        "host_blocks",
        "host_cap",
        "evictions",
        "host_evictions",
        "hits_gpu_blocks",
        "hits_host_blocks",
    )

    def __init__(self, gpu_capacity: int, *, capacity_blocks: float | None = None, host_capacity_blocks: int = 0):
        self.gpu_capacity = gpu_capacity
        self.separate = capacity_blocks is not None  # evictable units outside GPU memory
        self.pool_cap = capacity_blocks if capacity_blocks is not None else 0
        self.ref: dict = {}  # unit id -> number of running requests referencing it
        self.size: dict = {}  # unit id -> blocks, for every unit in GPU memory
        self.lru: OrderedDict = OrderedDict()  # evictable unit id -> blocks, least recently freed first
        self.lru_blocks = 0
        self.host: OrderedDict = OrderedDict()
        self.host_blocks = 0
        self.host_cap = host_capacity_blocks
        self.evictions = 0
        self.host_evictions = 0
        self.hits_gpu_blocks = 0
        self.hits_host_blocks = 0

    # --------------------------------------------------------------- memory
    def evictable_in_gpu(self) -> int:
        """Blocks of GPU memory held by evictable units (0 when the cache has its own pool)."""
        return 0 if self.separate else self.lru_blocks

    def make_room(self, free_plain: int, need: int) -> None:
        """Evict LRU units until ``need`` blocks fit next to ``free_plain`` free ones (GPU pool)."""
        if self.separate:
            return
        lru = self.lru
        if self.host_cap > 0:
            while free_plain < need and lru:
                uid, blocks = lru.popitem(last=False)
                self.lru_blocks -= blocks
                free_plain += blocks
                self._drop(uid, blocks)
            return
        # no host tier: _drop inlined (this runs for every allocation that evicts)
        size = self.size
        got = 0
        dropped = 0
        while free_plain < need and lru:
            uid, blocks = lru.popitem(last=False)
            got += blocks
            free_plain += blocks
            del size[uid]
            dropped += 1
        self.lru_blocks -= got
        self.evictions += dropped

    def _drop(self, uid, blocks: int) -> None:
        del self.size[uid]
        self.evictions += 1
        if self.host_cap > 0:
            host = self.host
            host[uid] = blocks
            self.host_blocks += blocks
            while self.host_blocks > self.host_cap and host:
                _, b = host.popitem(last=False)
                self.host_blocks -= b
                self.host_evictions += 1

    def _trim_pool(self) -> None:
        if self.separate and self.pool_cap != float("inf"):
            lru = self.lru
            while self.lru_blocks > self.pool_cap and lru:
                uid, blocks = lru.popitem(last=False)
                self.lru_blocks -= blocks
                self._drop(uid, blocks)

    # --------------------------------------------------------------- lookups
    def match(self, ids: list, sizes: list, max_blocks: int) -> tuple[int, int, int, int, int]:
        """Longest cached prefix of at most ``max_blocks`` blocks.

        Returns (units in GPU memory, their blocks, further units in host
        memory, their blocks, blocks of the GPU units that nobody references
        now and that a hit would take out of the evictable LRU).
        """
        size, ref = self.size, self.ref
        n = len(ids)
        k = 0
        blocks = 0
        revive = 0
        while k < n:
            uid = ids[k]
            if uid not in size:
                break
            b = sizes[k]
            if blocks + b > max_blocks:
                return k, blocks, 0, 0, revive
            blocks += b
            if uid not in ref:
                revive += b
            k += 1
        if not self.host_cap:
            return k, blocks, 0, 0, revive
        host = self.host
        h = k
        hb = 0
        while h < n and ids[h] in host:
            b = sizes[h]
            if blocks + hb + b > max_blocks:
                break
            hb += b
            h += 1
        return k, blocks, h - k, hb, revive

    def matched_blocks(self, ids: list, sizes: list, max_blocks: int, gone: set | frozenset = frozenset()) -> int:
        """Blocks of the longest prefix present in GPU memory, ignoring units in ``gone`` (for routers)."""
        size = self.size
        blocks = 0
        for uid, b in zip(ids, sizes, strict=True):
            if uid not in size or uid in gone or blocks + b > max_blocks:
                break
            blocks += b
        return blocks

    def lru_head(self, blocks: int) -> set:
        """Units that evicting ``blocks`` blocks from the GPU pool would remove (the LRU head)."""
        if blocks <= 0 or self.separate:
            return set()
        out = set()
        got = 0
        for uid, b in self.lru.items():
            if got >= blocks:
                break
            out.add(uid)
            got += b
        return out

    def take(self, uid) -> int:
        """Reference one cached unit; returns its blocks if it left the evictable LRU, else 0."""
        r = self.ref.get(uid, 0)
        self.ref[uid] = r + 1
        if r == 0:
            b = self.lru.pop(uid)
            self.lru_blocks -= b
            return b
        return 0

    def acquire(self, ids: list, sizes: list, k: int) -> int:
        """Reference the first k units (all in GPU memory); returns blocks that left the evictable LRU."""
        ref, lru = self.ref, self.lru
        revived = 0
        for j in range(k):
            uid = ids[j]
            r = ref.get(uid, 0)
            if r == 0:
                b = lru.pop(uid)
                self.lru_blocks -= b
                revived += b
            ref[uid] = r + 1
        return revived

    def load_from_host(self, ids: list, sizes: list, start: int, count: int) -> None:
        """Units start..start+count-1 come back from host memory into GPU memory, referenced once."""
        host = self.host
        for j in range(start, start + count):
            uid = ids[j]
            b = host.pop(uid)
            self.host_blocks -= b
            self.size[uid] = b
            self.ref[uid] = 1

    def register(self, uid, blocks: int) -> bool:
        """A unit just computed by a running request; False if an equal unit is already cached."""
        if uid in self.size:
            return False
        if uid in self.host:  # recomputed although a copy waited in host memory: drop the stale copy
            self.host_blocks -= self.host.pop(uid)
        self.size[uid] = blocks
        self.ref[uid] = 1
        return True

    def release(self, ids: list) -> int:
        """Drop one reference from each unit (given tail first); returns GPU blocks that became evictable."""
        ref, lru, size = self.ref, self.lru, self.size
        freed = 0
        for uid in ids:
            r = ref[uid] - 1
            if r:
                ref[uid] = r
                continue
            del ref[uid]
            b = size[uid]
            lru[uid] = b
            self.lru_blocks += b
            freed += b
        self._trim_pool()
        return freed


class PromptCache:
    """The seed paper's prompt-level cache: whole prompts, LRU, bounded in prompts.

    Policy ``prefill`` skips the prefill of a prompt seen before; ``full``
    also skips its decode (the answer is served from the cache).
    """

    __slots__ = ("capacity", "lru", "hits", "evictions")

    def __init__(self, capacity: float = float("inf")):
        self.capacity = capacity
        self.lru: OrderedDict = OrderedDict()
        self.hits = 0
        self.evictions = 0

    def lookup(self, key) -> bool:
        if key is None or key not in self.lru:
            return False
        self.lru.move_to_end(key)
        self.hits += 1
        return True

    def insert(self, key) -> None:
        if key is None:
            return
        lru = self.lru
        lru[key] = None
        lru.move_to_end(key)
        while len(lru) > self.capacity:
            lru.popitem(last=False)
            self.evictions += 1
