"""Model prices as data (``prices.toml``), per-run overrides, and the cost of one request.

Money is counted in whole nano-dollars (1e-9 USD) and per-token prices in whole pico-dollars,
so sums are exact: a cap is compared with integers, never with a float that drifts by 1e-17
after a million additions. Raises ConfigError for a malformed price file or override, and for a
capped run whose model has no price.
"""

from __future__ import annotations

import datetime as dt
import importlib.resources
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import MappingProxyType
from typing import Any

from engine.chat import ChatRequest, Usage
from engine.config import PriceOverride
from engine.errors import ConfigError

__all__ = [
    "NANO_PER_USD",
    "TIERS",
    "Price",
    "PriceTable",
    "Pricing",
    "from_nano",
    "load_price_table",
    "missing_price_error",
    "price_table_age_warning",
    "resolve_price",
    "snapshot_base",
    "tier_price_error",
    "to_nano",
]

NANO_PER_USD = 1_000_000_000
_PICO_PER_NANO = 1_000
_PICO_PER_USD_PER_MTOK = 1_000_000  # 1 USD per 1M tokens = 1e-6 USD per token = 1e6 pico-USD

# Service tiers with prices of their own; any other tier ("default", "auto") is priced as standard.
TIERS = ("flex", "priority")
_TIER_KEYS = tuple(f"{t}_{k}" for t in TIERS for k in ("input", "cached_input", "output"))
_EMPTY_TIERS: Mapping[str, Price] = MappingProxyType({})
_STALE_DAYS = 183  # six months: prices older than this are likely to have changed

# A dated snapshot: gpt-4o-2024-08-06, o3-mini-2025-01-31, gpt-4-0613, gpt-3.5-turbo-0125.
_SNAPSHOT = re.compile(r"^(?P<base>.+?)-(?:\d{4}-\d{2}-\d{2}|\d{4})$")


def to_nano(usd: float) -> int:
    """USD as whole nano-dollars, rounded half up (the one conversion the ledger and SQL share)."""
    return math.floor(usd * NANO_PER_USD + 0.5)


def from_nano(nano: int) -> float:
    return nano / NANO_PER_USD


