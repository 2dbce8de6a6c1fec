"""Admission by projected cost, BudgetUpdate events, and the run's budget built from its log."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from budgets.admission import (
    UPDATE_INTERVAL_S,
    BudgetAdmission,
    Projection,
    load_budget,
)
from budgets.ledger import ZERO, Ledger, Spend
from budgets.prices import Pricing, to_nano
from engine.clock import FakeClock
from engine.config import BudgetConfig, Config, load_config
from engine.conversation import Conversation, Plan
from engine.errors import ConfigError
from engine.events import (
    BudgetUpdate,
    ConversationFinished,
    Event,
    RequestDone,
    RunStarted,
    StepDone,
)
from state import requestlog
from state.requestlog import Ticket
from state.schema import create_schema
from tests.runfixtures import write_config


class Recorder:
    """An EventHook that keeps every event."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def on_event(self, event: Event) -> None:
        self.events.append(event)

    def updates(self) -> list[BudgetUpdate]:
        return [e for e in self.events if isinstance(e, BudgetUpdate)]


def conv(conv_id: int, turns: int) -> Conversation:
    plan = Plan(
        conv_id, conv_id, "seed", "English", "eng", "open_qa", "DEEPEN", turns, ("X",) * (turns - 1)
    )
    return Conversation(plan)


# Every step's worst case: 1000 nano-dollars, 100 tokens, one request.
WORST = [Spend(1000, 100, 1)] * 12


def done(step: int, cost_nano: int, conv_id: int = 1) -> RequestDone:
    return RequestDone(f"{conv_id}:{step}", "answer", 30, 20, 0.1, cost_nano / 1e9, 0.0)


def test_projection_uses_the_worst_case_before_any_data() -> None:
    """With nothing observed, each step is projected at its worst case."""
    p = Projection(WORST)
    assert p.estimate(5) == Spend(1000, 100, 1)
    assert p.span(0, 4) == Spend(4000, 400, 4)


def test_projection_scales_the_worst_case_by_what_real_steps_cost() -> None:
    """A few cheap steps lower the projection of steps not seen yet by the same ratio."""
    p = Projection(WORST, min_samples=3)
    p.observe_request(0, Spend(250, 40, 1))
    p.observe_step(0)
    assert p.estimate(7) == Spend(250, 40, 1)  # a quarter of the worst case, in every step


def test_projection_uses_the_mean_once_a_step_has_enough_samples() -> None:
    """After min_samples finished steps, a step's projection is its mean cost (all attempts)."""
    p = Projection(WORST, min_samples=2)
    p.observe_request(1, Spend(300, 50, 1))
    p.observe_request(1, Spend(100, 30, 1))
    p.observe_request(1, Spend(200, 40, 1))  # a regeneration: three attempts, two steps done
    p.observe_step(1, 2)
    assert p.estimate(1) == Spend(300, 60, 2)


def admission(
    cap_usd: float | None,
    clock: FakeClock | None = None,
    *,
    start: Spend = ZERO,
    active: dict[int, tuple[int, int]] | None = None,
    pending: dict[int, int] | None = None,
) -> tuple[BudgetAdmission, Ledger | None, Recorder]:
    ledger = Ledger(BudgetConfig(usd=cap_usd)) if cap_usd is not None else None
    rec = Recorder()
    adm = BudgetAdmission(
        Projection(WORST),
        ledger=ledger,
        hooks=rec,
        start=start,
        active=active,
        pending=pending,
        clock=clock or FakeClock(),
    )
    return adm, ledger, rec


def test_a_conversation_starts_only_if_finishing_it_fits_after_the_active_ones() -> None:
    """With room for 10 worst-case steps, a 3-turn and a 2-turn conversation fit, a third does
    not: its 2 steps would pass the cap once the active ones' 10 steps are counted."""
    adm, _, rec = admission(10_000 / 1e9)
    assert adm.admit(conv(1, 3))
    assert adm.admit(conv(2, 2))
    assert not adm.admit(conv(3, 1))
    assert adm.refused is not None and "budget.usd" in adm.refused
    assert rec.updates(), "a refusal reports the budget at once"


def test_finished_steps_and_conversations_free_their_projection() -> None:
    """As steps finish (and conversations end) the room they were projected to need returns."""
    adm, ledger, _ = admission(6_000 / 1e9)
    assert ledger is not None
    assert adm.admit(conv(1, 3))
    assert not adm.admit(conv(2, 1))
    for step in range(4):
        ledger.reserve(Ticket(step + 1, 1000 / 1e9, 100))
        ledger.settle(Ticket(step + 1, 1000 / 1e9, 100), 500 / 1e9, 50)
        adm.on_event(done(step, 500))
        adm.on_event(StepDone(1, "answer", "English", 0.0))
    # 4 steps done at half their worst case: 2 steps left, projected at half the worst case.
    assert adm.active_remaining() == Spend(1000, 100, 2)
    assert adm.admit(conv(2, 1))
    assert adm.refused is None, "asked again and admitted: no longer refused"
    adm.on_event(ConversationFinished(1, "failed", "x", "English", "open_qa", 2, 0.0))
    assert adm.active_remaining() == Spend(1000, 100, 2)  # only conversation 2 is left


