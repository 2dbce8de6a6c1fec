"""Budgets: the price table, the crash-safe ledger with hard caps, the step-load model, admission
by projected cost, and estimates of a run's cost before it starts (``m2l estimate`` and its pilot
live in the app, ``engine.app``)."""

from __future__ import annotations

from budgets.admission import Budget, BudgetAdmission, Projection, load_budget
from budgets.estimate import Estimate, estimate_run
from budgets.ledger import Ledger, Spend, spend_from_log
from budgets.prices import Price, PriceTable, Pricing, load_price_table, resolve_price
from budgets.stepload import OutputLengths, StepLoad, TemplateSizes, step_loads

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
