"""Prices by service tier (flex, priority), reasoning and cached tokens, and the table's age."""

from __future__ import annotations

import datetime as dt
import tomllib

import pytest

from budgets.prices import (
    Pricing,
    load_price_table,
    missing_price_error,
    price_table_age_warning,
    resolve_price,
    tier_price_error,
)
from engine.chat import ChatRequest, Message, Usage
from engine.config import PriceOverride
from engine.errors import ConfigError

TABLE = load_price_table()


def test_flex_is_the_batch_rate_for_the_models_that_offer_it() -> None:
    """Every model with flex prices pays half its standard prices under flex."""
    flexed = [p for p in TABLE.prices.values() if "flex" in p.tiers]
    assert {p.model for p in flexed} >= {"gpt-5", "gpt-5-mini", "gpt-5-nano", "o3", "o4-mini"}
    for price in flexed:
        flex = price.tiers["flex"]
        assert flex.input_pico * 2 == price.input_pico
        assert flex.output_pico * 2 == price.output_pico


def test_a_reply_is_priced_at_the_tier_it_names() -> None:
    """The same usage costs half under flex, standard at default, more at priority; reasoning
    tokens are output tokens and cached ones are cheaper."""
    price = TABLE.lookup("gpt-5-mini")
    assert price is not None
    pricing = Pricing(price, tier="flex")
    flex = pricing.actual(Usage(1000, 3000, reasoning_tokens=2000, service_tier="flex"))
    default = pricing.actual(Usage(1000, 3000, reasoning_tokens=2000, service_tier="default"))
    priority = pricing.actual(Usage(1000, 3000, service_tier="priority"))
    assert default == pytest.approx((1000 * 0.25 + 3000 * 2.0) / 1e6)
    assert flex == pytest.approx(default / 2)
    assert priority > default
    assert pricing.actual(Usage(1000, 3000)) == flex  # no tier echoed: the tier asked for
    cached = pricing.actual(Usage(1000, 3000, cached_tokens=800, service_tier="default"))
    assert cached == pytest.approx((200 * 0.25 + 800 * 0.025 + 3000 * 2.0) / 1e6)
    assert price.cache_saving_nano(800) == round(800 * (0.25 - 0.025) * 1000)


def test_the_worst_case_under_flex_with_fallback_is_the_standard_price() -> None:
    """A flex request that may fall back reserves the dearer default price."""
    price = TABLE.lookup("o3")
    assert price is not None
    request = ChatRequest((Message("user", "hi", 10),), max_tokens=5000)
    flex_only = Pricing(price, tier="flex").worst_case(request)
    with_fallback = Pricing(price, tier="flex", fallback=True).worst_case(request)
    assert with_fallback == pytest.approx(2 * flex_only)


def test_config_overrides_carry_tier_prices() -> None:
    """budget.prices may set flex prices for a model the table lacks; half a pair is an error."""
    over = {"my-model": PriceOverride(input=1.0, output=4.0, flex_input=0.5, flex_output=2.0)}
    price = resolve_price("my-model", TABLE, over)
    assert price is not None and price.tiers["flex"].output_usd_per_mtok == 2.0
    with pytest.raises(ConfigError, match="flex_input and flex_output go together"):
        resolve_price("m", TABLE, {"m": PriceOverride(input=1.0, output=4.0, flex_input=0.5)})


def test_missing_prices_come_with_the_exact_lines_to_add() -> None:
    """The error holds TOML that parses and names every price key, flex ones active under flex."""
    error = str(missing_price_error("acme-1", TABLE, why="budget.usd = 5 caps", tier="flex"))
    block = error.split("\n\n")[1]
    data = tomllib.loads(block)["budget"]["prices"]["acme-1"]
    assert set(data) == {
        "input",
        "cached_input",
        "output",
        "flex_input",
        "flex_cached_input",
        "flex_output",
    }
    plain = str(missing_price_error("acme-1", TABLE, why="budget.usd = 5 caps"))
    assert set(tomllib.loads(plain.split("\n\n")[1])["budget"]["prices"]["acme-1"]) == {
        "input",
        "cached_input",
        "output",
    }
    assert "# flex_input" in plain


def test_a_capped_flex_run_needs_flex_prices() -> None:
    """gpt-4o has no flex prices: asking for flex with a cap is an error; gpt-5 has them."""
    gpt4o, gpt5 = TABLE.lookup("gpt-4o"), TABLE.lookup("gpt-5")
    assert gpt4o is not None and gpt5 is not None
    error = tier_price_error("gpt-4o", gpt4o, "flex")
    assert error is not None and "flex_input" in str(error)
    assert tier_price_error("gpt-5", gpt5, "flex") is None
    assert tier_price_error("gpt-4o", gpt4o, "default") is None


def test_the_table_warns_when_it_is_more_than_six_months_old() -> None:
    """No warning at five months; a warning naming the date at seven."""
    as_of = TABLE.as_of
    assert price_table_age_warning(TABLE, as_of + dt.timedelta(days=150)) is None
    warning = price_table_age_warning(TABLE, as_of + dt.timedelta(days=215))
    assert warning is not None and as_of.isoformat() in warning and "7 months" in warning
