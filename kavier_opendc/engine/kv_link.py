"""Disaggregated prefill/decode serving: the topology (pools and link) and the KV-transfer link model.

A disaggregated cluster (DistServe, Splitwise) runs prompts on a *prefill
pool* and generation on a *decode pool*; after its prefill a request's KV
cache moves over a link to a decode replica. This module holds the plain
records of such a topology (:class:`Pool`, :class:`LinkSpec`,
:class:`Disaggregation`) and the link itself (:class:`KVLink`); the event
loop that drives them is :mod:`kavier_opendc.engine.disaggregated`.

Link model: **FIFO**. One transfer at a time uses the whole bandwidth; the
others queue in the order they were submitted. A transfer of B bytes
occupies the link for ``setup_s + B / bandwidth`` and its last byte lands
``latency_s`` later (propagation does not occupy the link). Two transfers
submitted together therefore end after twice the occupancy of one (the
total is what processor sharing would give too; FIFO lets the first one
finish early, which is what a serialising RDMA queue does). The link never
carries more than its bandwidth: its occupancy intervals never overlap.

Modes:

- ``whole`` (DistServe): the transfer is submitted when the prefill ends
  (and a decode replica has room): it starts when the link is free.
- ``layerwise`` (Splitwise): layer l's KV is sent as soon as the prefill has
  computed it, so the transfer overlaps the prefill. Overlap model: the link
  can have streamed during the window from max(prefill start, link free) to
  the prefill's end (less the setup) at its full bandwidth, but never the
  last layer's share (computed at the very end), and never faster than the
  layers were produced; with L layers produced evenly over the prefill that
  is ``ov = (L-1)/L * min(B, bandwidth * window)``. After the prefill ends
  only ``B - ov`` remains (at best the last layer's share ``B / L``). The
  overlapped part is placed on the link right before the prefill's end, in
  the window where the link was idle, so the no-overlap invariant holds.
  When the request had to wait for a decode replica the destination was not
  known during the prefill: no overlap.
"""

from __future__ import annotations

from dataclasses import dataclass

from kavier_opendc.specs.catalog import GPUSpec, ModelSpec

TRANSFER_MODES = ("whole", "layerwise")
# how a prefilled request's decode replica is chosen (engine/disaggregated.py): free-kv, the most free KV
# blocks then the fewest requests (Splitwise-sim's token-instance choice, least memory in use; Dynamo's KV
# router's decode cost, active blocks); free-slots, the most free sequence slots (max_num_seqs less the requests
# it holds) then the most free blocks (DistServe's simdistserve and Splitwise-sim's JSQ: fewest requests in
# flight; llm-d's queue scorer)
DECODE_ROUTINGS = ("free-kv", "free-slots")

# Energy per byte of KV moved over an RDMA link when none is declared. Derived, and a lower bound: the only
# figure found in the vendor's pages is the optics, 17 W for a twin-port 2 x 400 Gb/s OSFP transceiver
# (docs.nvidia.com/networking/display/800GMMS4X00NS/Overview), i.e. 17 W / 100 GB/s = 1.7e-10 J/byte per
# transceiver; a transfer crosses two (sender's and receiver's side), so 3.4e-10 J/byte. The NICs' ASICs and
# the switch are left out (no datasheet figure was at hand); declare ``energy_j_per_byte`` to include them.
DEFAULT_LINK_J_PER_BYTE = 2 * 17.0 / 100e9


@dataclass(frozen=True)
class Pool:
    """Replicas of one role (prefill or decode): the cluster's model on one GPU type, ``tp`` GPUs each."""

    model: ModelSpec
    gpu: GPUSpec
    replicas: int = 1
    tp: int = 1
    num_kv_blocks: int | None = None  # overrides the memory-derived KV capacity of each replica
    name: str | None = None  # None: "prefill"/"decode" for a role's only pool, else "<role>-<k>"
    max_num_seqs: int | None = None  # this pool's batching (None: the cluster's, i.e. SimConfig's / framework's)
    max_batched_tokens: int | None = None


