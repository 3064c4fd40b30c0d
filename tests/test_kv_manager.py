"""The KV manager's doors, by hand: blocks allocated, released, cached, matched and evicted."""

from __future__ import annotations

from dataclasses import dataclass

from kavier_opendc.engine.kv_manager import BLOCK_SIZE, NO_MATCH, KVManager, blocks_for
from kavier_opendc.engine.request import Req
from kavier_opendc.engine.simulator import PrefixSetup


@dataclass
class Units:
    """A prefix index over fixed prompts: request i's prompt is the unit chain ``chains[i]``, one block each."""

    chains: dict
    source: str = "hash_ids"

    def prompt_units(self, idx):
        ids = self.chains[idx]
        return list(ids), [1] * len(ids)


def manager(capacity: int, chains: dict) -> KVManager:
    return KVManager(
        capacity, kv_cache=True, kv_bytes_per_token=1.0, pcie_gbs=1.0, prefix=PrefixSetup("block", Units(chains))
    )


def test_blocks_for_rounds_up_to_whole_blocks():
    assert [blocks_for(t) for t in (0, 1, 16, 17, 32, 33)] == [0, 1, 1, 2, 2, 3]
    assert BLOCK_SIZE == 16


def test_allocate_and_release_without_a_cache():
    kv = KVManager(10, kv_cache=True)
    r = Req(0, 0.0, 40, 1)
    kv.allocate(blocks_for(40))
    assert (kv.used, kv.peak, kv.free()) == (3, 3, 7)
    kv.release(r, 40)
    assert (kv.used, kv.peak) == (0, 3)
    assert kv.match_prefix(r) == NO_MATCH


def test_a_computed_prefix_is_cached_matched_revived_and_evicted_lru_first():
    kv = manager(6, {0: ["a", "b", "c"], 1: ["a", "b", "x"], 2: ["y", "z", "w"]})
    first = Req(0, 0.0, 48, 2)  # 3 full blocks
    assert kv.match_prefix(first) == (0, 0, 0, 0, 0, 0)
    kv.allocate(3)
    first.computed = 48
    kv.register_computed(first)
    assert first.held == 3 and kv.pc.ref == {"a": 1, "b": 1, "c": 1}
    kv.release(first, 48)  # its units stay as evictable, tail first in the LRU
    assert kv.used == 0 and list(kv.pc.lru) == ["c", "b", "a"] and kv.pc.lru_blocks == 3
    second = Req(1, 1.0, 48, 2)
    match = kv.match_prefix(second)
    assert match == (2, 2, 0, 0, 2, 32)  # a and b: 2 blocks, both revived, 32 tokens not recomputed
    kv.admit(second, match)
    assert kv.used == 2 and second.computed == 32 and list(kv.pc.lru) == ["c"]
    # 5 more blocks do not fit beside 2 referenced + 1 cached: the cached unit c goes
    kv.allocate(4)
    assert kv.used == 6 and kv.pc.evictions == 1 and not kv.pc.lru
    assert kv.used + kv.pc.evictable_in_gpu() <= kv.capacity


def test_copy_on_write_refuses_what_does_not_fit():
    kv = KVManager(2, kv_cache=True)
    kv.allocate(2)
    assert not kv.copy_on_write(1) and kv.used == 2
    kv.release(Req(0, 0.0, 16, 1), 16)
    assert kv.copy_on_write(1) and kv.used == 2
