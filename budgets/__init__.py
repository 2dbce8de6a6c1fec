"""Budgets: the price table, the crash-safe ledger with hard caps, the step-load model, admission
by projected cost, and estimates of a run's cost before it starts (``m2l estimate`` and its pilot
live in the app, ``engine.app``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.lazy import lazy_getattr

if TYPE_CHECKING:
    from budgets.admission import Budget, BudgetAdmission, Projection, load_budget
    from budgets.estimate import Estimate, estimate_run
    from budgets.ledger import Ledger, Spend, spend_from_log
    from budgets.prices import Price, PriceTable, Pricing, load_price_table, resolve_price
    from budgets.stepload import OutputLengths, StepLoad, TemplateSizes, step_loads

# Loaded on first use, not with the package: reading a price (m2l status, stats) must not
# import the estimator, the seed selection and the taxonomy behind it.
_HOMES: dict[str, str] = {
    "Budget": "budgets.admission",
    "BudgetAdmission": "budgets.admission",
    "Estimate": "budgets.estimate",
    "Ledger": "budgets.ledger",
    "OutputLengths": "budgets.stepload",
    "Price": "budgets.prices",
    "PriceTable": "budgets.prices",
    "Pricing": "budgets.prices",
    "Projection": "budgets.admission",
    "Spend": "budgets.ledger",
    "StepLoad": "budgets.stepload",
    "TemplateSizes": "budgets.stepload",
    "estimate_run": "budgets.estimate",
    "load_budget": "budgets.admission",
    "load_price_table": "budgets.prices",
    "resolve_price": "budgets.prices",
    "spend_from_log": "budgets.ledger",
    "step_loads": "budgets.stepload",
}


__getattr__ = lazy_getattr("budgets", _HOMES)


__all__ = [
    "Budget",
    "BudgetAdmission",
    "Estimate",
    "Ledger",
    "OutputLengths",
    "Price",
    "PriceTable",
    "Pricing",
    "Projection",
    "Spend",
    "StepLoad",
    "TemplateSizes",
    "estimate_run",
    "load_budget",
    "load_price_table",
    "resolve_price",
    "spend_from_log",
    "step_loads",
]