@dataclass(frozen=True)
class LinkSpec:
    """The KV-transfer link between the pools."""

    gbs: float = 25.0  # bandwidth, GB/s (1e9 bytes/s): a 200 Gb/s RDMA NIC
    latency_s: float = 1e-5  # propagation, s (does not occupy the link)
    setup_s: float = 0.0  # per transfer, s (occupies the link)
    mode: str = "whole"  # whole | layerwise
    energy_j_per_byte: float | None = None  # None: DEFAULT_LINK_J_PER_BYTE

    @property
    def bytes_per_s(self) -> float:
        return self.gbs * 1e9

    @property
    def j_per_byte(self) -> float:
        return DEFAULT_LINK_J_PER_BYTE if self.energy_j_per_byte is None else self.energy_j_per_byte


@dataclass(frozen=True)
class PairLink:
    """A link of its own between prefill pool ``prefill`` and decode pool ``decode`` (indexes in their role)."""

    prefill: int
    decode: int
    spec: LinkSpec


@dataclass(frozen=True)
class Disaggregation:
    """A disaggregated topology: prefill pools, decode pools, the links between them.

    ``prefill``/``decode`` are each role's first pool; ``more_prefill``/``more_decode`` the others (Splitwise's
    heterogeneous clusters). A (prefill pool, decode pool) pair listed in ``pair_links`` has a link of its own;
    every other pair shares ``link``, one FIFO for all their transfers."""

    prefill: Pool
    decode: Pool
    link: LinkSpec = LinkSpec()
    more_prefill: tuple[Pool, ...] = ()
    more_decode: tuple[Pool, ...] = ()
    pair_links: tuple[PairLink, ...] = ()
    decode_routing: str = "free-kv"  # one of DECODE_ROUTINGS

    @property
    def prefill_pools(self) -> tuple[Pool, ...]:
        return (self.prefill, *self.more_prefill)

    @property
    def decode_pools(self) -> tuple[Pool, ...]:
        return (self.decode, *self.more_decode)

    def pools(self, role: str) -> tuple[Pool, ...]:
        return self.prefill_pools if role == "prefill" else self.decode_pools

    def pool_name(self, role: str, k: int) -> str:
        pool = self.pools(role)[k]
        if pool.name:
            return pool.name
        return role if len(self.pools(role)) == 1 else f"{role}-{k}"


class KVLink:
    """One FIFO link: reservations in submission order, each a non-overlapping occupancy interval."""

    __slots__ = ("spec", "free_at", "busy_s", "bytes_moved", "transfers")

    def __init__(self, spec: LinkSpec):
        self.spec = spec
        self.free_at = 0.0  # end of the last occupancy interval: the link is idle from then on
        self.busy_s = 0.0  # total occupancy
        self.bytes_moved = 0.0
        self.transfers = 0

    def reserve(
        self, now: float, nbytes: float, layers: int, overlap_from: float | None = None
    ) -> tuple[float, float, float]:
        """Submit a transfer of ``nbytes`` at ``now`` (callers submit in time order).

        ``overlap_from``: layerwise mode, the prefill's start when the destination was known during the
        prefill (None: no overlap). Returns (first byte sent, link released, last byte delivered).
        """
        spec = self.spec
        bw = spec.bytes_per_s
        occupancy = spec.setup_s + nbytes / bw
        ov = 0.0
        if spec.mode == "layerwise" and overlap_from is not None and layers > 1:
            window = now - max(overlap_from, self.free_at) - spec.setup_s
            if window > 0:
                ov = (layers - 1) / layers * min(nbytes, bw * window)
        if ov > 0:
            start = now - spec.setup_s - ov / bw  # >= max(overlap_from, free_at): the link was idle
        else:
            start = now if now > self.free_at else self.free_at
        end = start + occupancy
        self.free_at = end
        self.busy_s += occupancy
        self.bytes_moved += nbytes
        self.transfers += 1
        return start, end, end + spec.latency_s