def test_projected_total_counts_spent_active_and_pending() -> None:
    """The projected total is what was spent plus what every unfinished conversation needs."""
    adm, _, _ = admission(None, pending={2: 3, 1: 1}, active={7: (1, 4)}, start=Spend(5000, 0, 0))
    # pending: 3 x 4 steps + 1 x 2 steps; active: 3 steps left; all at the worst case.
    assert adm.projected_total().nano == 5000 + (12 + 2 + 3) * 1000
    assert adm.admit(conv(8, 2))  # no ledger: never refused
    assert adm.pending_remaining().nano == (8 + 2) * 1000


def test_budget_updates_are_rate_limited() -> None:
    """BudgetUpdate goes out at most every UPDATE_INTERVAL_S, and at once when a run starts."""
    clock = FakeClock()
    adm, _, rec = admission(1.0, clock)
    adm.on_event(RunStarted("r", 10, 0, None, None, 1.0, 0.0))
    adm.on_event(done(0, 100))
    assert len(rec.updates()) == 1
    clock.advance(UPDATE_INTERVAL_S)
    adm.on_event(done(1, 100))
    updates = rec.updates()
    assert len(updates) == 2 and updates[-1].cap_usd == 1.0
    assert updates[-1].projected_usd is not None


def test_without_a_ledger_spend_comes_from_events() -> None:
    """A run without caps still reports what it spent, from the requests' costs."""
    adm, _, rec = admission(None, start=Spend(1000, 0, 0))
    adm.on_event(done(0, 2500))
    update = rec.updates()[-1]
    assert update.cap_usd is None and update.reserved_usd == 0.0
    assert update.spent_usd == pytest.approx(3500 / 1e9)


# --- load_budget: from config and the request log --------------------------------------------


def config_with(tmp_path: Path, budget: str) -> Config:
    return load_config(write_config(tmp_path, extra=budget))


def store(tmp_path: Path) -> duckdb.DuckDBPyConnection:
    conn = duckdb.connect(str(tmp_path / "state.duckdb"))
    create_schema(conn)
    conn.execute(
        "INSERT INTO seeds VALUES (1, 0, 'Explain why the sky is blue.', NULL, 'English', "
        "'eng', 'open_qa', 'x', NULL)"
    )
    conn.execute(
        """INSERT INTO conversations (conv_id, seed_id, evol_type, turns_planned, followup_types,
           language, language_code, task, status, steps_done) VALUES
           (1, 1, 'DEEPEN', 2, ['CLARIFICATION'], 'English', 'eng', 'open_qa', 'active', 1),
           (2, 1, 'DEEPEN', 1, [], 'English', 'eng', 'open_qa', 'pending', 0),
           (3, 1, 'DEEPEN', 1, [], 'English', 'eng', 'open_qa', 'pending', 0)"""
    )
    requestlog.write_reserved(
        conn,
        [
            requestlog.RequestRow(1, 1, 0, 1, 100, 64, 0.002, "gpt-4o-mini"),
            requestlog.RequestRow(2, 1, 1, 1, 200, 128, 0.003, "gpt-4o-mini"),
        ],
    )
    requestlog.write_finished(
        conn,
        [requestlog.FinishedRow(1, "ok", prompt_tokens=100, completion_tokens=30, cost_usd=0.001)],
    )
    return conn


def test_a_cap_with_an_unpriced_model_says_how_to_add_a_price(tmp_path: Path) -> None:
    """budget.usd with a model m2l cannot price is a ConfigError naming the table to add."""
    path = write_config(tmp_path, extra="[budget]\nusd = 1.0")
    path.write_text(path.read_text().replace('model = "gpt-4o-mini"', 'model = "llama-3-70b"'))
    with (
        store(tmp_path) as conn,
        pytest.raises(ConfigError, match=r'budget\.prices\."llama-3-70b"'),
    ):
        load_budget(conn, load_config(path), Recorder())


def test_the_budget_starts_from_the_request_log(tmp_path: Path) -> None:
    """The ledger starts at the settled cost plus the reservation a crash left open."""
    config = config_with(tmp_path, "[budget]\nusd = 1.0")
    with store(tmp_path) as conn:
        budget = load_budget(conn, config, Recorder())
    assert budget.guard is not None
    assert budget.guard.spent == Spend(to_nano(0.001) + to_nano(0.003), 130 + 328, 2)
    assert isinstance(budget.costs, Pricing) and budget.price is not None
    assert budget.price.model == "gpt-4o-mini"
    # One active conversation with 3 steps left, two pending ones of 2 steps each.
    adm = budget.admission
    assert adm.active_remaining().requests >= 3
    assert adm.pending_remaining().requests >= 4
    assert any("cap" in line for line in budget.summary())


def test_no_cap_means_no_guard_but_requests_are_still_priced(tmp_path: Path) -> None:
    """Without caps there is nothing to guard, yet costs are recorded at the model's price."""
    config = config_with(tmp_path, "")
    with store(tmp_path) as conn:
        budget = load_budget(conn, config, Recorder())
    assert budget.guard is None
    assert isinstance(budget.costs, Pricing)
    assert budget.admission.admit(conv(2, 1))


def test_refused_admission_is_in_the_summary_with_how_to_continue(tmp_path: Path) -> None:
    """At the cap the summary says the run stopped for the budget and how to resume."""
    config = config_with(tmp_path, "[budget]\nusd = 0.004")
    with store(tmp_path) as conn:
        budget = load_budget(conn, config, Recorder())
    assert not budget.admission.admit(conv(2, 1))
    summary = "\n".join(budget.summary())
    assert "--force" in summary and "0.004" in summary
