"""Speculative decoding (vLLM v1 / SGLang / TensorRT-LLM style): draft k tokens, verify them in one target pass.

Each decode step of a sequence runs the target model on k+1 tokens (its last sampled token and k drafted
ones): the step's tokens are (k+1) x decoders (GEMM FLOPs and attention pairs grow, weight reads do not)
and it emits, with i.i.d. per-token acceptance a, on average

    E = (1 - a^(k+1)) / (1 - a)      (accepted drafts + 1 bonus token; Leviathan et al. 2023, eq. 1)

tokens. The simulation is deterministic: a replica's decode steps emit m_j = floor(j E) - floor((j-1) E)
tokens at its j-th decode step (the same for all its decoders; a run of n steps emits n E to within one
token), so the lazy decode counter still advances every decoder together. The KV of the accepted tokens
stays; blocks are checked for k+1 tokens per decoder (the verify pass writes them) and only the m kept
tokens' blocks stay allocated (rejected ones are rolled back).

Draft cost per step (added to the step's time):
- ngram (prompt lookup): a CPU lookup, NGRAM_STEP_S + NGRAM_SEQ_S per sequence (assumed);
- draft: k sequential decode steps of the draft model at the same batch and contexts (its own cost model;
  its weights and KV cache are not taken from the target's KV capacity: an underestimate of memory);
- eagle / mtp: k steps of one extra decoder layer, each 1/L of the target's decode step at that batch
  (L = the target's layers; the draft's LM head is counted in that share only: an underestimate).

Default acceptance rates (the data has none; all *assumed*): ngram 0.5, draft 0.6 (Leviathan et al. 2023,
"Fast Inference from Transformers via Speculative Decoding", alpha 0.5-0.8 over their model pairs), eagle
0.75 (Li et al. 2024, EAGLE, acceptance length ~3-3.5 tokens for k=4 chains on MT-bench: a ~0.7-0.8), mtp
0.85 (DeepSeek-V3 technical report, 2024: 85-90 % acceptance of the second token).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kavier_opendc.base.errors import KavierInputError
from kavier_opendc.specs.catalog import ModelSpec

METHODS = ("ngram", "draft", "eagle", "mtp")
#: per-token acceptance probability by method (assumed; sources in the module doc)
DEFAULT_ACCEPTANCE = {"ngram": 0.5, "draft": 0.6, "eagle": 0.75, "mtp": 0.85}
DEFAULT_K = 3
NGRAM_STEP_S = 1e-4  # assumed CPU time of a prompt-lookup step
NGRAM_SEQ_S = 2e-6  # assumed, per sequence
#: policies whose speculative decoding is simulated: vLLM v1's scheduler counts k+1 tokens per decoding request
#: against its token budget; TensorRT-LLM's micro-batch scheduler does the same (a generation request's
#: draft tokens + 1, microBatchScheduler.cpp), and scheduler_trtllm.py takes vLLM v1's walk of the running
#: requests. Its GUARANTEED_NO_EVICT reservation stays prompt + max new tokens (getRemainingBlocksToCompletion
#: counts no draft tokens, kvCacheManager.cpp), so the drafts' blocks come from the free ones for the step.
POLICIES = ("vllm-v1", "trtllm")
#: why the other policies refuse it (the error names the field)
NOT_SIMULATED = {
    "vllm-v0": "vLLM v0 ran speculative decoding in a separate spec-decode worker with its own batch expansion "
    "(removed in v1), which is not modelled",
    "sglang": "SGLang's EAGLE/MTP decoding runs draft-extend and verify batches of its own (its speculative "
    "worker), which its scheduler here does not model",
}


def expected_tokens(a: float, k: int) -> float:
    """E = (1 - a^(k+1)) / (1 - a): tokens emitted per verify step (accepted drafts + 1 bonus)."""
    if a == 0.0:
        return 1.0
    return (1.0 - a ** (k + 1)) / (1.0 - a)


@dataclass(frozen=True)
class Speculative:
    """A resolved speculative-decoding setup."""

    method: str
    k: int
    acceptance: float
    acceptance_source: str  # "given" or "assumed default (...)"
    draft_model: ModelSpec | None = None  # ModelSpec of the draft (method draft)

    @property
    def mean_tokens_per_step(self) -> float:
        return expected_tokens(self.acceptance, self.k)

    def summary(self) -> dict:
        return {
            "method": self.method,
            "num_speculative_tokens": self.k,
            "acceptance_rate": self.acceptance,
            "acceptance_rate_source": self.acceptance_source,
            "draft_model": getattr(self.draft_model, "name", None),
            "mean_accepted_length": self.mean_tokens_per_step,
        }


def resolve(method, k, a, draft_model, target, catalog_model) -> Speculative | None:
    """Check the knobs and build the setup (None: off). ``catalog_model(name)`` looks a draft model up."""
    if method is None or method == "none":
        for field, v in (("num_speculative_tokens", k), ("spec_acceptance_rate", a), ("draft_model", draft_model)):
            if v is not None:
                raise KavierInputError(
                    f"{field} is set but speculative decoding is off",
                    location=field,
                    expected="also a speculative_method (ngram, draft, eagle or mtp)",
                )
        return None
    m = str(method).strip().lower()
    if m not in METHODS:
        raise KavierInputError(
            f"unknown speculative method {method!r}",
            location="speculative_method",
            expected="one of " + ", ".join(METHODS),
        )
    k = DEFAULT_K if k is None else k
    if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k > 16:
        raise KavierInputError(
            f"invalid number of speculative tokens {k!r}",
            location="num_speculative_tokens",
            expected="a whole number from 1 to 16",
        )
    if a is None:
        acc, src = DEFAULT_ACCEPTANCE[m], f"assumed default for {m} (no acceptance data; see README)"
    else:
        acc, src = a, "given"
        if isinstance(a, bool) or not isinstance(a, int | float) or not (0.0 <= a < 1.0) or math.isnan(a):
            raise KavierInputError(
                f"invalid speculative acceptance rate {a!r}",
                location="spec_acceptance_rate",
                expected="a per-token acceptance probability in [0, 1)",
            )
    draft = None
    if m == "draft":
        if draft_model is None:
            raise KavierInputError(
                "speculative method 'draft' needs a draft model",
                location="draft_model",
                expected="a catalogue model name ('kavier catalog' lists them)",
            )
        try:
            draft = catalog_model(draft_model) if isinstance(draft_model, str) else draft_model
        except KavierInputError as e:  # the catalogue's own words, at the draft model's field
            raise e.relocated("draft_model") from None
        if draft.active_params >= target.active_params:
            raise KavierInputError(
                f"draft model {draft.name} ({draft.active_params / 1e9:.2f}B active parameters) is not smaller "
                f"than the target {target.name} ({target.active_params / 1e9:.2f}B)",
                location="draft_model",
                expected="a catalogue model smaller than the served one",
            )
    elif draft_model is not None:
        raise KavierInputError(
            f"a draft model is only used by speculative method 'draft', not {m!r}",
            location="draft_model",
            expected="no draft_model, or speculative_method draft",
        )
    return Speculative(m, int(k), float(acc), src, draft)
