"""The run configuration: one TOML file parsed once, at the edge, into frozen typed objects.

Every section is a dataclass; ``engine._typed_toml`` checks types and rejects unknown keys. The API
key is never part of the config: the config names an environment variable, and the key is read
from it once into a ``Secret`` whose repr hides it.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import tomllib
import types
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import orjson

from engine._typed_toml import (
    INTERNAL,
    Invalid,
    at_least,
    between,
    from_table,
    internal,
    non_negative,
    plain,
    positive,
)
from engine.capabilities import CapabilityOverride
from engine.errors import ConfigError
from engine.simsettings import SimSettings

__all__ = [
    "AdaptiveTokens",
    "BatchConfig",
    "BudgetConfig",
    "Config",
    "EndpointConfig",
    "GenerationConfig",
    "LimitsConfig",
    "PriceOverride",
    "ProviderConfig",
    "QualityConfig",
    "RequestsConfig",
    "RequestsSettings",
    "RetryConfig",
    "RunConfig",
    "Secret",
    "SeedColumns",
    "SeedsConfig",
    "StepEfforts",
    "StepTokens",
    "StoreConfig",
    "added_at_default",
    "config_defaults",
    "config_diff",
    "load_config",
    "load_requests_config",
    "parse_config",
]

_EMPTY: Mapping[str, Any] = types.MappingProxyType({})
NO_LIMIT = " (leave it out for no limit)"
NO_CAP = " (leave it out for no cap)"
HIDDEN: Any = ...  # an Invalid whose value must not be shown
# Header and query parameter names that carry credentials: their values would be stored with the
# run's config (and shown by a resume's diff), so the key must come from api_key_env instead.
_SECRET_NAME = re.compile(
    r"(?i)authorization|cookie|api[-_]?key|subscription[-_]?key|secret|password|token|"
    r"signature|^(x-)?(auth|key|sig|code)$"
)
_SECRET_VALUE = re.compile(r"(?i)\s*(bearer|basic)\s|\s*(sk|sess|rk)-[A-Za-z0-9_\-]{8,}")
_HEADER_NAME = re.compile(r"auto|[A-Za-z0-9!#$%&'*+.^_`|~-]+")


class Secret:
    """A string that never shows itself in repr, str, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """Where requests go. ``kind = "auto"`` means the simulator unless the key variable is set."""

    kind: Literal["auto", "sim", "openai"] = "auto"
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str = "OPENAI_API_KEY"
    model: str = "gpt-4o"
    headers: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    query: Mapping[str, str] = field(default_factory=lambda: _EMPTY)  # e.g. Azure's api-version
    # The header the key (from api_key_env) goes out under: "auto" is "Authorization: Bearer",
    # or Azure OpenAI's "api-key" on *.azure.com; any other name carries the bare key (a gateway's
    # "api-key", "x-api-key" or "Ocp-Apim-Subscription-Key").
    api_key_header: str = "auto"
    connect_timeout_s: float = 10.0
    read_timeout_s: float | None = None  # None: 120 s, or 15 minutes under flex processing
    total_timeout_s: float | None = None  # None: 600 s, or 16 minutes under flex processing
    pool_size: int = 512
    unknown_model_encoding: Literal["o200k_base", "cl100k_base"] = "o200k_base"
    # The name the token cap goes out under; "auto": max_completion_tokens for OpenAI, Azure
    # OpenAI, the simulator and reasoning models, max_tokens for other servers. A 400 naming
    # the other name switches once (recorded in the run).
    max_tokens_param: Literal["auto", "max_tokens", "max_completion_tokens"] = "auto"
    # Reasoning models only: sent as reasoning_effort (generation.reasoning_effort per step).
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    service_tier: Literal["flex", "default", "priority"] | None = None  # None: not sent
    flex_fallback_after_s: float | None = None  # None: a flex request never falls back
    prompt_cache_key: bool | None = None  # None: sent to OpenAI and Azure OpenAI only
    capabilities: Mapping[str, CapabilityOverride] = field(default_factory=lambda: _EMPTY)

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise Invalid("base_url", "must start with http:// or https://", self.base_url)
        if not self.api_key_env or "=" in self.api_key_env:
            raise Invalid("api_key_env", "must name an environment variable", self.api_key_env)
        if not self.model.strip():
            raise Invalid("model", "must name a model", self.model)
        for name in ("connect_timeout_s", "read_timeout_s", "total_timeout_s"):
            positive(self, name, unset=" (leave it out for the default)")
        at_least(self, "pool_size", 1)
        for table, names in (("headers", self.headers), ("query", self.query)):
            for key, value in names.items():
                if _SECRET_NAME.search(key) or _SECRET_VALUE.match(value):
                    # The value is never echoed: it may be the key.
                    raise Invalid(
                        f"{table}.{key}",
                        "put the API key in the environment variable named by api_key_env, "
                        "not in the config (it is stored with the run); set api_key_header to "
                        "the header name the key must go out under",
                        HIDDEN,
                    )
        if not _HEADER_NAME.fullmatch(self.api_key_header):
            raise Invalid("api_key_header", "must be a header name, or auto", self.api_key_header)
        non_negative(self, "flex_fallback_after_s")
        if self.flex_fallback_after_s is not None and self.service_tier != "flex":
            raise Invalid(
                "flex_fallback_after_s",
                'only applies with service_tier = "flex"; remove it or set the tier',
                self.flex_fallback_after_s,
            )

    def key_headers(self, base_url: str, api_key: Secret) -> dict[str, str]:
        """The header that carries the key to ``base_url`` (api_key_header, or by the host)."""
        name = self.api_key_header
        if name == "auto":
            name = "api-key" if ".azure.com" in base_url else "Authorization"
        if name.lower() == "authorization":
            return {"Authorization": f"Bearer {api_key.reveal()}"}
        return {name: api_key.reveal()}

    @property
    def read_timeout(self) -> float:
        """Seconds to wait for a reply: 15 minutes under flex (OpenAI's advice), else 120."""
        if self.read_timeout_s is not None:
            return self.read_timeout_s
        return 900.0 if self.service_tier == "flex" else 120.0

    @property
    def total_timeout(self) -> float:
        if self.total_timeout_s is not None:
            return self.total_timeout_s
        return max(960.0 if self.service_tier == "flex" else 600.0, self.read_timeout)


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """The provider's limits for this key; m2l learns the real ones from response headers.

    The rate limiter runs on this type as it is. ``max_inflight = "auto"`` (the default) lets
    the adaptive concurrency limit find the server's capacity; a number is a fixed cap. None
    (code only: TOML has no null) lets the limiter probe when no rate limit is known either.
    """

    rpm: float | None = None
    tpm: float | None = None
    max_inflight: int | Literal["auto"] | None = "auto"
    initial_burst_s: float = 1.0
    refund_unused: bool = False
    # Tuning of the bucket model, not user settings (tests set them to 0 to see exact levels):
    # the share of each bucket kept free, and the seconds of refill kept free, because a request
    # reaches the server a while after it is granted and a full server bucket gains nothing
    # meanwhile while the model already counts refill. Costs nothing while saturated.
    safety_margin: float = internal(0.01)
    headroom_s: float = internal(0.1)

    def __post_init__(self) -> None:
        positive(self, "rpm", unset=NO_LIMIT)
        positive(self, "tpm", unset=NO_LIMIT)
        if self.max_inflight != "auto":
            at_least(self, "max_inflight", 1, unset=' (or "auto")')
        positive(self, "initial_burst_s")
        between(self, "safety_margin", 0.0, 0.5, high_open=True)
        between(self, "headroom_s", 0.0, 10.0)

    @property
    def fixed_inflight(self) -> int | None:
        """The fixed concurrency cap; None when it adapts ("auto") or there is none."""
        return self.max_inflight if isinstance(self.max_inflight, int) else None

    @property
    def adaptive(self) -> bool:
        return self.max_inflight == "auto"


