"""The simulator's configuration: listening address, limits, latency, content bounds and faults.

Raises ConfigError (``engine._typed_toml.Invalid``, from ``__post_init__``) when a value is out
of range, naming the field, the allowed range and the value found.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field, fields
from typing import Literal

from engine._typed_toml import Invalid, at_least, between, internal, non_negative, positive

__all__ = ["FAULT_KINDS", "FaultRates", "SimSettings"]

# The order in which fault kinds share the unit interval of one draw (see faults.draw_fault).
FAULT_KINDS: tuple[str, ...] = (
    "server_error",
    "unavailable",
    "reset",
    "hang",
    "truncated",
    "wrong_language",
    "repetition",
)


@dataclass(frozen=True, slots=True)
class FaultRates:
    """Probability of each injected fault per admitted request; their sum must not exceed 1."""

    server_error: float = 0.0  # HTTP 500
    unavailable: float = 0.0  # HTTP 503
    reset: float = 0.0  # connection dropped mid-body
    hang: float = 0.0  # no answer for SimSettings.hang_s seconds
    truncated: float = 0.0  # HTTP 200 whose JSON body is cut short
    wrong_language: float = 0.0  # a reply in another language than asked
    repetition: float = 0.0  # a reply that repeats one phrase over and over

    def __post_init__(self) -> None:
        for kind in FAULT_KINDS:
            between(self, kind, 0.0, 1.0)
        if self.total > 1.0 + 1e-9:
            raise Invalid(
                "faults", "add up to more than 1; lower them so the sum is at most 1", self.total
            )

    @property
    def total(self) -> float:
        return float(sum(getattr(self, kind) for kind in FAULT_KINDS))

    def as_dict(self) -> dict[str, float]:
        return {kind: getattr(self, kind) for kind in FAULT_KINDS}


@dataclass(frozen=True, slots=True)
class SimSettings:
    """Everything one simulator instance needs; the defaults look like a fast gpt-4o endpoint."""

    host: str = "127.0.0.1"
    port: int = 0  # 0 = let the OS pick a free port
    seed: int = 0
    model: str = "gpt-4o-sim"
    models: tuple[str, ...] = ()  # listed by GET /v1/models besides `model`
    rpm: int | None = None  # requests per minute; None = unlimited
    tpm: int | None = None  # tokens per minute; None = unlimited
    bucket_seconds: float = 60.0  # bucket capacity = limit * bucket_seconds / 60
    ttft_s: float = 0.2
    per_token_s: float = 0.005
    jitter: float = 0.1  # latency is multiplied by a factor drawn in [1 - jitter, 1 + jitter]
    min_completion_tokens: int = 20
    max_completion_tokens: int = 400
    # "uniform": budgets uniform in min..max_completion_tokens, instructions a sentence or two;
    # "realistic": a real model's lengths per step kind and language (simulator/lengths.py).
    reply_lengths: Literal["uniform", "realistic"] = "uniform"
    default_max_tokens: int = 1024  # charged when a request sets no max_tokens
    context_window: int = 128_000
    hang_s: float = 30.0
    # Server capacity (a self-hosted GPU server): None = unlimited parallelism, as before.
    slots: int | None = None  # requests decoded at once; more wait in a queue
    batch_slowdown: float = 1.5  # a full batch takes this many times as long per request
    queue_limit: int | None = None  # waiting requests beyond which a new one gets 503
    faults: FaultRates = field(default_factory=FaultRates)
    unknown_models_404: bool = False
    # The Batch API: create → completed takes batch_delay_s; a batch still running
    # batch_expire_s after its creation expires (None: never); cancelling lasts batch_cancel_s;
    # batch_line_failure_rate of the lines are answered 500 in the error file.
    batch_delay_s: float = 2.0
    batch_expire_s: float | None = None
    # At most this many batches expire (None: every one still running at batch_expire_s), so a
    # test can expire the first batch of a run and let the resubmitted lines complete.
    batch_expire_count: int | None = None
    batch_cancel_s: float = 0.2
    batch_line_failure_rate: float = 0.0
    # The key a client must send, never shown in reprs, never read from (or stored with) a
    # run's config: `m2l sim --require-api-key-env` reads it from the environment.
    require_api_key: str | None = internal(None, repr=False)
    # Reasoning models, as OpenAI serves them: names matching one of these globs (any case)
    # refuse max_tokens and a temperature or top_p other than the default, take
    # reasoning_effort, and spend hidden reasoning tokens inside max_completion_tokens.
    reasoning_models: tuple[str, ...] = ("o[0-9]*", "gpt-5*")
    reasoning_efforts: tuple[str, ...] = ("minimal", "low", "medium", "high")
    # Flex processing: the models that offer it, how much slower it answers, and the share of
    # flex requests refused with 429 "resource unavailable" (not charged, not a rate limit).
    flex_models: tuple[str, ...] = ("o3*", "o4-mini*", "gpt-5*")
    flex_slowdown: float = 2.0
    flex_unavailable: float = 0.0
    # Prompt caching: a prompt whose leading messages were seen before reports them as cached
    # tokens, from this many on, in steps of 128 (OpenAI's 1024 and 128).
    cache_min_tokens: int = 1024
    # Parameters answered with 400 unsupported_parameter, as some servers do (e.g. an older
    # server that knows only max_tokens refuses "max_completion_tokens").
    refuse_params: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        between(self, "port", 0, 65535)  # 0: any free port
        if not self.model:
            raise Invalid("model", "must name a model", self.model)
        at_least(self, "rpm", 1, unset=" (leave it out for no limit)")
        at_least(self, "tpm", 1, unset=" (leave it out for no limit)")
        positive(self, "bucket_seconds")
        for name in ("ttft_s", "per_token_s", "hang_s"):
            non_negative(self, name)
        between(self, "jitter", 0.0, 1.0, high_open=True)
        at_least(self, "min_completion_tokens", 1)
        if self.max_completion_tokens < self.min_completion_tokens:
            raise Invalid(
                "max_completion_tokens",
                f"must be at least min_completion_tokens ({self.min_completion_tokens})",
                self.max_completion_tokens,
            )
        at_least(self, "default_max_tokens", 1)
        at_least(self, "context_window", 2)
        between(self, "flex_unavailable", 0.0, 1.0)
        at_least(self, "flex_slowdown", 1)
        at_least(self, "cache_min_tokens", 1)
        if not self.reasoning_efforts:
            raise Invalid("reasoning_efforts", "needs at least one effort", [])
        at_least(self, "slots", 1, unset=" (leave it out for no limit)")
        # 1: a full batch decodes as fast as one request.
        at_least(self, "batch_slowdown", 1)
        at_least(self, "queue_limit", 0, unset=" (leave it out for no bound)")
        non_negative(self, "batch_delay_s")
        non_negative(self, "batch_cancel_s")
        positive(self, "batch_expire_s", unset=" (leave it out for batches that never expire)")
        at_least(self, "batch_expire_count", 1, unset=" (leave it out for no limit)")
        between(self, "batch_line_failure_rate", 0.0, 1.0)

    @property
    def listed_models(self) -> tuple[str, ...]:
        """The models GET /v1/models reports: `model` first, then `models`, without repeats."""
        return tuple(dict.fromkeys((self.model, *self.models)))

    def is_reasoning(self, model: str) -> bool:
        """Whether ``model`` is served as a reasoning model."""
        return _matches(model, self.reasoning_models)

    def offers_flex(self, model: str) -> bool:
        return _matches(model, self.flex_models)

    @property
    def limited(self) -> bool:
        return self.rpm is not None or self.tpm is not None

    def describe(self) -> dict[str, object]:
        """A JSON-friendly view for logs and /stats; the API key is never included."""
        out: dict[str, object] = {}
        for f in fields(self):
            if f.name == "require_api_key":
                out["requires_api_key"] = self.require_api_key is not None
            elif f.name == "faults":
                out["faults"] = self.faults.as_dict()
            elif f.name == "models":
                out["models"] = list(self.listed_models)
            else:
                out[f.name] = getattr(self, f.name)
        return out


def _matches(model: str, patterns: tuple[str, ...]) -> bool:
    name = model.lower().rsplit("/", 1)[-1]  # "openai/gpt-5-mini" is gpt-5-mini
    return any(fnmatch.fnmatchcase(name, p.lower()) for p in patterns)