def _pico_per_token(value: Any, where: str) -> int:
    """USD per 1M tokens as whole pico-dollars per token; ConfigError for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where} must be a number of USD per 1M tokens, got {value!r}")
    try:
        exact = Decimal(str(value)) * _PICO_PER_USD_PER_MTOK
    except InvalidOperation:
        raise ConfigError(f"{where} must be a finite number, got {value!r}") from None
    if not exact.is_finite() or exact < 0:
        raise ConfigError(f"{where} must be zero or more USD per 1M tokens, got {value!r}")
    if exact != exact.to_integral_value():
        raise ConfigError(f"{where} = {value!r}: use at most 6 decimal places (USD per 1M tokens)")
    return int(exact)


@dataclass(frozen=True, slots=True)
class Price:
    """One model's prices in pico-USD per token; ``model`` is the entry that matched."""

    model: str
    input_pico: int
    output_pico: int
    cached_input_pico: int
    origin: str  # "built-in table (as of 2025-08-07)" or "config budget.prices"
    tiers: Mapping[str, Price] = field(default_factory=lambda: _EMPTY_TIERS)  # by tier name

    def for_tier(self, tier: str | None) -> Price:
        """The prices a request served at ``tier`` pays; standard when the tier has none."""
        return self.tiers.get(tier or "default", self)

    def with_tiers(self, raw: Mapping[str, Any]) -> Price:
        """This price with the tier prices in ``raw`` (``flex_input`` ...); ConfigError."""
        tiers: dict[str, Price] = {}
        for tier in TIERS:
            inp, out = raw.get(f"{tier}_input"), raw.get(f"{tier}_output")
            cached = raw.get(f"{tier}_cached_input")
            if inp is None and out is None and cached is None:
                continue
            if inp is None or out is None:
                raise ConfigError(
                    f"price of {self.model!r} ({self.origin}): {tier}_input and {tier}_output "
                    f"go together ({tier}_cached_input is optional)"
                )
            tiers[tier] = Price.from_usd_per_mtok(
                self.model,
                input=inp,
                output=out,
                cached_input=cached,
                origin=f"{self.origin}, {tier} tier",
            )
        return replace(self, tiers=MappingProxyType(tiers)) if tiers else self

    @classmethod
    def from_usd_per_mtok(
        cls,
        model: str,
        *,
        input: float,
        output: float,
        cached_input: float | None = None,
        origin: str,
    ) -> Price:
        """A price from USD per 1M tokens; raises ConfigError for a negative or odd value."""
        where = f"price of {model!r} ({origin})"
        inp = _pico_per_token(input, f"{where}: input")
        cached = inp if cached_input is None else _pico_per_token(cached_input, f"{where}: cached")
        return cls(model, inp, _pico_per_token(output, f"{where}: output"), cached, origin)

    @property
    def input_usd_per_mtok(self) -> float:
        return self.input_pico / _PICO_PER_USD_PER_MTOK

    @property
    def output_usd_per_mtok(self) -> float:
        return self.output_pico / _PICO_PER_USD_PER_MTOK

    @property
    def cached_input_usd_per_mtok(self) -> float:
        return self.cached_input_pico / _PICO_PER_USD_PER_MTOK

    def worst_nano(
        self, prompt_tokens: int, max_tokens: int, tiers: tuple[str | None, ...] = (None,)
    ) -> int:
        """The most a request can cost at any of ``tiers``: every prompt token uncached, every
        output token (hidden reasoning included) used."""
        pico = max(
            prompt_tokens * p.input_pico + max_tokens * p.output_pico
            for p in (self.for_tier(t) for t in tiers)
        )
        return -(-pico // _PICO_PER_NANO)  # round up: a reservation must never be short

    def cost_nano(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int = 0,
        tier: str | None = None,
    ) -> int:
        """What a request served at ``tier`` cost; cached tokens are part of ``prompt_tokens``
        and reasoning tokens part of ``completion_tokens``, as OpenAI reports them."""
        p = self.for_tier(tier)
        cached = min(max(cached_tokens, 0), prompt_tokens)
        pico = (
            (prompt_tokens - cached) * p.input_pico
            + cached * p.cached_input_pico
            + completion_tokens * p.output_pico
        )
        return (pico + _PICO_PER_NANO // 2) // _PICO_PER_NANO

    def cache_saving_nano(self, cached_tokens: int, tier: str | None = None) -> int:
        """What the prompt cache saved on ``cached_tokens``: full input price minus cached."""
        p = self.for_tier(tier)
        pico = max(cached_tokens, 0) * (p.input_pico - p.cached_input_pico)
        return (pico + _PICO_PER_NANO // 2) // _PICO_PER_NANO

    def batch(self, discount: float) -> Price:
        """The Batch API's prices: the flex tier's where the table has them (OpenAI sells flex
        at the Batch API's rates), else these less ``discount``, rounded up to whole pico."""
        flex = self.tiers.get("flex")
        if flex is not None:
            return replace(
                flex, tiers=_EMPTY_TIERS, origin=f"{self.origin}, Batch API (flex rates)"
            )
        keep = Decimal(1) - Decimal(str(discount))

        def cut(pico: int) -> int:
            return int(-(-(Decimal(pico) * keep) // 1))

        return Price(
            self.model,
            cut(self.input_pico),
            cut(self.output_pico),
            cut(self.cached_input_pico),
            f"{self.origin}, Batch API ({discount:.0%} off)",
        )

    def describe(self) -> str:
        text = f"{self.model}: ${self.input_usd_per_mtok:g} in / ${self.output_usd_per_mtok:g} out"
        if self.cached_input_pico != self.input_pico:
            text += f" / ${self.cached_input_usd_per_mtok:g} cached"
        for tier, p in self.tiers.items():
            text += f"; {tier} ${p.input_usd_per_mtok:g} in / ${p.output_usd_per_mtok:g} out"
        return f"{text} per 1M tokens ({self.origin})"


def snapshot_base(model: str) -> str | None:
    """The base name of a dated snapshot (gpt-4o-2024-08-06 → gpt-4o), None if not dated."""
    match = _SNAPSHOT.match(model)
    return match.group("base") if match else None


def _key(model: str) -> str:
    # Routers spell models "openai/gpt-4o"; case never distinguishes two OpenAI models.
    return model.strip().lower().rsplit("/", 1)[-1]


def _find(prices: Mapping[str, Price], model: str) -> Price | None:
    """Exact name first, then the dated snapshot's base name."""
    key = _key(model)
    found = prices.get(key)
    if found is None and (base := snapshot_base(key)) is not None:
        found = prices.get(base)
    return found


@dataclass(frozen=True, slots=True)
class PriceTable:
    """The built-in prices: where they came from, when, and the Batch API discount."""

    prices: Mapping[str, Price]
    source: str
    as_of: dt.date
    batch_discount: float
    path: Path | None = None

    def lookup(self, model: str) -> Price | None:
        """The price of ``model`` by exact name, then by dated snapshot; None if unpriced."""
        return _find(self.prices, model)

    def models(self) -> tuple[str, ...]:
        return tuple(sorted(self.prices))


def _entry(name: str, raw: Any, origin: str, path: Path) -> Price:
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: models.{name!r} must be a table with input and output")
    unknown = sorted(set(raw) - {"input", "output", "cached_input", *_TIER_KEYS})
    if unknown or "input" not in raw or "output" not in raw:
        raise ConfigError(
            f"{path}: models.{name!r} needs input and output (and optionally cached_input, "
            f"flex_* and priority_*) in USD per 1M tokens; found keys {sorted(raw)}"
        )
    return Price.from_usd_per_mtok(
        _key(name),
        input=raw["input"],
        output=raw["output"],
        cached_input=raw.get("cached_input"),
        origin=origin,
    ).with_tiers(raw)


def load_price_table(path: Path | None = None) -> PriceTable:
    """Read a price file (the built-in ``budgets/prices.toml`` by default); raises ConfigError."""
    if path is None:
        resource = importlib.resources.files("budgets").joinpath("prices.toml")
        text, shown = resource.read_text(encoding="utf-8"), Path(str(resource))
    else:
        try:
            text, shown = path.read_text(encoding="utf-8"), path
        except OSError as exc:
            raise ConfigError(f"cannot read the price file {path}: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{shown}: not valid TOML: {exc}") from None
    as_of = data.get("as_of")
    discount = data.get("batch_discount", 0.0)
    models = data.get("models")
    if not isinstance(as_of, dt.date) or not isinstance(models, dict) or not models:
        raise ConfigError(
            f"{shown}: a price file needs as_of (a date, e.g. 2025-08-07) and a [models.NAME] "
            "table per model"
        )
    if not isinstance(discount, int | float) or not 0.0 <= discount < 1.0:
        raise ConfigError(f"{shown}: batch_discount must be a fraction in [0, 1), got {discount!r}")
    origin = f"built-in table as of {as_of.isoformat()}"
    prices = {_key(name): _entry(name, raw, origin, shown) for name, raw in models.items()}
    return PriceTable(
        prices=MappingProxyType(prices),
        source=str(data.get("source", "")),
        as_of=as_of,
        batch_discount=float(discount),
        path=shown,
    )


def _overrides(overrides: Mapping[str, PriceOverride]) -> dict[str, Price]:
    return {
        _key(name): Price.from_usd_per_mtok(
            _key(name),
            input=o.input,
            output=o.output,
            cached_input=o.cached_input,
            origin="config budget.prices",
        ).with_tiers(o.tier_prices())
        for name, o in overrides.items()
    }


def resolve_price(
    model: str, table: PriceTable, overrides: Mapping[str, PriceOverride] | None = None
) -> Price | None:
    """The price the run uses: a config override first, then the built-in table; None if none.

    Raises ConfigError for an override with a negative or malformed price.
    """
    if overrides:
        found = _find(_overrides(overrides), model)
        if found is not None:
            return found
    return table.lookup(model)


def _price_lines(model: str, *, tier_required: str | None) -> str:
    lines = [
        f'[budget.prices."{model}"]',
        "input = 2.50               # USD per 1M prompt tokens",
        "cached_input = 1.25        # USD per 1M prompt tokens served from the prompt cache",
        "output = 10.00             # USD per 1M completion tokens (reasoning tokens included)",
    ]
    flex = "" if tier_required == "flex" else "# "
    lines += [
        f"{flex}flex_input = 1.25          # flex processing = the Batch API rates"
        + ("" if flex == "" else " (optional)"),
        f"{flex}flex_cached_input = 0.625",
        f"{flex}flex_output = 5.00",
    ]
    if tier_required == "priority":
        lines += [
            "priority_input = 4.25",
            "priority_cached_input = 2.125",
            "priority_output = 17.00",
        ]
    return "\n".join(lines)


def missing_price_error(
    model: str, table: PriceTable, *, why: str, tier: str | None = None
) -> ConfigError:
    """The error for a model with no price: the exact TOML lines to add, and what they hold."""
    known = ", ".join(table.models())
    return ConfigError(
        f"{why}, but m2l has no price for model {model!r}. Add its prices (USD per 1M tokens, "
        f"from your provider's pricing page; the numbers below are placeholders) to the run's "
        f"config:\n\n{_price_lines(model, tier_required=tier)}\n\n"
        f"Built-in prices (as of {table.as_of.isoformat()}) cover: {known}."
    )


def tier_price_error(model: str, price: Price, tier: str | None) -> ConfigError | None:
    """The error for a capped run at a service tier its model has no prices for, or None."""
    if tier not in TIERS or tier in price.tiers:
        return None
    keys = ", ".join(f"{tier}_{k}" for k in ("input", "cached_input", "output"))
    return ConfigError(
        f'provider.service_tier = "{tier}" with a USD cap, but the price of {model!r} '
        f"({price.origin}) has no {tier} prices ({keys}). Add them (USD per 1M tokens) to the "
        f"run's config:\n\n"
        f'[budget.prices."{model}"]\n'
        f"input = {price.input_usd_per_mtok:g}\n"
        f"cached_input = {price.cached_input_usd_per_mtok:g}\n"
        f"output = {price.output_usd_per_mtok:g}\n"
        f"{tier}_input = ...\n{tier}_cached_input = ...\n{tier}_output = ...\n\n"
        "or leave provider.service_tier out."
    )


def price_table_age_warning(table: PriceTable, today: dt.date) -> str | None:
    """A warning when the built-in prices are more than six months old, else None."""
    age = (today - table.as_of).days
    if age <= _STALE_DAYS:
        return None
    return (
        f"the built-in prices are from {table.as_of.isoformat()}, {age // 30} months ago: "
        'check your provider\'s pricing page and set [budget.prices."MODEL"] where they '
        "changed"
    )


class Pricing:
    """The request log's CostModel for one priced model.

    ``prompt_margin`` scales the prompt tokens reserved: m2l's token counts are exact for the
    OpenAI models in the built-in table, but a model priced only in the config may tokenize
    differently, and a reservation that is short would let the cap be passed. ``tier`` is the
    service tier requested; with ``fallback`` a request may also go at the default tier, so its
    worst case is the dearer of the two. A reply is priced at the tier it names.
    """

    __slots__ = ("_margin_permille", "_tier", "_tiers", "price")

    def __init__(
        self,
        price: Price,
        *,
        prompt_margin: float = 0.0,
        tier: str | None = None,
        fallback: bool = False,
    ) -> None:
        if not 0.0 <= prompt_margin <= 10.0:
            raise ValueError(f"prompt_margin must be in [0, 10], got {prompt_margin}")
        self.price = price
        self._margin_permille = round(prompt_margin * 1000)
        self._tier = tier
        self._tiers: tuple[str | None, ...] = (tier, None) if fallback else (tier,)

    def worst_nano(self, prompt_tokens: int, max_tokens: int) -> int:
        padded = prompt_tokens + -(-prompt_tokens * self._margin_permille // 1000)
        return self.price.worst_nano(padded, max_tokens, self._tiers)

    def worst_case(self, request: ChatRequest) -> float:
        return from_nano(self.worst_nano(request.prompt_tokens, request.max_tokens))

    def expected_nano(self, prompt_tokens: int, completion_tokens: int) -> int:
        """What a request with these token counts costs at the run's tier (no cache hits)."""
        return self.price.cost_nano(prompt_tokens, completion_tokens, tier=self._tier)

    def batch(self, discount: float) -> Pricing:
        """The same model at the Batch API's prices (``Price.batch``), with the same margin."""
        pricing = Pricing(self.price.batch(discount))
        pricing._margin_permille = self._margin_permille
        return pricing

    def actual(self, usage: Usage) -> float:
        tier = usage.service_tier or self._tier
        return from_nano(
            self.price.cost_nano(
                usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, tier
            )
        )