# An endpoint's name shows in logs, the dashboard and the request log: plain characters only.
_ENDPOINT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")


@dataclass(frozen=True, slots=True)
class EndpointConfig(ProviderConfig):
    """One ``[[providers]]`` entry: a provider setting of its own (key variable, base_url, model
    or deployment), its own limits (None: the ``[limits]`` section's) and its share of the load
    when several endpoints could take a request. ``same_model`` says that a differing ``model``
    is the first entry's model under another name (an Azure deployment's, say)."""

    name: str = ""
    weight: float = 1.0
    limits: LimitsConfig | None = None
    same_model: bool = False

    def __post_init__(self) -> None:
        # Explicit: zero-argument super() fails in a slots dataclass before Python 3.14.
        ProviderConfig.__post_init__(self)
        if not _ENDPOINT_NAME.match(self.name):
            raise Invalid(
                "name",
                "must name the endpoint (1-40 letters, digits, '_' or '-')",
                self.name,
            )
        positive(self, "weight")

    def provider(self) -> ProviderConfig:
        """The provider settings alone (what a ``[provider]`` section with them would hold)."""
        return ProviderConfig(**{f.name: getattr(self, f.name) for f in fields(ProviderConfig)})


@dataclass(frozen=True, slots=True)
class StepTokens:
    """``max_tokens`` per step kind."""

    evolve: int = 512
    answer: int = 1024
    follow_up: int = 256

    def __post_init__(self) -> None:
        for f in fields(self):
            at_least(self, f.name, 1)


Effort = Literal["none", "minimal", "low", "medium", "high", "xhigh"]


@dataclass(frozen=True, slots=True)
class StepEfforts:
    """``reasoning_effort`` per step kind for reasoning models; unset: provider.reasoning_effort."""

    evolve: Effort | None = None
    answer: Effort | None = None
    follow_up: Effort | None = None


