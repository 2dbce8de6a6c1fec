"""The ledger: reserve before sending, settle at the real cost, and hold the cap across crashes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from budgets.ledger import (
    Ledger,
    Spend,
    spend_by_conversation,
    spend_from_log,
)
from budgets.prices import Price, Pricing, from_nano, load_price_table, to_nano
from engine.config import BudgetConfig
from engine.errors import BudgetExhausted, ConfigError, RequestTimeout, ServerError
from state import requestlog
from state.requestlog import Ticket, ensure_totals, may_be_billed
from state.schema import TABLES

Op = Callable[[duckdb.DuckDBPyConnection], None]


def ticket(request_id: int, usd: float, tokens: int = 100) -> Ticket:
    return Ticket(request_id, usd, tokens)


def test_reserve_then_settle_replaces_the_worst_case_by_the_real_cost() -> None:
    """A settled request counts at its real cost and gives back the rest of its reservation."""
    ledger = Ledger(BudgetConfig(usd=1.0))
    ledger.reserve(ticket(1, 0.4, 500))
    assert ledger.reserved == Spend(to_nano(0.4), 500, 1)
    ledger.settle(ticket(1, 0.4, 500), 0.1, 120)
    assert ledger.spent == Spend(to_nano(0.1), 120, 1)
    assert ledger.reserved == Spend()


def test_a_reservation_past_the_cap_is_refused_with_what_to_do() -> None:
    """Reserving past budget.usd raises BudgetExhausted naming the cap and the resume command."""
    ledger = Ledger(BudgetConfig(usd=1.0))
    ledger.reserve(ticket(1, 0.6))
    with pytest.raises(BudgetExhausted, match=r"budget\.usd.*--force"):
        ledger.reserve(ticket(2, 0.5))
    ledger.reserve(ticket(3, 0.4))  # exactly up to the cap fits
    assert ledger.committed().nano == to_nano(1.0)


def test_token_and_request_caps_are_kept_too() -> None:
    """budget.tokens and budget.requests refuse a reservation just like budget.usd."""
    ledger = Ledger(BudgetConfig(tokens=1000, requests=2))
    ledger.reserve(ticket(1, 0.0, 600))
    with pytest.raises(BudgetExhausted, match=r"budget\.tokens"):
        ledger.reserve(ticket(2, 0.0, 500))
    ledger.reserve(ticket(3, 0.0, 400))
    with pytest.raises(BudgetExhausted, match=r"budget\.requests"):
        ledger.reserve(ticket(4, 0.0, 0))


def test_failures_count_as_spent_unless_surely_unbilled() -> None:
    """A 5xx or a never-admitted attempt is free; a timeout or an unknown outcome is not."""
    ledger = Ledger(BudgetConfig(usd=10.0))
    for i in range(1, 5):
        ledger.reserve(ticket(i, 1.0))
    ledger.release(ticket(1, 1.0), admitted=False)
    ledger.release(ticket(2, 1.0), admitted=True, billed=ServerError.billed)
    ledger.release(ticket(3, 1.0), admitted=True, billed=RequestTimeout.billed)
    ledger.release(ticket(4, 1.0), admitted=True)  # cancelled mid-flight: outcome unknown
    assert ledger.spent.nano == to_nano(2.0)
    assert ledger.spent.requests == 3
    assert ledger.reserved == Spend()


def test_settling_an_unknown_ticket_is_a_bug_that_is_reported() -> None:
    """Settling or releasing a ticket that holds nothing raises instead of corrupting totals."""
    ledger = Ledger(BudgetConfig(usd=1.0))
    with pytest.raises(ValueError, match="holds no reservation"):
        ledger.settle(ticket(9, 0.1), 0.1, 10)
    ledger.reserve(ticket(1, 0.1))
    with pytest.raises(ValueError, match="already reserved"):
        ledger.reserve(ticket(1, 0.1))


def test_impossible_cap_is_a_config_error() -> None:
    """A negative or zero cap is refused with the key's name and the allowed range."""
    with pytest.raises(ConfigError, match=r"usd: must be more than 0 .*found -1"):
        BudgetConfig(usd=-1.0)
    with pytest.raises(ConfigError, match=r"tokens: must be at least 1 .*found 0"):
        BudgetConfig(tokens=0)


