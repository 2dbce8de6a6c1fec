"""Progress snapshots: every figure a display shows, as one frozen, JSON-ready value.

``from_dict`` raises ValueError or TypeError when the data is not a snapshot's shape.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = [
    "FINAL_STATES",
    "EndpointProgress",
    "LanguageProgress",
    "ProgressSnapshot",
    "language_eta",
    "pairs",
    "slowest_first",
]

# How a run can end; "starting", "running" and "stopping" (a Ctrl-C's grace period) are the
# states a live run has.
FINAL_STATES = frozenset({"finished", "interrupted", "budget_exhausted", "failed"})

# Snapshot fields that hold (name, count) pairs, biggest first; they are objects in JSON.
_PAIR_FIELDS = frozenset(
    {
        "failed_by_reason",
        "filtered_by_reason",
        "steps_by_kind",
        "rejected_by_reason",
        "in_flight_by_kind",
        "errors_by_class",
        "batches_by_status",
    }
)

Pairs = tuple[tuple[str, int], ...]


def pairs(counts: Mapping[str, int]) -> Pairs:
    """Counts as (name, count) pairs, biggest first, then by name, dropping zeros."""
    return tuple(sorted(((k, v) for k, v in counts.items() if v), key=lambda kv: (-kv[1], kv[0])))


@dataclass(frozen=True, slots=True)
class LanguageProgress:
    """One language's conversations: finished so far, planned, active and how fast they finish."""

    language: str
    total: int | None = None  # None when the engine did not say how many are planned
    done: int = 0
    failed: int = 0
    filtered: int = 0
    active: int = 0
    rate_per_min: float = 0.0  # conversations finished per minute, recent window
    eta_s: float | None = None

    @property
    def finished(self) -> int:
        return self.done + self.failed + self.filtered

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(self.finished / self.total, 1.0)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able data, with the derived ``finished`` and ``fraction``."""
        out = {name: _finite(getattr(self, name)) for name in _LANGUAGE_FIELDS}
        out["finished"] = self.finished
        out["fraction"] = self.fraction
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LanguageProgress:
        """The inverse of ``as_dict``; derived and unknown keys are ignored."""
        return cls(
            language=str(data["language"]),
            total=None if data.get("total") is None else int(data["total"]),
            done=int(data.get("done", 0)),
            failed=int(data.get("failed", 0)),
            filtered=int(data.get("filtered", 0)),
            active=int(data.get("active", 0)),
            rate_per_min=float(data.get("rate_per_min", 0.0)),
            eta_s=None if data.get("eta_s") is None else float(data["eta_s"]),
        )


@dataclass(frozen=True, slots=True)
class EndpointProgress:
    """One endpoint's requests: sent, answered, refused with 429, failed otherwise, the tokens
    and money of its replies, its mean time at the server, and why it is out (if it is)."""

    name: str
    model: str = ""
    sent: int = 0
    ok: int = 0
    rate_limited: int = 0
    failed: int = 0  # failed attempts other than 429s
    tokens: int = 0  # prompt + completion tokens of its replies
    cost_usd: float = 0.0
    latency_s: float | None = None  # mean time at the server of its replies
    rpm: float = 0.0  # requests sent per minute, over the elapsed time
    out: str | None = None  # why it takes no more requests (None: it does)

    def as_dict(self) -> dict[str, Any]:
        return {name: _finite(getattr(self, name)) for name in _ENDPOINT_FIELDS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EndpointProgress:
        """The inverse of ``as_dict``; unknown keys are ignored."""
        latency = data.get("latency_s")
        out = data.get("out")
        return cls(
            name=str(data["name"]),
            model=str(data.get("model", "")),
            sent=int(data.get("sent", 0)),
            ok=int(data.get("ok", 0)),
            rate_limited=int(data.get("rate_limited", 0)),
            failed=int(data.get("failed", 0)),
            tokens=int(data.get("tokens", 0)),
            cost_usd=float(data.get("cost_usd", 0.0)),
            latency_s=None if latency is None else float(latency),
            rpm=float(data.get("rpm", 0.0)),
            out=None if out is None else str(out),
        )


def language_eta(remaining: int, rate_per_s: float, overall_s: float | None) -> float | None:
    """A language's time to finish: its remaining conversations at its own recent rate, but
    never past the run's ETA (the run ends when its last conversation does, whatever the
    language), and the run's ETA for a language with work left and no recent finish."""
    if remaining <= 0:
        return 0.0
    own = remaining / rate_per_s if rate_per_s > 0 else None
    if overall_s is None:
        return own
    return overall_s if own is None else min(own, overall_s)