@dataclass(frozen=True, slots=True)
class AdaptiveTokens:
    """Adaptive max_tokens: per step kind and language (or script), once ``min_samples``
    replies of the step kind are in (all languages pooled, engine/maxtokens.py), send the cap
    with the lowest expected TPM charge (a cut reply is redone with more room and counted)
    such that at most ``max_redone_share`` of replies are cut and redone and their cost stays
    within ``max_extra_money_share`` of the money; the configured max_tokens stays the ceiling.
    Learned from the last ``window`` replies of each group in the run's request log, so a
    resumed run starts where it stopped. ``enabled = "auto"`` (the default): on when the run
    goes to a real provider or ``limits.tpm`` is set, off for the simulator without a TPM limit
    (learned caps depend on the order replies arrive in, and the simulator's text on the cap, so
    such runs would not repeat exactly).
    """

    enabled: bool | Literal["auto"] = "auto"
    max_redone_share: float = 0.01
    max_extra_money_share: float = 0.02
    min_samples: int = 50
    window: int = 2000
    group_by: Literal["language", "script"] = "language"

    def __post_init__(self) -> None:
        between(self, "max_redone_share", 0.0001, 0.5)
        between(self, "max_extra_money_share", 0.0001, 1.0)
        at_least(self, "min_samples", 10)
        if self.window < self.min_samples:
            raise Invalid(
                "window", f"must be at least min_samples ({self.min_samples})", self.window
            )

    def active(self, *, simulated: bool, tpm_limited: bool) -> bool:
        """Whether caps adapt in a run to the simulator or not, with a TPM limit set or not."""
        if self.enabled == "auto":
            return tpm_limited or not simulated
        return bool(self.enabled)


@dataclass(frozen=True, slots=True)
class GenerationConfig:
    """Sampling and conversation shape."""

    temperature: float = 0.7
    max_tokens: StepTokens = field(default_factory=StepTokens)
    adaptive_max_tokens: AdaptiveTokens = field(default_factory=AdaptiveTokens)
    reasoning_effort: StepEfforts = field(default_factory=StepEfforts)
    max_regenerations: int = 2
    max_turns: int = 6

    def __post_init__(self) -> None:
        between(self, "temperature", 0.0, 2.0)
        non_negative(self, "max_regenerations")
        between(self, "max_turns", 1, 6)


@dataclass(frozen=True, slots=True)
class RunConfig:
    """The run's name and where its files go."""

    name: str
    output_dir: Path = Path("runs")
    seed: int = 0
    max_active: int = 512
    grace_s: float = 30.0
    # The last N conversations to finish all failed for the same reason: stop (0: never).
    systematic_failure_window: int = 20
    # A run that ends with more than this share of its conversations failed exits 1 (failed),
    # its done ones exported all the same: most of a dataset lost is not a success (1: never).
    max_failed_share: float = 0.5
    mode: Literal["online", "batch"] = "online"  # batch: OpenAI Batch API, see [batch]

    def __post_init__(self) -> None:
        non_negative(self, "systematic_failure_window")  # 0: off
        between(self, "max_failed_share", 0.0, 1.0)
        if not self.name or any(c in self.name for c in "/\\") or self.name.startswith("."):
            raise Invalid(
                "name", "must be a plain folder name (no / or \\, not starting with .)", self.name
            )
        at_least(self, "max_active", 1)
        non_negative(self, "grace_s")


@dataclass(frozen=True, slots=True)
class SeedColumns:
    """An explicit column table for a seed file no ready-made mapping fits:
    ``mapping = { instruction = "prompt", language = "lang", task = "category" }``."""

    instruction: str
    language: str | None = None  # the language's English name
    language_code: str | None = None  # ISO 639-1 or 639-3
    task: str | None = None
    target: str | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        if self.language is None and self.language_code is None:
            raise Invalid(
                "language",
                "is needed (a column of English language names) unless language_code names a "
                "column of ISO codes",
                ...,
            )


@dataclass(frozen=True, slots=True)
class SeedsConfig:
    """The seed file and how seeds are chosen from it."""

    file: Path
    # auto, a ready-made mapping's name (m2l, aya-dataset, aya-collection), or a column table
    mapping: str | SeedColumns = "auto"
    total: int | None = None
    per_language: int | None = None
    language_weights: Literal["uniform", "tier"] | Mapping[str, float] = "uniform"
    tier_weights: Mapping[str, float] = field(
        default_factory=lambda: types.MappingProxyType({"high": 1.0, "mid": 1.0, "low": 1.0})
    )
    task_weights: Literal["uniform"] | Mapping[str, float] = "uniform"
    evols_per_seed: int = 1
    turn_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    multiturn: Literal["uniform"] | Mapping[str, float] = "uniform"
    # A language short of seeds gives its share to the others ("redistribute") or not ("skip").
    shortfall: Literal["redistribute", "skip"] = "redistribute"
    # How a seed's evols split between task-agnostic and task-specific types, by weight.
    evol_mix: Mapping[str, float] = field(
        default_factory=lambda: types.MappingProxyType({"agnostic": 1.0, "specific": 1.0})
    )
    # Source dataset → task table (prompts/data/source_tasks.toml when unset), and the task of
    # a row whose source and task_type say nothing m2l knows.
    source_tasks: Path | None = None
    default_task: str = "general"

    def __post_init__(self) -> None:
        at_least(self, "total", 1, unset=" (or unset)")
        at_least(self, "per_language", 1, unset=" (or unset)")
        at_least(self, "evols_per_seed", 1)
        if not 1 <= len(self.turn_weights) <= 6:
            raise Invalid(
                "turn_weights", "takes 1 to 6 weights (1 turn first)", list(self.turn_weights)
            )
        _weights("turn_weights", dict(enumerate(self.turn_weights)), index=True)
        for name in ("language_weights", "task_weights", "multiturn", "tier_weights", "evol_mix"):
            value = getattr(self, name)
            if isinstance(value, Mapping):
                _weights(name, value)
        unknown = sorted(set(self.tier_weights) - {"high", "mid", "low"})
        if unknown:
            raise Invalid(f"tier_weights.{unknown[0]}", "is not a tier (high, mid, low)", ...)
        kinds = sorted(set(self.evol_mix) - {"agnostic", "specific"})
        if kinds:
            raise Invalid(f"evol_mix.{kinds[0]}", "is not a kind of evol (agnostic, specific)", ...)


