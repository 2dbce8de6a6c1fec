"""Token counting for the simulator's usage figures, with a cache of counts by message content.

A multi-turn conversation resends its whole history at every turn, so the same contents arrive
again and again; counting each string once keeps the server's CPU per request low. Counts are
OpenAI's chat counting, the same as ``engine.tokens.TokenCounter.message``. Nothing here raises.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import tiktoken

from engine.chat import REPLY_PRIMING_TOKENS, TOKENS_PER_MESSAGE
from engine.tokens import encoding_for_model, get_encoding

__all__ = ["UsageCounter"]

_CACHE_SIZE = 1 << 14  # contents remembered per encoding: bounds memory to tens of MB


class UsageCounter:
    """Counts prompt and completion tokens per model, caching content counts by string."""

    __slots__ = ("_by_encoding", "_encoding_of")

    def __init__(self) -> None:
        self._encoding_of: dict[str, str] = {}
        self._by_encoding: dict[str, tuple[tiktoken.Encoding, Callable[[str], int]]] = {}

    def _for(self, model: str) -> tuple[tiktoken.Encoding, Callable[[str], int]]:
        name = self._encoding_of.get(model)
        if name is None:
            name = self._encoding_of[model] = encoding_for_model(model)
        entry = self._by_encoding.get(name)
        if entry is None:
            encoding = get_encoding(name)

            def count(text: str) -> int:
                return len(encoding.encode_ordinary(text))

            entry = self._by_encoding[name] = (
                encoding,
                functools.lru_cache(maxsize=_CACHE_SIZE)(count),
            )
        return entry

    def encoding(self, model: str) -> tiktoken.Encoding:
        return self._for(model)[0]

    def count(self, model: str, text: str) -> int:
        """Tokens in ``text`` (cached)."""
        return self._for(model)[1](text)

    def prompt_tokens(self, model: str, messages: Sequence[tuple[str, str]]) -> int:
        """OpenAI's prompt count: per message 3 + role + content tokens, plus 3 reply priming."""
        count = self._for(model)[1]
        return REPLY_PRIMING_TOKENS + sum(
            TOKENS_PER_MESSAGE + count(role) + count(content) for role, content in messages
        )

    def message_tokens(self, model: str, messages: Sequence[tuple[str, str]]) -> list[int]:
        """Each message's tokens with its framing (they sum to prompt_tokens minus priming)."""
        count = self._for(model)[1]
        return [TOKENS_PER_MESSAGE + count(role) + count(content) for role, content in messages]

    def truncate(self, model: str, text: str, max_tokens: int) -> str:
        """The longest prefix of ``text``, cut at a token boundary, of at most max_tokens tokens."""
        encoding = self._for(model)[0]
        tokens = encoding.encode_ordinary(text)
        if len(tokens) <= max_tokens:
            return text
        keep = max_tokens
        while keep > 0:
            # A cut inside a multi-byte character leaves a partial byte sequence: drop it.
            prefix = encoding.decode_bytes(tokens[:keep]).decode("utf-8", errors="ignore")
            if len(encoding.encode_ordinary(prefix)) <= max_tokens:
                return prefix
            keep -= 1
        return ""
