"""The owner of a replica's KV blocks (vLLM's KVCacheManager): capacity, allocation, the prefix cache.

Every change of the block count ``used`` happens here, through doors named
for what the scheduler does: ``allocate`` the blocks of an iteration,
``extend`` them when a decode run ends, ``admit`` a request with its cached
prefix, ``register_computed`` the units a prefill has just filled,
``release`` a request leaving the GPU, ``copy_on_write`` a sibling sample's
last prompt block. Lookups are ``match_prefix`` (admission),
``matched_blocks`` (routers) and ``evictable_before`` (how far a decode run
may go before the LRU reaches a waiting request's cached prefix).

Memory model: ``used`` blocks are referenced by running requests (a shared
prefix unit counts once); with a prefix cache, units nobody references stay
in memory as evictable until an allocation needs their space (see
kv_cache.py). Invariant after every door: used + evictable GPU blocks <=
capacity.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kavier_opendc.engine.kv_cache import PrefixCache, PromptCache

if TYPE_CHECKING:  # pragma: no cover
    from kavier_opendc.engine.request import Req

BLOCK_SIZE = 16  # tokens per KV block, vLLM's default
#: tokens -> position inside a KV block (BLOCK_SIZE is a power of two)
BLOCK_MASK = BLOCK_SIZE - 1


def blocks_for(tokens: int) -> int:
    """KV blocks that hold ``tokens`` tokens."""
    return (tokens + BLOCK_MASK) // BLOCK_SIZE


#: tests turn this on before building replicas: the allocating doors then check the memory invariants after
#: each call (a compiled KVManager, engine/compiled.py, cannot have its methods wrapped)
CHECK_INVARIANTS = False

#: what a cached-prefix lookup found, for ``KVManager.admit``: GPU units and blocks, host units and
#: blocks, GPU blocks that leave the evictable LRU, and the tokens whose KV the request need not compute
NO_MATCH = (0, 0, 0, 0, 0, 0)


class KVManager:
    """The KV blocks of one replica, and the prefix (or prompt) cache over them."""

    __slots__ = (
        "capacity",
        "used",
        "peak",
        "on",
        "policy",
        "index",
        "min_tokens",
        "pc",
        "gpu_cache",
        "prompt_cache",
        "host_s_per_block",
        "checked",
    )

    def __init__(
        self,
        capacity_blocks: int,
        *,
        kv_cache: bool,
        kv_bytes_per_token: float = 0.0,
        pcie_gbs: float = 0.0,
        gpus: int = 1,
        prefix=None,
    ):
        """``prefix`` is the simulator's PrefixSetup (or None); host-tier loads use ``gpus`` PCIe links of
        ``pcie_gbs`` GB/s (the replica's KV bytes per token over all its GPUs)."""
        self.capacity = capacity_blocks
        self.used = 0
        self.peak = 0
        self.on = kv_cache
        self.policy = prefix.policy if prefix is not None and kv_cache else "none"
        self.index = prefix.index if prefix is not None else None
        self.min_tokens = prefix.min_tokens if prefix is not None else 0  # shorter prompts are never cached
        self.pc: PrefixCache | None = None
        self.gpu_cache: PrefixCache | None = None  # the prefix cache when its units live in GPU memory
        self.prompt_cache: PromptCache | None = None
        self.host_s_per_block = 0.0
        self.checked = CHECK_INVARIANTS
        if self.policy == "block":
            block_bytes = BLOCK_SIZE * kv_bytes_per_token
            cap_blocks = None
            if prefix.capacity_tokens is not None:
                cap_blocks = (
                    float("inf")
                    if prefix.capacity_tokens == float("inf")
                    else int(prefix.capacity_tokens // BLOCK_SIZE)
                )
            host_blocks = int(prefix.host_memory_gb * 1e9 // block_bytes) if prefix.host_memory_gb else 0
            self.pc = PrefixCache(capacity_blocks, capacity_blocks=cap_blocks, host_capacity_blocks=host_blocks)
            if not self.pc.separate:
                self.gpu_cache = self.pc
            self.host_s_per_block = block_bytes / (pcie_gbs * 1e9 * gpus)
        elif self.policy in ("prefill", "full"):
            self.prompt_cache = PromptCache(prefix.capacity_prompts)

    # ------------------------------------------------------------ state
    def free(self) -> int:
        """Blocks not referenced by a running request (evictable cached units count as free)."""
        return self.capacity - self.used

    def load(self) -> float:
        """Fraction of the blocks referenced by running requests."""
        return self.used / self.capacity if self.capacity else 0.0

    def cached_load(self) -> float:
        """Fraction of the GPU blocks held by evictable cached units."""
        gc = self.gpu_cache
        return gc.lru_blocks / self.capacity if gc is not None and self.capacity else 0.0

    def check(self, door: str) -> None:
        """The invariants (CHECK_INVARIANTS): referenced blocks within the capacity, and with the cached
        units in GPU memory too."""
        assert self.used <= self.capacity, (door, self.used, self.capacity)
        pc = self.pc
        if pc is not None:
            assert self.used + pc.evictable_in_gpu() <= self.capacity, (door, self.used, pc.evictable_in_gpu())
            assert all(r > 0 for r in pc.ref.values()), door

    # ------------------------------------------------------------ allocation
    def allocate(self, blocks: int) -> None:
        """The blocks of the iteration (or decode run) being scheduled; evicts cached units to make room."""
        self.used += blocks
        if self.pc is not None:
            self._fit()
        if self.used > self.peak:
            self.peak = self.used
        if self.checked:
            self.check("allocate")

    def extend(self, blocks: int) -> None:
        """Blocks a decode run took beyond those allocated when it was scheduled (counted when it ends)."""
        self.used += blocks
        if self.pc is not None:
            self._fit()
        if self.checked:
            self.check("extend")

    def copy_on_write(self, blocks: int) -> bool:
        """A sibling sample's copy of the partly filled last prompt block; False when it does not fit."""
        if self.capacity - self.used < blocks:
            return False
        self.used += blocks
        if self.pc is not None:
            self._fit()
        if self.checked:
            self.check("copy_on_write")
        return True

    def receive(self, blocks: int) -> bool:
        """Blocks for a request whose KV arrives from another replica (disaggregated serving, the decode
        side); False when they do not fit. Taken when its transfer starts, so the receiver never
        over-commits."""
        if self.capacity - self.used < blocks:
            return False
        self.used += blocks
        if self.pc is not None:
            self._fit()
        if self.used > self.peak:
            self.peak = self.used
        if self.checked:
            self.check("receive")
        return True

    def _fit(self) -> None:
        """Evict LRU cached units until referenced plus cached blocks fit in GPU memory."""
        pc = self.pc
        assert pc is not None  # callers check self.pc
        free_plain = self.capacity - self.used - pc.evictable_in_gpu()
        if free_plain < 0:
            pc.make_room(free_plain, 0)

    # ------------------------------------------------------------ the prefix cache
    def match_prefix(self, req: Req) -> tuple[int, int, int, int, int, int]:
        """The longest cached prefix of a request not yet started, leaving at least one token to compute.

        Returns (GPU units, their blocks, host units, their blocks, GPU blocks
        a hit revives from the evictable LRU, tokens already computed).
        """
        pc = self.pc
        if pc is not None:
            uids = req.uids
            if uids is None:
                index = self.index
                assert index is not None  # a prefix cache is made only with a prefix setup's index
                uids, req.usizes = index.prompt_units(req.idx)
                req.uids = uids
            if uids:
                assert req.usizes is not None  # set with uids
                total = req.prompt + req.gen
                k, hb, hk, hhb, revive = pc.match(uids, req.usizes, (total - 1) // BLOCK_SIZE)
                return k, hb, hk, hhb, revive, (hb + hhb) * BLOCK_SIZE
            return NO_MATCH
        if (
            self.prompt_cache is not None
            and req.first_sched < 0
            and self.prompt_cache.lookup(self.index.prompt_key(req.idx))  # type: ignore[union-attr]
        ):
            # (a prompt cache is made only with a prefix setup, so the index is set)
            return 0, 0, 0, 0, 0, req.prompt + req.gen - 1  # the whole prompt is cached: only its last token runs
        return NO_MATCH

    def admit(self, req: Req, match: tuple[int, int, int, int, int, int]) -> float:
        """``req`` starts running with the cached prefix ``match``; returns the seconds of host-to-GPU loads."""
        k, hb, hk, hhb, _, comp = match
        pc = self.pc
        extra = 0.0
        if k:  # cached units were matched: the prefix cache and the prompt's units are there
            assert pc is not None and req.uids is not None and req.usizes is not None
            self.used += pc.acquire(req.uids, req.usizes, k)
        if hk:
            assert pc is not None and req.uids is not None and req.usizes is not None
            pc.load_from_host(req.uids, req.usizes, k, hk)
            extra = hhb * self.host_s_per_block
        if comp:
            req.held = k + hk
            req.held_blocks = hb + hhb
            req.computed = comp
            if pc is not None:
                pc.hits_gpu_blocks += hb
                pc.hits_host_blocks += hhb
        return extra

    def register_computed(self, req: Req) -> None:
        """Units whose blocks ``req`` has just computed become reusable by others."""
        if self.pc is None or not req.uids or req.prompt < self.min_tokens:
            return
        pc = self.pc
        uids, sizes = req.uids, req.usizes
        assert sizes is not None  # set with uids
        h, hb, comp = req.held, req.held_blocks, req.computed
        n = len(uids)
        # PrefixCache.register inlined where no host tier can hold a stale copy (a unit per call, many calls)
        size, ref = pc.size, pc.ref
        plain = not pc.host_cap
        while h < n:
            b = sizes[h]
            if (hb + b) * BLOCK_SIZE > comp:
                break
            uid = uids[h]
            if plain and uid not in size:
                size[uid] = b
                ref[uid] = 1
            elif not pc.register(uid, b):  # an equal unit was cached meanwhile: share it, drop our copy
                self.used += pc.take(uid) - b
            h += 1
            hb += b
        req.held = h
        req.held_blocks = hb

    def finished(self, req: Req) -> None:
        """A finished request's prompt enters the prompt-level cache."""
        if self.prompt_cache is not None and req.prompt >= self.min_tokens:
            # a prompt cache is made only with a prefix setup, so the index is set
            self.prompt_cache.insert(self.index.prompt_key(req.idx))  # type: ignore[union-attr]

    def release(self, req: Req, computed: int) -> None:
        """Free the KV blocks of a request leaving the GPU (finished or preempted).

        With prefix caching its cached units stay in memory as evictable (tail
        first); with sessions, its completed answer blocks are cached too.
        """
        on = self.on
        blocks = blocks_for(computed) if on else 0
        pc = self.pc
        fork = req.fork
        if fork is not None:
            # own blocks go now; the shared prompt blocks when the last sibling leaves
            req.fork = None
            self.used -= blocks - fork.shared if on else 0
            fork.alive -= 1
            if fork.alive == 0 and on:
                units = fork.units
                if units:
                    assert pc is not None  # units come from the prefix cache
                    self.used -= fork.shared - sum(pc.size[u] for u in units)
                    self.used -= pc.release(units[::-1])
                else:
                    self.used -= fork.shared
            return
        if pc is None or req.uids is None:
            self.used -= blocks
            return
        held = req.held
        hb = req.held_blocks
        ids = req.uids[:held]
        index = self.index
        assert index is not None  # a prefix cache is made only with a prefix setup's index
        if index.source == "sessions" and held == len(req.uids) and req.prompt >= self.min_tokens:
            for uid in index.output_units(req.idx, hb, computed // BLOCK_SIZE):
                if not pc.register(uid, 1):
                    self.used += pc.take(uid) - 1
                ids.append(uid)
                hb += 1
        self.used -= blocks - hb
        ids.reverse()
        self.used -= pc.release(ids)
        req.held = 0
        req.held_blocks = 0

    # ------------------------------------------------------------ lookups for the scheduler and routers
    def evictable_before(self, req: Req) -> int:
        """New blocks that may be taken before an eviction reaches ``req``'s cached prefix (the waiting head).

        Returns -1 when no closed-form bound holds (host tier): the caller steps one iteration.
        """
        pc = self.pc
        assert pc is not None  # the scheduler asks only with a prefix cache (kv.pc is not None)
        if pc.separate:
            return 1 << 62
        if pc.host_cap:
            return -1
        if req.computed or not req.uids:
            return 1 << 62
        assert req.usizes is not None  # set with uids
        k = pc.match(req.uids, req.usizes, (req.prompt + req.gen - 1) // BLOCK_SIZE)[0]
        mine = {u for u in req.uids[:k] if u in pc.lru}
        if not mine:
            return 1 << 62
        before = 0
        for uid, b in pc.lru.items():
            if uid in mine:
                break
            before += b
        return self.capacity - self.used - pc.lru_blocks + before

    def matched_blocks(self, req: Req, used: int | None = None) -> int:
        """Blocks of ``req``'s prompt held in GPU memory (prefix-affinity routing).

        ``used``: the referenced blocks at the moment asked about, when a decode
        run in flight has taken more than ``self.used`` says (its evictions
        happen when it ends, so those due by then are left out).
        """
        pc = self.pc
        if pc is None or not req.uids:
            return 0
        assert req.usizes is not None  # set with uids
        gone: set | frozenset = frozenset()
        if used is not None:
            gone = pc.lru_head(used + pc.evictable_in_gpu() - self.capacity)
        return pc.matched_blocks(req.uids, req.usizes, (req.prompt - 1) // BLOCK_SIZE, gone)