def _weights(name: str, weights: Mapping[Any, float], *, index: bool = False) -> None:
    """Sampling weights: each 0 or more, at least one above 0."""
    for key, weight in weights.items():
        if not weight >= 0:
            where = f"{name}[{key}]" if index else f"{name}.{key}"
            raise Invalid(where, "must be 0 or more", weight)
    if weights and sum(weights.values()) <= 0:
        raise Invalid(name, "needs at least one weight above 0", list(weights.values()))


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """How often a failed request is tried again; the retry policy runs on this type as it is."""

    max_attempts: int = 6
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    rate_limit_patience: int = 50
    refused_before_fatal: int = 5
    unreachable_s: float = 60.0  # how long a server that cannot be reached is waited for
    malformed_before_fatal: int = 10  # 200s in a row that are not chat completions: stop
    backoff: bool = internal(True)  # False removes every wait, Retry-After included (tests)

    def __post_init__(self) -> None:
        at_least(self, "max_attempts", 1)
        non_negative(self, "base_delay_s")
        if not self.max_delay_s >= self.base_delay_s:
            raise Invalid(
                "max_delay_s",
                f"must be at least base_delay_s ({self.base_delay_s:g})",
                self.max_delay_s,
            )
        at_least(self, "rate_limit_patience", 1)
        at_least(self, "refused_before_fatal", 1)
        non_negative(self, "unreachable_s")
        at_least(self, "malformed_before_fatal", 1)


@dataclass(frozen=True, slots=True)
class BatchConfig:
    """Batch API mode (``run.mode = "batch"``): input file sizes, pacing, polling, the tail."""

    max_lines: int = 50_000  # requests per input file (the API's limit is 50,000)
    max_mb: float = 200.0  # MB per input file (the API's limit is 200 MB)
    linger_s: float = 60.0  # the longest a ready step waits for its batch to fill
    quiet_s: float = 2.0  # a partial batch goes out once no step joined it for this long
    poll_min_s: float = 5.0  # a young batch is polled this often; older ones less often
    poll_max_s: float = 60.0
    finish_online_below: int = 0  # fewer unfinished conversations than this: finish online
    max_active: int = 100_000  # conversations in flight at once (their steps wait in batches)

    def __post_init__(self) -> None:
        between(self, "max_lines", 1, 50_000)  # the Batch API's limit
        positive(self, "max_mb")
        between(self, "max_mb", 0, 200)  # the Batch API's limit
        for name in ("linger_s", "quiet_s", "poll_min_s", "poll_max_s"):
            positive(self, name)
        if self.poll_max_s < self.poll_min_s:
            raise Invalid(
                "poll_max_s", f"must be at least poll_min_s ({self.poll_min_s:g})", self.poll_max_s
            )
        non_negative(self, "finish_online_below")  # 0: never
        at_least(self, "max_active", 1)

    @property
    def max_bytes(self) -> int:
        return int(self.max_mb * 1024 * 1024)


@dataclass(frozen=True, slots=True)
class PriceOverride:
    """USD per million tokens for one model, overriding the built-in table; ``flex_*`` and
    ``priority_*`` are its prices at those service tiers (flex: the Batch API rates)."""

    input: float
    output: float
    cached_input: float | None = None
    flex_input: float | None = None
    flex_cached_input: float | None = None
    flex_output: float | None = None
    priority_input: float | None = None
    priority_cached_input: float | None = None
    priority_output: float | None = None

    def tier_prices(self) -> dict[str, float]:
        """The tier prices that are set, by their TOML key (e.g. ``flex_input``)."""
        names = [
            f"{t}_{k}" for t in ("flex", "priority") for k in ("input", "cached_input", "output")
        ]
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def __post_init__(self) -> None:
        for name in ("input", "output", "cached_input"):
            non_negative(self, name)
            value = getattr(self, name)
            # The ledger counts whole pico-dollars per token: 1e-6 USD per 1M tokens.
            if value is not None and (Decimal(str(value)) * 1_000_000) % 1 != 0:
                raise Invalid(name, "must have at most 6 decimal places (USD per 1M tokens)", value)


