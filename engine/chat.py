"""The values that cross the dispatch boundary: messages, requests, usage and results.

A message carries its token count, computed once when it is made: a conversation's history is
sent again at every turn, and recounting it each time would cost more CPU than the HTTP call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from engine.headers import RateLimitSnapshot

__all__ = [
    "REPLY_PRIMING_TOKENS",
    "TOKENS_PER_MESSAGE",
    "ChatRequest",
    "ChatResult",
    "Delivery",
    "Message",
    "Usage",
    "cost_parts",
]

# OpenAI's documented chat overhead (gpt-3.5-turbo-0613, gpt-4 and later): every message is
# wrapped as <|start|>{role}\n{content}<|end|>\n (3 tokens + the role's own token), and every
# reply is primed with <|start|>assistant<|message|> (3 tokens).
TOKENS_PER_MESSAGE = 3
REPLY_PRIMING_TOKENS = 3


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message and its token count (role token + content tokens + framing)."""

    role: str
    content: str
    tokens: int

    def as_openai(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A chat completion to send: the messages, the sampling settings, and its token charge.

    ``key`` names the request for logs and the state store (``conversation:step``); it never
    reaches the provider.
    """

    messages: tuple[Message, ...]
    max_tokens: int
    temperature: float = 0.7
    json_mode: bool = False
    key: str = ""
    seed: int | None = None
    service_tier: str | None = None  # overrides provider.service_tier (flex fallback: "default")
    # A caller's own OpenAI body (``m2l requests``): sent as it is, and answered with the whole
    # reply object (ChatResult.response); ``messages`` and ``max_tokens`` then only count it.
    raw: Mapping[str, Any] | None = None
    prompt_tokens: int = field(init=False)

    def __post_init__(self) -> None:
        if not self.messages:
            raise ValueError("a chat request needs at least one message")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        total = REPLY_PRIMING_TOKENS + sum(m.tokens for m in self.messages)
        object.__setattr__(self, "prompt_tokens", total)

    @property
    def charge(self) -> int:
        """Tokens a provider counts against TPM at admission: prompt + max_tokens."""
        return self.prompt_tokens + self.max_tokens

    def body(self, model: str) -> dict[str, Any]:
        """The JSON body for ``POST /chat/completions`` as a plain OpenAI-compatible server takes
        it (``engine.requestshape`` adapts it to the provider and model); a raw body as it is."""
        if self.raw is not None:
            return dict(self.raw)
        body: dict[str, Any] = {
            "model": model,
            "messages": [m.as_openai() for m in self.messages],
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }
        if self.json_mode:
            body["response_format"] = {"type": "json_object"}
        if self.seed is not None:
            body["seed"] = self.seed
        return body


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage as the provider reported it."""

    prompt_tokens: int
    completion_tokens: int  # hidden reasoning tokens included, as OpenAI counts them
    cached_tokens: int = 0  # part of prompt_tokens
    reasoning_tokens: int = 0  # part of completion_tokens
    service_tier: str | None = None  # the tier that served (and prices) the request

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class ChatResult:
    """A successful completion."""

    content: str
    finish_reason: str
    usage: Usage
    model: str
    ratelimit: RateLimitSnapshot
    latency_s: float
    cost_usd: float = 0.0  # what the attempt cost, set by the dispatcher once it is settled
    # The whole reply object, redacted, for a request sent with a raw body (else None).
    response: Mapping[str, Any] | None = None


class Delivery:
    """Whether an attempt's request was written to the server: an attempt cancelled before
    that (still connecting) never left the machine and cost nothing.

    ``written`` starts True (a completer that cannot tell is assumed to have sent); the HTTP
    client sets it False before connecting and True once the request headers are out.
    """

    __slots__ = ("written",)

    def __init__(self) -> None:
        self.written = True


def cost_parts(price: Callable[[Usage], float], usage: Usage, cost: float) -> tuple[float, float]:
    """(what hidden reasoning cost, what the prompt cache saved) of a reply that cost ``cost``,
    by pricing it again without the reasoning tokens and without the cache discount."""
    reasoning = 0.0
    if usage.reasoning_tokens:
        unreasoned = replace(
            usage, completion_tokens=usage.completion_tokens - usage.reasoning_tokens
        )
        reasoning = cost - price(unreasoned)
    saved = price(replace(usage, cached_tokens=0)) - cost if usage.cached_tokens else 0.0
    return reasoning, saved
