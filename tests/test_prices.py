"""The price table: data file, lookup by exact name then dated snapshot, overrides, arithmetic."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from budgets.prices import (
    Price,
    Pricing,
    from_nano,
    load_price_table,
    missing_price_error,
    resolve_price,
    snapshot_base,
    to_nano,
)
from engine.chat import ChatRequest, Message, Usage
from engine.config import PriceOverride
from engine.errors import ConfigError

TABLE = load_price_table()


def test_table_says_where_and_when_prices_come_from() -> None:
    """The built-in table names its source and the date its prices were read."""
    assert "openai" in TABLE.source.lower()
    assert isinstance(TABLE.as_of, dt.date) and TABLE.as_of.year >= 2025
    assert 0 < TABLE.batch_discount < 1


@pytest.mark.parametrize(
    "model",
    [
        "gpt-4",
        "gpt-4-turbo",
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4.1-nano",
        "o1",
        "o3",
        "o3-mini",
        "o4-mini",
    ],
)
def test_common_openai_models_are_priced(model: str) -> None:
    """Every model the issue names has an input and an output price."""
    price = TABLE.lookup(model)
    assert price is not None and price.model == model
    assert price.input_pico > 0 and price.output_pico > price.input_pico


def test_known_prices_per_million_tokens() -> None:
    """gpt-4o is $2.50 in, $1.25 cached, $10 out per 1M tokens, as the table file says."""
    price = TABLE.lookup("gpt-4o")
    assert price is not None
    assert (price.input_usd_per_mtok, price.cached_input_usd_per_mtok) == (2.5, 1.25)
    assert price.output_usd_per_mtok == 10.0


@pytest.mark.parametrize(
    ("model", "entry"),
    [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4-0613", "gpt-4"),
        ("gpt-4.1-2025-04-14", "gpt-4.1"),
        ("o3-mini-2025-01-31", "o3-mini"),
        ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),  # exact entry wins over its base
        ("openai/GPT-4o", "gpt-4o"),
    ],
)
def test_lookup_by_exact_name_then_dated_snapshot(model: str, entry: str) -> None:
    """A dated snapshot is priced as its base model unless it has its own entry."""
    price = TABLE.lookup(model)
    assert price is not None and price.model == entry


@pytest.mark.parametrize(
    "model", ["gpt-4o-sim", "llama-3-70b", "gpt-4o-audio-preview", "my-gpt-4o"]
)
def test_unknown_models_have_no_price(model: str) -> None:
    """Names that are neither listed nor a dated snapshot of a listed model are unpriced."""
    assert TABLE.lookup(model) is None


def test_snapshot_base_needs_a_date_suffix() -> None:
    """Only a trailing date (YYYY-MM-DD or MMDD) marks a snapshot."""
    assert snapshot_base("gpt-4o-2024-08-06") == "gpt-4o"
    assert snapshot_base("gpt-4-1106-preview") is None
    assert snapshot_base("gpt-4o") is None


def test_config_override_beats_the_table_and_prices_new_models() -> None:
    """budget.prices replaces a built-in price and adds models the table lacks."""
    overrides = {
        "gpt-4o": PriceOverride(input=1.0, output=2.0),
        "llama-3-70b": PriceOverride(input=0.6, output=0.8, cached_input=0.3),
    }
    gpt = resolve_price("gpt-4o-2024-08-06", TABLE, overrides)
    llama = resolve_price("llama-3-70b", TABLE, overrides)
    assert gpt is not None and gpt.input_usd_per_mtok == 1.0 and gpt.origin.startswith("config")
    assert gpt.cached_input_pico == gpt.input_pico  # no cached price given: no discount
    assert llama is not None and llama.cached_input_usd_per_mtok == 0.3
    mini = resolve_price("gpt-4o-mini", TABLE, overrides)
    assert mini is not None and mini.origin.startswith("built-in")


@pytest.mark.parametrize("bad", [-1.0, 0.1234567, float("nan"), float("inf")])
def test_malformed_override_is_a_config_error(bad: float) -> None:
    """A negative, non-finite or over-precise price is refused when the override is made (at
    config load, where the file and the model's key are added)."""
    with pytest.raises(ConfigError, match=r"^input: must"):
        PriceOverride(input=bad, output=1.0)


def test_missing_price_error_says_how_to_add_one() -> None:
    """The error names the model and shows the [budget.prices."model"] table to add."""
    err = missing_price_error("llama-3-70b", TABLE, why="budget.usd = 5 caps the run")
    text = str(err)
    assert '[budget.prices."llama-3-70b"]' in text
    assert "input =" in text and "output =" in text and "budget.usd = 5" in text


def test_malformed_price_file_is_a_config_error(tmp_path: Path) -> None:
    """A price file without a date or with a model lacking output prices is refused."""
    path = tmp_path / "prices.toml"
    path.write_text('as_of = 2025-01-01\n[models."x"]\ninput = 1.0\n')
    with pytest.raises(ConfigError, match="input and output"):
        load_price_table(path)
    path.write_text('[models."x"]\ninput = 1.0\noutput = 2.0\n')
    with pytest.raises(ConfigError, match="as_of"):
        load_price_table(path)


def test_cost_of_a_request_uses_cached_and_output_prices() -> None:
    """1M uncached + 1M cached prompt tokens and 1M output tokens of gpt-4o cost $13.75."""
    price = TABLE.lookup("gpt-4o")
    assert price is not None
    nano = price.cost_nano(2_000_000, 1_000_000, cached_tokens=1_000_000)
    assert from_nano(nano) == pytest.approx(2.5 + 1.25 + 10.0)
    assert from_nano(price.worst_nano(1_000_000, 1_000_000)) == pytest.approx(12.5)


def _request(prompt_tokens: int, max_tokens: int) -> ChatRequest:
    # prompt_tokens counts the reply priming (3) on top of the messages' own tokens.
    return ChatRequest((Message("user", "x", prompt_tokens - 3),), max_tokens=max_tokens)


def test_pricing_reserves_prompt_times_input_plus_max_tokens_times_output() -> None:
    """The CostModel's worst case is prompt × input + max_tokens × output."""
    price = Price.from_usd_per_mtok("m", input=2.0, output=8.0, origin="test")
    pricing = Pricing(price)
    assert pricing.worst_case(_request(1000, 500)) == pytest.approx(0.002 + 0.004)
    padded = Pricing(price, prompt_margin=0.1)
    assert padded.worst_case(_request(1000, 500)) == pytest.approx(0.0022 + 0.004)
    assert pricing.actual(Usage(1000, 100)) == pytest.approx(0.002 + 0.0008)


@settings(deadline=None)
@given(
    prompt=st.integers(0, 200_000),
    max_tokens=st.integers(1, 100_000),
    data=st.data(),
    model=st.sampled_from(sorted(TABLE.prices)),
)
def test_actual_cost_never_exceeds_the_reservation(
    prompt: int, max_tokens: int, data: st.DataObject, model: str
) -> None:
    """Whatever the usage within max_tokens and the cache, the cost fits the worst case."""
    completion = data.draw(st.integers(0, max_tokens))
    cached = data.draw(st.integers(0, prompt))
    price = TABLE.prices[model]
    assert price.cost_nano(prompt, completion, cached) <= price.worst_nano(prompt, max_tokens)


@settings(deadline=None)
@given(st.integers(0, 10**15))
def test_nano_dollars_survive_the_round_trip_through_a_float(nano: int) -> None:
    """A cost stored as a float USD in the request log converts back to the same nano-dollars."""
    assert to_nano(from_nano(nano)) == nano