@dataclass(frozen=True, slots=True)
class BudgetConfig:
    """Hard caps; a run never spends past any of them. The ledger runs on this type as it is."""

    usd: float | None = None
    tokens: int | None = None
    requests: int | None = None
    prices: Mapping[str, PriceOverride] = field(default_factory=lambda: _EMPTY)

    def __post_init__(self) -> None:
        # A cap of 0 admits nothing: a run under it cannot make a single conversation.
        positive(self, "usd", unset=NO_CAP)
        at_least(self, "tokens", 1, unset=NO_CAP)
        at_least(self, "requests", 1, unset=NO_CAP)

    @property
    def capped(self) -> bool:
        """Whether any quantity is capped."""
        return self.usd is not None or self.tokens is not None or self.requests is not None


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """How much of the machine the run's DuckDB store may use, for every connection m2l opens.

    DuckDB's own defaults (80% of RAM, a thread per core) let its buffer pool grow with the
    store; these caps keep a run, and every command after it, at a few hundred MB whatever the
    number of conversations. Bigger work spills to ``temp_directory`` instead.
    """

    memory_limit_mb: int = 512
    threads: int = 2
    # Where DuckDB spills what does not fit; None: ``duckdb.tmp`` inside the run directory.
    temp_directory: Path | None = None
    # Row-group merges ("vacuum") a checkpoint may schedule. A merge reads and rewrites whole
    # row groups of messages, texts and all: at 10^5 conversations one checkpoint in a few
    # then lifted RSS by 200-480 MB for seconds (bench/scale.py). With 0 each checkpoint only
    # writes what it adds, as a row group of its own (a few thousand rows, which scans do not
    # mind), and what rows a failed turn deleted stays in the file as deleted.
    vacuum_tasks: int = 0
    # Conversations an export writes per COPY. DuckDB sorts each range in memory (it does not
    # spill rows holding nested lists), so this bounds what an export holds: 4,000 a range
    # made `m2l export` 80-215 MB larger than 1,000 does (10^4-10^5 short conversations,
    # bench/scale.py); 1,000 takes the same CPU and 12-35% more wall time (DuckDB's threads
    # have less to share in a smaller COPY).
    export_chunk: int = 1000

    def __post_init__(self) -> None:
        at_least(self, "memory_limit_mb", 64)  # below that DuckDB fails its own queries
        between(self, "threads", 1, 256)
        between(self, "vacuum_tasks", 0, 1000)
        at_least(self, "export_chunk", 1)


