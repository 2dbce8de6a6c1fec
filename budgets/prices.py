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
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import MappingProxyType
from typing import Any

from engine.chat import ChatRequest, Usage
from engine.config import PriceOverride
from engine.errors import ConfigError

__all__ = [
    "NANO_PER_USD",
    "Price",
    "PriceTable",
    "Pricing",
    "from_nano",
    "load_price_table",
    "missing_price_error",
    "resolve_price",
    "snapshot_base",
    "to_nano",
]

NANO_PER_USD = 1_000_000_000
_PICO_PER_NANO = 1_000
_PICO_PER_USD_PER_MTOK = 1_000_000  # 1 USD per 1M tokens = 1e-6 USD per token = 1e6 pico-USD

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

    def worst_nano(self, prompt_tokens: int, max_tokens: int) -> int:
        """The most a request can cost: every prompt token uncached, every output token used."""
        pico = prompt_tokens * self.input_pico + max_tokens * self.output_pico
        return -(-pico // _PICO_PER_NANO)  # round up: a reservation must never be short

    def cost_nano(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> int:
        """What a request cost; cached tokens are part of ``prompt_tokens``, as OpenAI reports."""
        cached = min(max(cached_tokens, 0), prompt_tokens)
        pico = (
            (prompt_tokens - cached) * self.input_pico
            + cached * self.cached_input_pico
            + completion_tokens * self.output_pico
        )
        return (pico + _PICO_PER_NANO // 2) // _PICO_PER_NANO

    def describe(self) -> str:
        text = f"{self.model}: ${self.input_usd_per_mtok:g} in / ${self.output_usd_per_mtok:g} out"
        if self.cached_input_pico != self.input_pico:
            text += f" / ${self.cached_input_usd_per_mtok:g} cached"
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
    unknown = sorted(set(raw) - {"input", "output", "cached_input"})
    if unknown or "input" not in raw or "output" not in raw:
        raise ConfigError(
            f"{path}: models.{name!r} needs input and output (and optionally cached_input) "
            f"in USD per 1M tokens; found keys {sorted(raw)}"
        )
    return Price.from_usd_per_mtok(
        _key(name),
        input=raw["input"],
        output=raw["output"],
        cached_input=raw.get("cached_input"),
        origin=origin,
    )


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
        )
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


def missing_price_error(model: str, table: PriceTable, *, why: str) -> ConfigError:
    """The error for a model with no price: says which TOML table to add, and what it holds."""
    known = ", ".join(table.models())
    return ConfigError(
        f"{why}, but m2l has no price for model {model!r}. Add its prices (USD per 1M tokens, "
        f"from your provider's pricing page) to the run's config:\n\n"
        f'[budget.prices."{model}"]\n'
        f"input = 2.50          # USD per 1M prompt tokens\n"
        f"output = 10.00        # USD per 1M completion tokens\n"
        f"cached_input = 1.25   # optional\n\n"
        f"Built-in prices (as of {table.as_of.isoformat()}) cover: {known}."
    )


class Pricing:
    """The request log's CostModel for one priced model.

    ``prompt_margin`` scales the prompt tokens reserved: m2l's token counts are exact for the
    OpenAI models in the built-in table, but a model priced only in the config may tokenize
    differently, and a reservation that is short would let the cap be passed.
    """

    __slots__ = ("_margin_permille", "price")

    def __init__(self, price: Price, *, prompt_margin: float = 0.0) -> None:
        if not 0.0 <= prompt_margin <= 10.0:
            raise ValueError(f"prompt_margin must be in [0, 10], got {prompt_margin}")
        self.price = price
        self._margin_permille = round(prompt_margin * 1000)

    def worst_nano(self, prompt_tokens: int, max_tokens: int) -> int:
        padded = prompt_tokens + -(-prompt_tokens * self._margin_permille // 1000)
        return self.price.worst_nano(padded, max_tokens)

    def worst_case(self, request: ChatRequest) -> float:
        return from_nano(self.worst_nano(request.prompt_tokens, request.max_tokens))

    def actual(self, usage: Usage) -> float:
        return from_nano(
            self.price.cost_nano(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)
        )
