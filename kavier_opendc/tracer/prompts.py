"""Prompts of an exact token count.

Every prompt is a fresh sequence of common English words drawn with the run's
seed, so no two prompts share a prefix (a server's prefix cache must not make
the measurement cheaper than the trace says).

* With the server's tokenizer (vLLM's ``POST /tokenize``) the word count is
  adjusted until the server counts exactly the target (a few calls per prompt).
* Without one, the number of tokens per character is calibrated from two
  probe completions (``max_tokens: 1``) and their ``usage.prompt_tokens``; the
  real count of every measured request is then read from its own ``usage``
  and recorded next to the target.

Nothing is downloaded: no tokenizer files, no datasets.
"""

from __future__ import annotations

import numpy as np

from kavier_opendc.tracer.client import Endpoint, RequestFailed, RequestRecord

WORDS = tuple(
    """
time year people way day man thing woman life child world school state family student group country
problem hand part place case week company system program question work government number night point
home water room mother area money story fact month lot right study book eye job word business issue
side kind head house service friend father power hour game line end member law car city community name
president team minute idea kid body information back parent face others level office door health person
art war history party result change morning reason research girl guy moment air teacher force education
foot boy age policy music market sense nation plan college interest death course someone experience
effect class control care field development role effort rate heart drug show leader light voice wife
police mind price report decision son view relationship town road arm difference value building action
model season society tax director position player record paper space ground form event official matter
center couple site project activity star table need court oil situation cost industry figure street
image phone data picture practice piece land product doctor wall patient worker news test movie north
love support technology step baby computer type attention film tree source organization hair window
evidence population truth song energy bank""".split()
)


class PromptBuilder:
    """Builds a prompt of ``n`` tokens; ``method`` says how exactness is ensured."""

    def __init__(self, endpoint: Endpoint, seed: int = 0):
        self.ep = endpoint
        self.seed = seed
        self.method = "tokenize" if endpoint.has_tokenize else "estimate"
        self.tokens_per_char: float | None = None
        self.offset_tokens: float = 1.0  # tokens the server adds (BOS) or that the first word costs extra
        self.chars_per_word = float(np.mean([len(w) + 1 for w in WORDS]))

    def _words(self, request_id: int, k: int) -> list[str]:
        rng = np.random.default_rng([self.seed, request_id & 0xFFFFFFFF, 7919])
        return [WORDS[i] for i in rng.integers(0, len(WORDS), size=max(1, k))]

    async def calibrate(self, clock0: float) -> None:
        """Without /tokenize: tokens per character from two probe completions (usage.prompt_tokens)."""
        if self.method == "tokenize":
            return
        counts = []
        texts = [" ".join(self._words(-1, 40)), " ".join(self._words(-2, 400))]
        for text in texts:
            rec = RequestRecord(-1, 0.0, 0, 1)
            await self.ep.stream(rec, text, 1, clock0)
            if rec.status != "finished" or rec.prompt_tokens is None:
                counts = []
                break
            counts.append(rec.prompt_tokens)
        if len(counts) == 2 and counts[1] > counts[0]:
            self.tokens_per_char = (counts[1] - counts[0]) / (len(texts[1]) - len(texts[0]))
            self.offset_tokens = counts[0] - self.tokens_per_char * len(texts[0])
        else:  # the server reports no usage: one token per word, plus one, is a common tokenizer's ratio
            self.tokens_per_char = 1.0 / self.chars_per_word
            self.offset_tokens = 1.0
            self.method = "estimate-unchecked"

    @property
    def chars_per_token(self) -> float | None:
        return None if not self.tokens_per_char else 1.0 / self.tokens_per_char

    async def build(self, request_id: int, n: int) -> tuple[str, int | None]:
        """(prompt text, the server tokenizer's count or None when it was estimated)."""
        if self.method != "tokenize":
            target = max(1.0, (n - self.offset_tokens) / (self.tokens_per_char or 1.0 / self.chars_per_word))
            text = ""
            for w in self._words(request_id, int(target / 4) + 8):  # words have >= 3 letters
                cand = f"{text} {w}" if text else w
                if len(cand) > target and text:
                    if len(cand) - target < target - len(text):
                        text = cand
                    break
                text = cand
            return text, None
        words = self._words(request_id, n + 64)
        k = max(1, n - 1)
        seen: dict[int, int] = {}
        best = None
        for _ in range(24):
            if k >= len(words):
                words = words + self._words(request_id + 1_000_003 * len(words), k - len(words) + 64)
            c = await self.ep.count_tokens(" ".join(words[:k]))
            seen[k] = c
            if best is None or abs(c - n) < abs(best[1] - n):
                best = (k, c)
            if c == n:
                return " ".join(words[:k]), c
            step = n - c
            nk = max(1, k + (step if abs(step) > 1 else (1 if step > 0 else -1)))
            if nk in seen:  # a word is worth two tokens here: swap the last word for another one
                words[k - 1] = (
                    WORDS[(WORDS.index(words[k - 1]) + 1) % len(WORDS)] if words[k - 1] in WORDS else WORDS[0]
                )
                seen.pop(k, None)
                continue
            k = nk
        return " ".join(words[: best[0]]), best[1]


__all__ = ["PromptBuilder", "RequestFailed", "WORDS"]