def test_unbilled_failures_are_the_ones_that_generate_nothing() -> None:
    """5xx, context-length and auth errors are unbilled; timeouts and resets may be billed."""
    assert not may_be_billed("server_error")
    assert not may_be_billed("context_length_exceeded")
    assert may_be_billed("request_timeout")
    assert may_be_billed("connection_lost")
    assert may_be_billed("malformed_response")
    assert may_be_billed(None)
    assert may_be_billed("something_new")


def _row(
    request_id: int, usd: float, *, conv: int = 1, prompt: int = 100, max_tokens: int = 50
) -> Op:
    return _reserved(
        requestlog.RequestRow(request_id, conv, 0, 1, prompt, max_tokens, usd, "gpt-4o")
    )


def _reserved(row: requestlog.RequestRow) -> Op:
    return lambda conn: requestlog.write_reserved(conn, [row])


def _finished(request_id: int, **fields: Any) -> Op:
    row = requestlog.FinishedRow(request_id, **fields)
    return lambda conn: requestlog.write_finished(conn, [row])


def test_starting_state_is_computed_from_the_request_log(tmp_path: Path) -> None:
    """ok rows count at cost, crash-left 'reserved' rows and billable errors at their worst
    case; rejected rows and 5xx errors count nothing."""
    with duckdb.connect(str(tmp_path / "state.duckdb")) as conn:
        conn.execute(TABLES["requests"])
        conn.execute(TABLES["log_totals"])
        ensure_totals(conn)
        ops: list[Op] = [
            _row(1, 0.5),
            _finished(1, status="ok", prompt_tokens=100, completion_tokens=20, cost_usd=0.125),
            _row(2, 0.25),  # left 'reserved' by a crash
            _row(3, 0.5, conv=2),
            _finished(3, status="error", error_class="request_timeout"),
            _row(4, 0.5, conv=2),
            _finished(4, status="error", error_class="server_error"),
            _row(5, 0.5, conv=2),
            _finished(5, status="rejected", cost_usd=0.0, error_class="cancelled"),
        ]
        for op in ops:
            op(conn)
        spend = spend_from_log(conn)
        assert spend.nano == to_nano(0.125) + to_nano(0.25) + to_nano(0.5)
        assert spend.tokens == 120 + 150 + 150
        assert spend.requests == 4
        per_conv = spend_by_conversation(conn)
    assert per_conv[1] + per_conv[2] == spend
    assert per_conv[2].nano == to_nano(0.5)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0.0, 50.0, allow_nan=False), min_size=1, max_size=300))
def test_sql_and_python_convert_dollars_identically(values: list[float]) -> None:
    """The request log's SQL sums exactly the nano-dollars the in-memory ledger counted."""
    with duckdb.connect(":memory:") as conn:
        conn.execute(TABLES["requests"])  # no running totals: the scan is what is tested
        conn.execute(
            "INSERT INTO requests (request_id, attempt, status, prompt_tokens, max_tokens, "
            "reserved_usd) SELECT unnest(range(1, ?)), 1, 'reserved', 1, 1, "
            "unnest(?::DOUBLE[])",
            [len(values) + 1, values],
        )
        assert spend_from_log(conn).nano == sum(to_nano(v) for v in values)


# --- the property: random interleavings of reserve, send, settle, fail, cancel, crash ---------

ERROR_CLASSES = ["server_error", "request_timeout", "connection_lost", "malformed_response"]
PRICES = [
    load_price_table().prices["gpt-4o"],
    load_price_table().prices["gpt-4o-mini"],
    Price.from_usd_per_mtok("odd", input=0.333333, output=1.777777, origin="test"),
]


@dataclass
class Attempt:
    ticket: Ticket
    prompt: int
    max_tokens: int
    phase: str  # "queued" (row not durable yet), "durable" (may be sent), "sent"
    actual: Spend  # what the provider bills if it bills this attempt