@dataclass(frozen=True, slots=True)
class QualityConfig:
    """The ``[quality]`` section: every output check's switch and thresholds, and what happens
    to an output that fails one. The defaults are tuned on real replies in many languages.

    Repetition: ``max_ngram_repeat_ratio`` (n = ``ngram_size``) is 0.00-0.05 on natural prose,
    about 0.3 on a parallel list and above 0.8 on a degenerate loop; texts with fewer than
    ``min_ngrams`` n-grams are too short to judge. A sentence of four or more units occurring
    more than ``max_sentence_repeats`` times is a loop; a song's chorus or a poem's refrain
    (short lines repeated at regular places) is not counted.
    Cross-turn: a follow-up answer reusing more than ``cross_turn_overlap`` of its 4-grams from
    earlier turns is a copy. Language: see engine.quality.langid for each threshold;
    ``language_max_foreign_share`` is the share of letters in confidently foreign sentences a
    reply may hold (a quoted phrase, a term) before it counts as written in another language.
    Evolution: an evolved instruction at least ``evolved_max_similarity`` similar to its seed
    was not rewritten. Truncation: a reply cut at max_tokens is asked again with
    ``max_tokens_growth`` times the room, up to ``max_tokens_ceiling``; a step still cut there
    fails as "truncated". ``keep_partial`` keeps a conversation's first k-1 turns when turn k
    fails. Near-duplicates (``m2l filter``): estimated Jaccard similarity of 3-gram shingles.
    Raises ValueError naming the key, its value and the allowed range.
    """

    min_reply_chars: int = 2
    min_instruction_chars: int = 5
    repetition: bool = True
    ngram_size: int = 3
    max_ngram_repeat_ratio: float = 0.4
    min_ngrams: int = 8
    max_sentence_repeats: int = 3
    cross_turn: bool = True
    cross_turn_ngram_size: int = 4
    cross_turn_overlap: float = 0.8
    check_language: bool = True
    language_min_chars: int = 20
    script_min_share: float = 0.5
    language_min_confidence: float = 0.5
    language_accept_share: float = 0.1
    foreign_confidence: float = 0.98
    language_max_foreign_share: float = 0.3
    refusal: bool = True
    refusal_window: int = 300
    refusals_path: Path | None = None
    markers: bool = True
    role_labels: bool = True
    extra_markers: tuple[str, ...] = ()
    markers_path: Path | None = None
    not_evolved: bool = True
    evolved_max_similarity: float = 0.9
    max_tokens_growth: float = 2.0
    max_tokens_ceiling: int = 8192
    scale_max_tokens: bool = True
    keep_partial: bool = True
    near_duplicates: bool = True
    near_dup_threshold: float = 0.85
    dedup_num_perm: int = 128
    dedup_shingle_size: int = 3
    dedup_seed: int = 0

    def __post_init__(self) -> None:
        for name in (
            "max_ngram_repeat_ratio",
            "cross_turn_overlap",
            "script_min_share",
            "language_min_confidence",
            "language_accept_share",
            "foreign_confidence",
            "language_max_foreign_share",
            "evolved_max_similarity",
            "near_dup_threshold",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} = {value}: expected a number from 0 to 1")
        for name in ("ngram_size", "cross_turn_ngram_size", "dedup_shingle_size"):
            value = getattr(self, name)
            if not 1 <= value <= 20:
                raise ValueError(f"{name} = {value}: expected an integer from 1 to 20")
        for name in (
            "min_reply_chars",
            "min_instruction_chars",
            "min_ngrams",
            "max_sentence_repeats",
            "language_min_chars",
            "refusal_window",
            "dedup_seed",
        ):
            value = getattr(self, name)
            if value < 0:
                raise ValueError(f"{name} = {value}: expected 0 or more")
        if not 16 <= self.dedup_num_perm <= 1024:
            raise ValueError(
                f"dedup_num_perm = {self.dedup_num_perm}: expected 16 to 1024 hash functions"
            )
        if any(not isinstance(m, str) or not m.strip() for m in self.extra_markers):
            raise ValueError("extra_markers: expected a list of non-empty strings")
        if not 1.0 < self.max_tokens_growth <= 16.0:
            raise ValueError(
                f"max_tokens_growth = {self.max_tokens_growth}: expected more than 1 and at most "
                "16 (the factor a truncated step's max_tokens grows by)"
            )
        if not 16 <= self.max_tokens_ceiling <= 1_000_000:
            raise ValueError(
                f"max_tokens_ceiling = {self.max_tokens_ceiling}: expected 16 to 1000000 tokens"
            )

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The names of every setting, for config templates and error hints."""
        return tuple(f.name for f in fields(cls))


@dataclass(frozen=True, slots=True)
class Config:
    """A whole run configuration, as loaded from one TOML file."""

    run: RunConfig
    seeds: SeedsConfig
    provider: ProviderConfig = field(default_factory=ProviderConfig)
    # Several endpoints of one model in one run; when given, ``provider`` is the first entry
    # (whose model names the run's model) and ``limits`` the default of entries without any.
    providers: tuple[EndpointConfig, ...] = ()
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    sim: SimSettings = field(default_factory=SimSettings)
    store: StoreConfig = field(default_factory=StoreConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    taxonomy: Path | None = None
    # The file it was loaded from: set by load_config, not a key of the file.
    source: Path | None = field(default=None, compare=False, metadata=INTERNAL)

    def __post_init__(self) -> None:
        if not self.providers:
            return
        first = self.providers[0]
        # (dataclasses.replace on a loaded config passes the first entry back as provider)
        if self.provider != first and self.provider != ProviderConfig():
            raise Invalid(
                "provider",
                "give either one [provider] section or [[providers]] entries, not both "
                "(a [provider] is one endpoint: make it the first [[providers]] entry)",
                ...,
            )
        seen: dict[str, int] = {}
        for i, entry in enumerate(self.providers):
            if entry.name in seen:
                raise Invalid(
                    f"providers[{i}].name",
                    f"is already the name of providers[{seen[entry.name]}]; each endpoint needs "
                    "a name of its own",
                    entry.name,
                )
            seen[entry.name] = i
            if entry.model != first.model and not entry.same_model:
                raise Invalid(
                    f"providers[{i}].model",
                    f"differs from providers[0].model ({first.model!r}): the model is content, "
                    "so one run uses one model. If this endpoint serves that same model under "
                    f"another name (a deployment's), set providers[{i}].same_model = true",
                    entry.model,
                )
            if entry.reasoning_effort != first.reasoning_effort:
                raise Invalid(
                    f"providers[{i}].reasoning_effort",
                    "must be the same on every endpoint (it changes what the model writes); "
                    f"providers[0] has {first.reasoning_effort!r}",
                    entry.reasoning_effort,
                )
        if self.run.mode == "batch" and len(self.providers) > 1:
            raise Invalid(
                "run.mode",
                '"batch" sends to one endpoint: keep one [[providers]] entry, or use "online"',
                self.run.mode,
            )
        # Everything that reads the provider (model, prices, request shape) reads the first.
        object.__setattr__(self, "provider", first)

    @property
    def run_dir(self) -> Path:
        return self.run.output_dir / self.run.name

    def endpoints(self) -> tuple[EndpointConfig, ...]:
        """The endpoints requests go to: the ``[[providers]]`` entries, or ``[provider]`` as
        one endpoint named "provider" with the ``[limits]`` section's limits."""
        if self.providers:
            return self.providers
        base = {f.name: getattr(self.provider, f.name) for f in fields(ProviderConfig)}
        return (EndpointConfig(**base, name="provider", limits=self.limits),)

    def endpoint_limits(self, entry: EndpointConfig) -> LimitsConfig:
        """The limits an endpoint runs under: its own, else the ``[limits]`` section's."""
        return entry.limits if entry.limits is not None else self.limits

    def where(self, entry: EndpointConfig) -> str:
        """How messages name an endpoint's settings: "provider" or "providers[i]"."""
        for i, other in enumerate(self.providers):
            if other is entry:
                return f"providers[{i}]"
        return "provider"

    def uses_simulator(self, env: Mapping[str, str]) -> bool:
        """Whether requests go to the embedded simulator rather than ``provider.base_url``
        (with several endpoints: the first one's; a run refuses a mix)."""
        return self.endpoint_simulated(self.provider, env)

    @staticmethod
    def endpoint_simulated(entry: ProviderConfig, env: Mapping[str, str]) -> bool:
        """Whether this endpoint is the embedded simulator: ``kind = "auto"`` and no key."""
        if entry.kind == "auto":
            return not env.get(entry.api_key_env)
        return entry.kind == "sim"

    def api_key(self, env: Mapping[str, str]) -> Secret | None:
        """The API key from the environment; ConfigError if a real provider needs one."""
        return self.endpoint_key(self.provider, env)

    def endpoint_key(self, entry: ProviderConfig, env: Mapping[str, str]) -> Secret | None:
        """An endpoint's API key from the environment; ConfigError naming the file and the
        entry's key when a real endpoint's variable is not set."""
        value = env.get(entry.api_key_env)
        if value:
            return Secret(value)
        if entry.kind == "openai":
            where = f"{self.source}: " if self.source is not None else ""
            at = self.where(entry) if isinstance(entry, EndpointConfig) else "provider"
            raise ConfigError(
                f"{where}{at}.api_key_env: {at}.kind is 'openai' but the environment variable "
                f"{entry.api_key_env} is not set; export it, or set {at}.kind = 'sim'"
            )
        return None

    def snapshot(self) -> dict[str, Any]:
        """The config as plain JSON-able data (no secrets: the config holds none).

        A config without ``[[providers]]`` has no ``providers`` key, so runs stored before it
        existed resume unchanged; with them, ``provider`` holds the first entry's provider
        settings and ``providers`` every entry by name (a diff then names the endpoint).
        """
        data = plain(self)
        assert isinstance(data, dict)
        entries = data.pop("providers")
        if self.providers:
            data["provider"] = plain(self.providers[0].provider())
            data["providers"] = {e["name"]: e for e in entries}
        return data

    def hash(self) -> str:
        canonical = orjson.dumps(self.snapshot(), option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(canonical).hexdigest()


# Keys whose change on resume leaves every generated text as it would have been: they only
# change how fast, how far, or how patiently the run goes. Everything else alters content.
SAFE_ON_RESUME = (
    "limits.",
    "run.max_active",
    "run.grace_s",
    # How much room replies get before they are cut and redone: a delivery setting (a cut reply
    # is never kept), like the limits.
    "generation.adaptive_max_tokens.",
    "run.systematic_failure_window",
    "run.max_failed_share",
    "run.mode",  # a batch line carries the online body: the same replies either way
    "batch.",
    "run.output_dir",
    "retry.",
    "store.",
    "budget.usd",
    "budget.tokens",
    "budget.requests",
    "budget.prices.",
    # Where requests go and how they are addressed: fixing a host typo or a header, or moving
    # to another deployment of the same model, continues a run.
    "provider.base_url",
    "provider.query",
    "provider.api_key_env",
    # The seed file's contents are compared by hash: a moved file with the same bytes is fine.
    "seeds.file",
    "provider.connect_timeout_s",
    "provider.read_timeout_s",
    "provider.total_timeout_s",
    "provider.pool_size",
    "provider.headers",
    "provider.api_key_header",
    "provider.max_tokens_param",
    "provider.service_tier",
    "provider.flex_fallback_after_s",
    "provider.prompt_cache_key",
    "sim.host",
    "sim.port",
    "sim.rpm",
    "sim.tpm",
    "sim.bucket_seconds",
    "sim.ttft_s",
    "sim.per_token_s",
    "sim.jitter",
    "sim.hang_s",
    "sim.slots",
    "sim.batch_slowdown",
    "sim.queue_limit",
    "sim.flex_slowdown",
    "sim.flex_unavailable",
    "sim.cache_min_tokens",
    "sim.batch_delay_s",
    "sim.batch_expire_s",
    "sim.batch_expire_count",
    "sim.batch_cancel_s",
    "sim.batch_line_failure_rate",
    "sim.faults.",
)


@dataclass(frozen=True, slots=True)
class RequestsSettings:
    """The ``[requests]`` section of ``m2l requests``: what a body that leaves it out gets."""

    # The token cap sent with a body that sets none: the limiter and the budget reserve a
    # request's worst case, and without a cap a reply's length has no bound to reserve.
    max_tokens: int = 1024
    max_active: int = 512  # lines being worked on at once (the concurrency limit sits below)
    grace_s: float = 30.0  # after Ctrl-C, how long requests in flight may still finish
    # Results that finished ahead of an earlier line wait in memory up to this much, then in
    # the state file only: a slow line never holds the others back nor fills the memory.
    buffer_mb: float = 64.0

    def __post_init__(self) -> None:
        at_least(self, "max_tokens", 1)
        at_least(self, "max_active", 1)
        non_negative(self, "grace_s")
        positive(self, "buffer_mb")


@dataclass(frozen=True, slots=True)
class RequestsConfig:
    """The whole configuration of ``m2l requests``: the run config's own section types.

    ``provider.kind``: "auto" sends to ``provider.base_url`` (with the key from
    ``api_key_env`` when it is set), "sim" to the embedded simulator; ``provider.model`` is
    the model of a body that names none.
    """

    provider: ProviderConfig = field(default_factory=ProviderConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    sim: SimSettings = field(default_factory=SimSettings)
    requests: RequestsSettings = field(default_factory=RequestsSettings)
    source: Path | None = field(default=None, compare=False, metadata=INTERNAL)

    def uses_simulator(self) -> bool:
        return self.provider.kind == "sim"

    def api_key(self, env: Mapping[str, str]) -> Secret | None:
        """The key from the environment; ConfigError when OpenAI (or ``kind = "openai"``)
        needs one and the variable is unset. Another server is sent no key when it is unset."""
        if self.uses_simulator():
            return None
        value = env.get(self.provider.api_key_env)
        if value:
            return Secret(value)
        host = urllib.parse.urlsplit(self.provider.base_url).hostname or ""
        to_openai = host == "api.openai.com" or host.endswith(".azure.com")
        if self.provider.kind == "openai" or to_openai:
            raise ConfigError(
                f"the environment variable {self.provider.api_key_env} is not set, and "
                f"{self.provider.base_url} needs a key: export it (or name another variable "
                "with --api-key-env), or pass --sim to try the file on the embedded simulator"
            )
        return None

    def snapshot(self) -> dict[str, Any]:
        """The config as plain JSON-able data (no secrets: the config holds none)."""
        data = plain(self)
        assert isinstance(data, dict)
        return data


def load_requests_config(
    path: Path | None, overrides: Mapping[str, Mapping[str, Any]] | None = None
) -> RequestsConfig:
    """The TOML file at ``path`` (None: defaults) with ``overrides`` (command-line flags, by
    section) on top, checked as one; raises ConfigError naming the file or the flags."""
    data: dict[str, Any] = {}
    source = "command-line options"
    base_dir = None
    if path is not None:
        try:
            data = tomllib.loads(path.read_bytes().decode("utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not UTF-8 text; save the config as UTF-8") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        source = str(path) if not overrides else f"{path} with the command-line options"
        base_dir = path.resolve().parent
    for section, values in (overrides or {}).items():
        table = data.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        table.update(values)
    config = from_table(RequestsConfig, data, source=source, base_dir=base_dir)
    object.__setattr__(config, "source", path)
    return config


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): data}


# Keys of a [[providers]] entry that only say how much of the load it takes and what its own
# limits are; its model may differ only as the same model (checked at load: the run's model is
# provider.model, the first entry's, and is compared there).
_SAFE_ENDPOINT_KEYS = ("name", "weight", "same_model", "model", "limits", "limits.")


def _safe(key: str) -> bool:
    return any(key == s or (s.endswith(".") and key.startswith(s)) for s in SAFE_ON_RESUME)


def _safe_endpoint_key(key: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether a changed ``providers.NAME.KEY`` leaves content as it was: an endpoint added or
    taken away (all serve the run's model), or a key safe for ``[provider]`` or its limits."""
    _, name, rest = key.split(".", 2) if key.count(".") >= 2 else (key, "", "")
    added_or_gone = not any(k.startswith(f"providers.{name}.") for k in old) or not any(
        k.startswith(f"providers.{name}.") for k in new
    )
    if added_or_gone:
        return True
    if any(rest == s or (s.endswith(".") and rest.startswith(s)) for s in _SAFE_ENDPOINT_KEYS):
        return True
    return _safe(f"provider.{rest}")


def config_diff(
    old: Mapping[str, Any], new: Mapping[str, Any], *, defaults: Mapping[str, Any] | None = None
) -> list[tuple[str, Any, Any, bool]]:
    """``(key, old, new, safe)`` for every leaf that differs between two snapshots.

    With ``defaults`` (flattened, as config_defaults gives them), a key the old snapshot lacks
    (a setting added to m2l after that run started) is no change when it is safe on resume and
    holds its default: upgrading m2l does not ask for --force.
    """
    a, b = _flatten(dict(old)), _flatten(dict(new))
    defaults = defaults or {}
    out = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            endpoint = key.startswith("providers.")
            safe = _safe_endpoint_key(key, a, b) if endpoint else _safe(key)
            if safe and key not in a and key in defaults and b[key] == defaults[key]:
                continue
            out.append((key, a.get(key), b.get(key), safe))
    return out


def added_at_default(
    old: Mapping[str, Any], new: Mapping[str, Any], defaults: Mapping[str, Any]
) -> set[str]:
    """Keys (flattened) the old snapshot lacks and the new one holds at their default: settings
    added to m2l after the run with the old snapshot started, left as they come."""
    a, b = _flatten(dict(old)), _flatten(dict(new))
    return {key for key in b.keys() - a.keys() if key in defaults and b[key] == defaults[key]}


@functools.cache
def config_defaults() -> dict[str, Any]:
    """Every key of a run config at its default, flattened (the two required keys hold
    stand-ins)."""
    required = {"run": {"name": "defaults"}, "seeds": {"file": "seeds.jsonl"}}
    config = from_table(Config, required, source="m2l's defaults", base_dir=None)
    return _flatten(config.snapshot())


def parse_config(data: Mapping[str, Any], *, source: str, base_dir: Path | None) -> Config:
    """Build a Config from already-parsed TOML data; raises ConfigError."""
    config = from_table(Config, data, source=source, base_dir=base_dir)
    seeds_file = config.seeds.file
    if not seeds_file.is_file():
        raise ConfigError(
            f"{source}: seeds.file: {seeds_file} does not exist; point it at a JSONL, Parquet or "
            "CSV file of seed instructions (examples/seeds.jsonl is a bundled sample)"
        )
    return config


def load_config(path: Path) -> Config:
    """Read and check a TOML config; relative paths inside it resolve against its folder.

    Raises ConfigError naming the file, the key, what was expected and what was found.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save the config as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    config = parse_config(data, source=str(path), base_dir=path.resolve().parent)
    return _with_source(config, path)


def _with_source(config: Config, path: Path) -> Config:
    object.__setattr__(config, "source", path)
    return config


def environment() -> Mapping[str, str]:
    """The process environment; read here, at the edge, and passed down explicitly."""
    return os.environ
