"""The simulator's counters, read by benchmarks (GET /stats) to compute limit utilisation.

Nothing here raises.
"""

from __future__ import annotations

from collections import Counter

__all__ = ["SimStats"]


class SimStats:
    """Counts of requests, admissions, 429s, faults and tokens since start or the last reset."""

    __slots__ = (
        "admitted",
        "by_status",
        "cached_tokens",
        "completion_tokens",
        "faults",
        "first_admission_s",
        "flex_unavailable",
        "in_flight",
        "last_admission_s",
        "prompt_tokens",
        "rate_limited",
        "reasoning_tokens",
        "rejected",
        "requests",
        "tokens_charged",
    )

    def __init__(self) -> None:
        self.requests = 0  # chat completion requests received
        self.admitted = 0  # passed validation and the rate limits (and were charged)
        self.in_flight = 0  # not reset: requests being answered right now
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.admitted = 0
        self.by_status: Counter[int] = Counter()
        self.rate_limited: Counter[str] = Counter()  # "requests" | "tokens"
        self.faults: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()  # 4xx other than 429, by kind
        self.tokens_charged = 0  # prompt + max_tokens of every admitted request
        self.prompt_tokens = 0  # of replies delivered whole
        self.completion_tokens = 0
        self.cached_tokens = 0  # part of prompt_tokens
        self.reasoning_tokens = 0  # part of completion_tokens
        self.flex_unavailable = 0  # flex tries refused for capacity (429, not a rate limit)
        self.first_admission_s: float | None = None
        self.last_admission_s: float | None = None

    def admit(self, now: float, charge: int) -> None:
        self.admitted += 1
        self.tokens_charged += charge
        if self.first_admission_s is None:
            self.first_admission_s = now
        self.last_admission_s = now

    def as_dict(self, now: float) -> dict[str, object]:
        """A JSON-ready snapshot; ``now_s`` is the server's monotonic clock when it was taken."""
        return {
            "requests": self.requests,
            "admitted": self.admitted,
            "in_flight": self.in_flight,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "rate_limited": {
                "requests": self.rate_limited["requests"],
                "tokens": self.rate_limited["tokens"],
            },
            "faults": dict(sorted(self.faults.items())),
            "rejected": dict(sorted(self.rejected.items())),
            "tokens_charged": self.tokens_charged,
            "tokens_used": {
                "prompt": self.prompt_tokens,
                "completion": self.completion_tokens,
                "total": self.prompt_tokens + self.completion_tokens,
                "cached": self.cached_tokens,
                "reasoning": self.reasoning_tokens,
            },
            "flex_unavailable": self.flex_unavailable,
            "first_admission_s": self.first_admission_s,
            "last_admission_s": self.last_admission_s,
            "now_s": now,
        }
