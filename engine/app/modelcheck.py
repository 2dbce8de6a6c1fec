"""Checks of the run's model made when a config is loaded, before anything is set up.

``check_model`` refuses a model m2l cannot price when money is at stake (a USD cap, or OpenAI's
own API), with the exact TOML lines to add, and returns the warnings worth saying (a price table
more than six months old). Raises ConfigError.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from urllib.parse import urlsplit

from budgets.prices import (
    PriceTable,
    load_price_table,
    missing_price_error,
    price_table_age_warning,
    resolve_price,
    tier_price_error,
)
from engine.config import Config
from engine.errors import ConfigError
from engine.modelprofile import model_profile, unknown_model_lines
from engine.requestshape import hosted_by_openai

__all__ = ["check_model"]


def check_model(
    config: Config,
    env: Mapping[str, str],
    *,
    prices: PriceTable | None = None,
    today: dt.date | None = None,
) -> list[str]:
    """Warnings about the run's model and prices; ConfigError when it cannot run as set."""
    prices = prices or load_price_table()
    profile = model_profile(config)  # raises for an effort or tier the model refuses
    model = config.provider.model
    to_openai = not config.uses_simulator(env) and hosted_by_openai(config.provider.base_url)
    price = resolve_price(model, prices, config.budget.prices)
    if price is None and (config.budget.usd is not None or to_openai):
        if config.budget.usd is not None:
            why = f"budget.usd = {config.budget.usd:g} caps what this run may spend"
        else:
            why = f"the run goes to {urlsplit(config.provider.base_url).hostname}, which bills it"
        error = missing_price_error(model, prices, why=why, tier=config.provider.service_tier)
        if to_openai and not profile.known:
            raise ConfigError(
                f"{error}\n\nm2l does not know what {model!r} accepts either; describe it:\n\n"
                f"{unknown_model_lines(model)}"
            )
        raise error
    if price is not None and config.budget.usd is not None:
        tier_error = tier_price_error(model, price, config.provider.service_tier)
        if tier_error is not None:
            raise tier_error
    warnings = []
    if price is not None and price.origin.startswith("built-in"):
        stale = price_table_age_warning(prices, today or dt.date.today())
        if stale is not None:
            warnings.append(stale)
    return warnings