def slowest_first(lang: LanguageProgress) -> tuple[int, float, float, str]:
    """Sort key: languages that will finish last first, complete languages last.

    With a planned total, "slowest" is the longest time to finish at the recent rate (a
    language with work left and no recent finish is slowest of all); without one, the lowest
    rate.
    """
    if lang.total is not None:
        remaining = lang.total - lang.finished
        if remaining <= 0:
            return (2, 0.0, 0.0, lang.language)
        eta = math.inf if lang.eta_s is None else lang.eta_s
        return (0, -eta, lang.fraction or 0.0, lang.language)
    return (1, lang.rate_per_min, float(lang.finished), lang.language)


@dataclass(frozen=True, slots=True)
class ProgressSnapshot:
    """A run's figures at one moment; counts are cumulative over the run, rates are recent."""

    run: str = ""
    provider: str = ""  # "embedded simulator", or the base_url's host
    unit: str = "conversations"  # what total and finished count ("requests": m2l requests)
    model: str = ""
    simulated: bool = False  # money is what the model would cost; the simulator bills nothing
    state: str = "starting"  # starting | running | one of FINAL_STATES
    message: str = ""  # why the run ended, when it has
    config_path: str = ""  # the config file the run was last started with ("" when unknown)
    elapsed_s: float = 0.0  # wall time of this session (of the whole run, when read from a store)
    # conversations
    total: int = 0
    done: int = 0
    failed: int = 0
    filtered: int = 0
    finished_before: int = 0  # finished in earlier sessions, when no breakdown was available
    active: int = 0
    failed_by_reason: Pairs = ()
    filtered_by_reason: Pairs = ()
    steps_by_kind: Pairs = ()
    # step outputs thrown away (a failed check, a truncated reply) and what they cost
    outputs_rejected: int = 0
    rejected_by_reason: Pairs = ()
    rejected_usd: float = 0.0
    conv_per_min: float = 0.0
    eta_s: float | None = None
    # requests
    in_flight: int = 0
    in_flight_by_kind: Pairs = ()
    requests_sent: int = 0
    requests_ok: int = 0
    requests_failed: int = 0
    retries: int = 0
    rate_limit_hits: int = 0
    errors_by_class: Pairs = ()
    last_error_class: str | None = None
    last_error: str | None = None
    last_error_age_s: float | None = None
    paused_s: float = 0.0  # dispatch is paused by a 429 for this much longer
    latency_s: float | None = None  # mean time at the server (sent to reply), recent window
    queued_s: float | None = None  # mean wait inside m2l before sending, recent window
    server_mean_s: float | None = None  # mean time at the server, this session
    queued_mean_s: float | None = None  # mean wait inside m2l before sending, this session
    concurrency_limit: int | None = None  # requests allowed at the server at once, latest
    # limits: rpm counts requests sent; tpm counts prompt + max_tokens, which providers charge
    rpm: float = 0.0
    rpm_limit: float | None = None
    tpm: float = 0.0
    tpm_limit: float | None = None
    tokens_per_min: float = 0.0  # prompt + completion tokens actually used
    binding_limit: str | None = None  # "rpm" | "tpm": the limit with the higher mean utilisation
    mean_utilisation: float | None = None  # of the binding limit, over the elapsed time
    # tokens and money
    tokens_in: int = 0
    tokens_out: int = 0
    tokens_reasoning: int = 0  # hidden reasoning, part of tokens_out
    tokens_cached: int = 0  # prompt tokens from the provider's cache, part of tokens_in
    reasoning_usd: float = 0.0  # the part of spent_usd paid for reasoning
    cache_saved_usd: float = 0.0  # what the prompt cache took off spent_usd
    spent_usd: float = 0.0
    reserved_usd: float = 0.0
    unknown_usd: float = 0.0  # of spent: held at worst case for attempts a kill cut short
    cap_usd: float | None = None
    projected_usd: float | None = None
    languages: tuple[LanguageProgress, ...] = ()  # slowest first
    # Several endpoints ([[providers]]): each one's figures, in the configured order.
    endpoints: tuple[EndpointProgress, ...] = ()
    # batch mode (run.mode = "batch"); batches_open None: the run uses no batches
    batches_open: int | None = None
    batches_made: int = 0  # batches created (by this session, live; by the run, from the store)
    batches_by_status: Pairs = ()  # open batches by the provider's status
    batch_requests_done: int = 0  # lines of open batches answered so far
    batch_requests_total: int = 0
    batch_oldest_age_s: float | None = None
    batch_held_usd: float | None = None  # worst cases held by lines whose outcome is unknown
    batch_waiting: int = 0  # steps ready, waiting for their batch to go out
    # a sharded run (m2l run --ray): per shard, (finished, planned, restarts, share of the
    # limits in percent); empty for a run in one process
    shards: tuple[tuple[int, int, int, int], ...] = ()

    @property
    def endpoint(self) -> str:
        """The model and where it runs, e.g. ``gpt-4o-mini on embedded simulator``."""
        if not self.model and not self.provider:
            return ""
        return f"{self.model or 'model'} on {self.provider or 'provider'}"

    @property
    def money_note(self) -> str:
        """How to read the money figures: simulated ones were never paid."""
        return "simulated: nothing was paid" if self.simulated else ""

    @property
    def finished(self) -> int:
        """Conversations in a final state: done, failed or filtered, in any session."""
        return self.done + self.failed + self.filtered + self.finished_before

    @property
    def pending(self) -> int:
        return max(self.total - self.finished - self.active, 0)

    @property
    def fraction(self) -> float | None:
        if self.total <= 0:
            return None
        return min(self.finished / self.total, 1.0)

    @property
    def rpm_util(self) -> float | None:
        return _ratio(self.rpm, self.rpm_limit)

    @property
    def tpm_util(self) -> float | None:
        return _ratio(self.tpm, self.tpm_limit)

    @property
    def spent_fraction(self) -> float | None:
        return _ratio(self.spent_usd, self.cap_usd)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able data: pair fields become objects, derived figures are included."""
        out: dict[str, Any] = {}
        for name in _SNAPSHOT_FIELDS:
            value = getattr(self, name)
            if name in _PAIR_FIELDS:
                value = dict(value)
            elif name == "languages":
                value = [lang.as_dict() for lang in value]
            elif name == "endpoints":
                value = [endpoint.as_dict() for endpoint in value]
            out[name] = _finite(value)
        out.update(
            finished=self.finished,
            pending=self.pending,
            fraction=self.fraction,
            rpm_util=self.rpm_util,
            tpm_util=self.tpm_util,
        )
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProgressSnapshot:
        """The inverse of ``as_dict``: derived, unknown keys ignored; missing ones default."""
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                continue
            value = data[f.name]
            if f.name in _PAIR_FIELDS:
                value = pairs({str(k): int(n) for k, n in dict(value).items()})
            elif f.name == "languages":
                value = tuple(LanguageProgress.from_dict(item) for item in value)
            elif f.name == "endpoints":
                value = tuple(EndpointProgress.from_dict(item) for item in value)
            elif f.name == "shards":
                value = tuple((int(a), int(b), int(c), int(d)) for a, b, c, d in value)
            kwargs[f.name] = value
        return cls(**kwargs)


_LANGUAGE_FIELDS = tuple(f.name for f in fields(LanguageProgress))
_ENDPOINT_FIELDS = tuple(f.name for f in fields(EndpointProgress))
_SNAPSHOT_FIELDS = tuple(f.name for f in fields(ProgressSnapshot))


def _finite(value: Any) -> Any:
    """JSON has no infinity or NaN; readers treat None as "not known"."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _ratio(value: float, limit: float | None) -> float | None:
    if limit is None or limit <= 0:
        return None
    return value / limit
