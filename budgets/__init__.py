"""Budgets: the price table, the crash-safe ledger with hard caps, admission by projected cost,
and estimates of a run's cost before it starts."""

from __future__ import annotations

from budgets.admission import Budget, BudgetAdmission, Projection, load_budget
from budgets.commands import add_estimate_parser
from budgets.estimate import Estimate, PilotResult, estimate_run, run_pilot
from budgets.ledger import UNBILLED_FAILURES, Caps, Ledger, Spend, spend_from_log
from budgets.prices import Price, PriceTable, Pricing, load_price_table, resolve_price

__all__ = [
    "UNBILLED_FAILURES",
    "Budget",
    "BudgetAdmission",
    "Caps",
    "Estimate",
    "Ledger",
    "PilotResult",
    "Price",
    "PriceTable",
    "Pricing",
    "Projection",
    "Spend",
    "add_estimate_parser",
    "estimate_run",
    "load_budget",
    "load_price_table",
    "resolve_price",
    "run_pilot",
    "spend_from_log",
]
