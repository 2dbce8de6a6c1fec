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
_MAX_PREFIXES = 200_000  # ~20 MB of digests: enough for every live conversation of a big run


class PromptCache:
    """Remembers message prefixes; ``lookup_and_store`` gives the cached tokens of a prompt."""

    __slots__ = ("_min_tokens", "_seen")

    def __init__(self, min_tokens: int = 1024) -> None:
        self._min_tokens = min_tokens
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
        while len(self._seen) > _MAX_PREFIXES:
            self._seen.popitem(last=False)
        if cached < self._min_tokens:
            return 0
        return cached - (cached - self._min_tokens) % CACHE_STEP

    def clear(self) -> None:
        self._seen.clear()
