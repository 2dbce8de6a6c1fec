"""The simulator's prompt cache: which leading messages of a prompt it has seen before.

OpenAI caches a prompt's prefix once it is at least 1024 tokens long and reports hits in steps of
128 tokens; a multi-turn conversation resends its history, so from some turn on most of each
prompt is a hit. The simulator keys prefixes by whole messages (a request's model, its
``prompt_cache_key`` and each leading run of messages), which is what a conversation repeats.
Memory is bounded: the oldest prefixes are forgotten first. Nothing here raises.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

__all__ = ["CACHE_STEP", "PromptCache"]

CACHE_STEP = 128  # OpenAI reports cached tokens in increments of 128
# The simulator runs inside `m2l run` for `make demo` and the benchmarks, so what it keeps counts
# in the run's memory: an entry (a 16-byte digest in an OrderedDict) takes ~155 bytes, and a
# finished conversation leaves ~10 prefixes behind. At 200,000 the cache grew by ~1.3 MB per
# 1,000 conversations until ~20,000 (31 MB), which was most of a run's growth after warm-up
# (issue #21). A prefix only has to outlive the gap to its conversation's next request, and a
# hit moves it to the young end: in bench/scale.py's run (512 active conversations) 99% of hits
# came within 2,000 new prefixes of the last use and all within 7,200, so 32,768 (~5 MB, full
# after ~3,000 conversations) forgets no live history there, with room for several times as
# many conversations in flight.
_MAX_PREFIXES = 32_768


class PromptCache:
    """Remembers message prefixes; ``lookup_and_store`` gives the cached tokens of a prompt."""

    __slots__ = ("_max_prefixes", "_min_tokens", "_seen")

    def __init__(self, min_tokens: int = 1024, max_prefixes: int = _MAX_PREFIXES) -> None:
        self._min_tokens = min_tokens
        self._max_prefixes = max_prefixes
        self._seen: OrderedDict[bytes, None] = OrderedDict()

    def lookup_and_store(
        self, scope: str, messages: Sequence[tuple[str, str]], message_tokens: Sequence[int]
    ) -> int:
        """Cached tokens of this prompt (its longest prefix seen before), then remember it.

        ``message_tokens[i]`` is the token count of ``messages[i]`` with its framing.
        """
        h = hashlib.blake2b(scope.encode(), digest_size=16)
        cached = total = 0
        digests = []
        for (role, content), tokens in zip(messages, message_tokens, strict=True):
            h.update(b"\x00" + role.encode() + b"\x01" + content.encode())
            digest = h.copy().digest()
            digests.append(digest)
            total += tokens
            if digest in self._seen:
                self._seen.move_to_end(digest)
                cached = total
        for digest in digests:
            self._seen[digest] = None
        while len(self._seen) > self._max_prefixes:
            self._seen.popitem(last=False)
        if cached < self._min_tokens:
            return 0
        return cached - (cached - self._min_tokens) % CACHE_STEP

    def __len__(self) -> int:
        return len(self._seen)

    def clear(self) -> None:
        self._seen.clear()