class LedgerMachine(RuleBasedStateMachine):
    """The ledger beside a model of the request log: ops queue up as the writer's do, commit in
    order (a prefix at a time), and a crash loses what was not committed. ``billed`` is the most
    the provider can have charged: every attempt that may have been billed, at its real cost."""

    def __init__(self) -> None:
        super().__init__()
        self.conn = duckdb.connect(":memory:")
        self.conn.execute(TABLES["requests"])
        self.conn.execute(TABLES["log_totals"])
        ensure_totals(self.conn)
        self.queue: list[tuple[Op, int | None]] = []  # op, and the attempt it makes durable
        self.committed: list[Op] = []  # committed, not yet written to the DuckDB table
        self.attempts: dict[int, Attempt] = {}
        self.next_id = 1
        self.billed = Spend()
        self.caps = BudgetConfig()
        self.ledger = Ledger(self.caps)
        self.pricing = Pricing(PRICES[0])

    def teardown(self) -> None:
        self.conn.close()

    @initialize(
        usd=st.floats(0.0005, 0.05),
        tokens=st.one_of(st.none(), st.integers(1, 60_000)),
        requests=st.one_of(st.none(), st.integers(1, 40)),
        price=st.sampled_from(PRICES),
    )
    def start(self, usd: float, tokens: int | None, requests: int | None, price: Price) -> None:
        self.caps = BudgetConfig(usd=usd, tokens=tokens, requests=requests)
        self.ledger = Ledger(self.caps)
        self.pricing = Pricing(price)

    def _in(self, phase: str) -> list[int]:
        return sorted(i for i, a in self.attempts.items() if a.phase == phase)

    @rule(prompt=st.integers(1, 8000), max_tokens=st.integers(1, 4000), data=st.data())
    def reserve(self, prompt: int, max_tokens: int, data: st.DataObject) -> None:
        worst = self.pricing.worst_nano(prompt, max_tokens)
        t = Ticket(self.next_id, from_nano(worst), prompt + max_tokens)
        self.next_id += 1
        before = self.ledger.committed()
        try:
            self.ledger.reserve(t)
        except BudgetExhausted:
            need = Spend(to_nano(t.reserved_usd), t.reserved_tokens, 1)
            assert self.ledger.shortfall(need) is not None
            assert self.ledger.committed() == before
            return
        completion = data.draw(st.integers(0, max_tokens))
        cached = data.draw(st.integers(0, prompt))
        actual = Spend(
            self.pricing.price.cost_nano(prompt, completion, cached), prompt + completion, 1
        )
        self.attempts[t.request_id] = Attempt(t, prompt, max_tokens, "queued", actual)
        row = requestlog.RequestRow(t.request_id, 1, 0, 1, prompt, max_tokens, t.reserved_usd, "m")
        self.queue.append((_reserved(row), t.request_id))

    @precondition(lambda self: bool(self.queue))
    @rule(data=st.data())
    def commit(self, data: st.DataObject) -> None:
        n = data.draw(st.integers(1, len(self.queue)))
        batch, self.queue = self.queue[:n], self.queue[n:]
        # Committed ops reach DuckDB in order; applying them only when a crash reads the log
        # keeps this test fast and changes nothing the rebuild sees.
        self.committed.extend(op for op, _ in batch)
        for _, request_id in batch:
            if request_id is not None and request_id in self.attempts:
                self.attempts[request_id].phase = "durable"

    @precondition(lambda self: bool(self._in("durable")))
    @rule(data=st.data())
    def send(self, data: st.DataObject) -> None:
        self.attempts[data.draw(st.sampled_from(self._in("durable")))].phase = "sent"

    @precondition(lambda self: bool(self._in("sent")))
    @rule(data=st.data())
    def settle(self, data: st.DataObject) -> None:
        a = self.attempts.pop(data.draw(st.sampled_from(self._in("sent"))))
        usd = from_nano(a.actual.nano)
        self.billed += a.actual
        self.ledger.settle(a.ticket, usd, a.actual.tokens)
        completion = a.actual.tokens - a.prompt
        op = _finished(
            a.ticket.request_id,
            status="ok",
            prompt_tokens=a.prompt,
            completion_tokens=completion,
            cost_usd=usd,
        )
        self.queue.append((op, None))

    @precondition(lambda self: bool(self._in("sent")))
    @rule(data=st.data(), error_class=st.sampled_from(ERROR_CLASSES), informed=st.booleans())
    def fail(self, data: st.DataObject, error_class: str, informed: bool) -> None:
        a = self.attempts.pop(data.draw(st.sampled_from(self._in("sent"))))
        if may_be_billed(error_class):
            self.billed += a.actual
        else:
            self.billed += Spend(0, 0, 1)
        # Uninformed: the guard is not told why (it must then assume the worst).
        self.ledger.release(
            a.ticket, admitted=True, billed=may_be_billed(error_class) if informed else True
        )
        op = _finished(a.ticket.request_id, status="error", error_class=error_class)
        self.queue.append((op, None))

    @precondition(lambda self: bool(self._in("sent")))
    @rule(data=st.data())
    def cancel_in_flight(self, data: st.DataObject) -> None:
        a = self.attempts.pop(data.draw(st.sampled_from(self._in("sent"))))
        self.billed += a.actual  # the provider may have finished it
        self.ledger.release(a.ticket, admitted=True)  # the row stays 'reserved'

    @precondition(lambda self: bool(self._in("durable") + self._in("sent")))
    @rule(data=st.data())
    def reject(self, data: st.DataObject) -> None:
        # Never admitted: cancelled in the limiter's queue, or a 429 / refused connection.
        a = self.attempts.pop(data.draw(st.sampled_from(self._in("durable") + self._in("sent"))))
        self.ledger.release(a.ticket, admitted=False)
        op = _finished(
            a.ticket.request_id, status="rejected", cost_usd=0.0, error_class="cancelled"
        )
        self.queue.append((op, None))

    @precondition(lambda self: bool(self.attempts or self.queue))
    @rule(raise_cap=st.floats(0.0, 0.02))
    def crash(self, raise_cap: float) -> None:
        for a in self.attempts.values():
            if a.phase == "sent":
                self.billed += a.actual  # in flight when the process died: maybe billed
        self.attempts.clear()
        self.queue.clear()
        # A resume may raise the cap (a safe config change); it never lowers what was billed.
        self.caps = BudgetConfig(
            usd=(self.caps.usd or 0.0) + raise_cap,
            tokens=self.caps.tokens,
            requests=self.caps.requests,
        )
        self.conn.execute("BEGIN TRANSACTION")
        for op in self.committed:
            op(self.conn)
        self.conn.execute("COMMIT")
        self.committed.clear()
        self.ledger = Ledger(self.caps, spend_from_log(self.conn))

    def _capped(self, amount: Spend) -> None:
        cap_nano = None if self.caps.usd is None else to_nano(self.caps.usd)
        assert cap_nano is None or amount.nano <= cap_nano
        assert self.caps.tokens is None or amount.tokens <= self.caps.tokens
        assert self.caps.requests is None or amount.requests <= self.caps.requests

    @invariant()
    def settled_plus_reserved_within_the_cap(self) -> None:
        self._capped(self.ledger.committed())

    @invariant()
    def what_the_provider_billed_is_within_the_cap(self) -> None:
        self._capped(self.billed)

    @invariant()
    def the_ledger_never_counts_less_than_was_billed(self) -> None:
        committed = self.ledger.committed()
        assert self.billed.nano <= committed.nano
        assert self.billed.tokens <= committed.tokens
        assert self.billed.requests <= committed.requests

    @invariant()
    def reservations_match_open_attempts(self) -> None:
        assert self.ledger.reserved.requests == len(self.attempts)
        assert self.ledger.reserved.requests == len(self.attempts)


LedgerMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=50, deadline=None)
test_ledger_holds_the_cap_through_random_interleavings_and_crashes = LedgerMachine.TestCase
