"""The request log: stable error names, the statuses it stores, and reserve → settle / release
against a real DuckDB table, with the ledger as its guard."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest

from budgets.ledger import Ledger, Spend, spend_from_log
from budgets.prices import to_nano
from engine.chat import ChatRequest, ChatResult, Message, Usage
from engine.config import BudgetConfig
from engine.errors import (
    AuthenticationFailed,
    BudgetExhausted,
    CapacityUnavailable,
    ConnectFailed,
    ConnectionLost,
    ConnectionRefused,
    ConnectTimeout,
    ContentFiltered,
    ContextLengthExceeded,
    FatalRunError,
    HostNotFound,
    MalformedResponse,
    ModelNotFound,
    NotChatCompletions,
    OversizeRequest,
    PermanentRequestError,
    PermissionDenied,
    RateLimited,
    RequestError,
    RequestTimeout,
    ServerError,
    ServerUnreachable,
    StateError,
    SystematicFailure,
    TransientError,
    UnsupportedParameter,
    request_error_classes,
)
from engine.headers import RateLimitSnapshot
from state import requestlog
from state.requestlog import (
    UNBILLED,
    AttemptStatus,
    FinishedRow,
    RequestLog,
    RequestRow,
    Ticket,
    attempt_summary,
    may_be_billed,
    request_key,
    spend_total,
)
from state.schema import create_schema

pytestmark = pytest.mark.anyio

# What old state files hold: these names and their billing must never change with a rename.
STABLE: dict[type[RequestError], tuple[str, bool]] = {
    RequestError: ("request_error", True),
    TransientError: ("transient_error", True),
    ServerError: ("server_error", False),
    RequestTimeout: ("request_timeout", True),
    ConnectionLost: ("connection_lost", True),
    ConnectFailed: ("connect_failed", False),
    ConnectionRefused: ("connection_refused", False),
    ConnectTimeout: ("connect_timeout", False),
    HostNotFound: ("host_not_found", False),
    MalformedResponse: ("malformed_response", True),
    RateLimited: ("rate_limited", False),
    PermanentRequestError: ("permanent_request_error", True),
    ContextLengthExceeded: ("context_length_exceeded", False),
    ContentFiltered: ("content_filtered", True),
    OversizeRequest: ("oversize_request", False),
    FatalRunError: ("fatal_run_error", True),
    AuthenticationFailed: ("authentication_failed", False),
    PermissionDenied: ("permission_denied", False),
    ModelNotFound: ("model_not_found", False),
    ServerUnreachable: ("server_unreachable", False),
    NotChatCompletions: ("not_chat_completions", True),
    SystematicFailure: ("systematic_failure", True),
    CapacityUnavailable: ("capacity_unavailable", False),
    UnsupportedParameter: ("unsupported_parameter", False),
}


def test_error_classes_have_stable_names_and_billing() -> None:
    """Each error class spells out its stored name and whether it may be billed; none repeats."""
    for cls, (name, billed) in STABLE.items():
        assert "error_class" in vars(cls) and "billed" in vars(cls), cls  # stated, not inherited
        assert (cls.error_class, cls.billed) == (name, billed)
    found = {n: c for n, c in request_error_classes().items() if c.__module__ == "engine.errors"}
    assert found == {name: cls for cls, (name, _) in STABLE.items()}
    assert {name for cls, (name, billed) in STABLE.items() if not billed} == UNBILLED


def test_instances_carry_the_class_facts() -> None:
    """An error instance answers error_class and billed from its class."""
    error = ServerError("503", status=503)
    assert (error.error_class, error.billed) == ("server_error", False)
    assert RequestTimeout("slow").billed and not RateLimited("429").billed


def test_unknown_or_missing_class_counts_as_billed() -> None:
    """A stored class this version does not know, or none at all, may have been billed."""
    assert not may_be_billed("server_error")
    assert may_be_billed("request_timeout")
    assert may_be_billed("from_a_newer_version")
    assert may_be_billed(None)


def test_statuses_are_the_stored_strings() -> None:
    """The enum's values are exactly what existing request tables hold."""
    assert {s.value for s in AttemptStatus} == {"reserved", "ok", "error", "rejected", "unknown"}
    assert requestlog.status_is(AttemptStatus.OK, AttemptStatus.ERROR, column="r.status") == (
        "r.status IN ('ok', 'error')"
    )


# --- reserve, settle, release ------------------------------------------------------------------


class TableSink:
    """The batcher's part: writes each row into the table at once (or fails, if told to)."""

    def __init__(self, conn: duckdb.DuckDBPyConnection) -> None:
        self.conn = conn
        self.fail: BaseException | None = None

    def _done(self, write: Callable[[], None]) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.fail is not None:
            fut.set_exception(self.fail)
        else:
            write()
            fut.set_result(None)
        return fut

    def reserved(self, row: RequestRow) -> asyncio.Future[None]:
        return self._done(lambda: requestlog.write_reserved(self.conn, [row]))

    def finished(self, row: FinishedRow) -> asyncio.Future[None]:
        return self._done(lambda: requestlog.write_finished(self.conn, [row]))


class Prices:
    """$1 per 1000 tokens charged, $1 per 1000 tokens used."""

    def worst_case(self, request: ChatRequest) -> float:
        return request.charge / 1000

    def actual(self, usage: Usage) -> float:
        return usage.total_tokens / 1000


@pytest.fixture
def conn() -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect(":memory:")
    create_schema(connection)
    return connection


def chat(step: int = 0, *, prompt: int = 100, max_tokens: int = 400) -> ChatRequest:
    return ChatRequest(
        messages=(Message("user", "hi", prompt),), max_tokens=max_tokens, key=request_key(7, step)
    )


def reply(prompt: int, completion: int) -> ChatResult:
    return ChatResult("ok", "stop", Usage(prompt, completion), "m", RateLimitSnapshot(), 0.25)


def status_of(conn: duckdb.DuckDBPyConnection, request_id: int) -> tuple[object, ...]:
    row = conn.execute(
        "SELECT status, error_class, cost_usd, conv_id, step FROM requests WHERE request_id = ?",
        [request_id],
    ).fetchone()
    assert row is not None
    return tuple(row)


def make_log(conn: duckdb.DuckDBPyConnection, caps: BudgetConfig) -> tuple[RequestLog, Ledger]:
    ledger = Ledger(caps)
    log = RequestLog(TableSink(conn), model="m", next_request_id=1, costs=Prices(), guard=ledger)
    return log, ledger


async def test_reserve_logs_before_send_and_settle_records_the_real_cost(
    conn: duckdb.DuckDBPyConnection,
) -> None:
    """reserve: a reserved row with the worst case held; settle: ok with the real cost."""
    log, ledger = make_log(conn, BudgetConfig(usd=10.0))
    request = chat(step=3)
    ticket = await log.reserve(request, attempt=1)
    assert status_of(conn, 1) == ("reserved", None, None, 7, 3)
    assert ledger.reserved == Spend(to_nano(request.charge / 1000), request.charge, 1)
    cost = log.settle(ticket, reply(100, 50))
    assert cost == pytest.approx(0.15)
    assert status_of(conn, 1)[:3] == ("ok", None, pytest.approx(0.15))
    assert ledger.reserved == Spend()
    assert spend_from_log(conn) == ledger.spent == Spend(to_nano(0.15), 150, 1)


@pytest.mark.parametrize(
    ("error", "billed"),
    [
        (ServerError("500", status=500), False),
        (RateLimited("429"), False),
        (RequestTimeout("slow"), True),
        (ConnectionLost("reset"), True),
    ],
)
async def test_release_after_admission_counts_what_may_have_been_billed(
    conn: duckdb.DuckDBPyConnection, error: RequestError, billed: bool
) -> None:
    """A failure that reached the server is an error row; its worst case counts if billed."""
    log, ledger = make_log(conn, BudgetConfig(usd=10.0))
    ticket = await log.reserve(chat(), attempt=1)
    assert isinstance(ticket, Ticket)
    log.release(ticket, error, admitted=True)
    assert status_of(conn, 1)[:2] == ("error", error.error_class)
    worst = Spend(to_nano(ticket.reserved_usd), ticket.reserved_tokens, 1)
    assert ledger.spent == (worst if billed else Spend(0, 0, 1))
    assert spend_from_log(conn) == ledger.spent  # the log and the ledger agree after a restart


async def test_release_before_admission_is_free(conn: duckdb.DuckDBPyConnection) -> None:
    """An attempt the limiter never admitted is rejected, costs nothing and is not a request."""
    log, ledger = make_log(conn, BudgetConfig(requests=5))
    ticket = await log.reserve(chat(), attempt=1)
    log.release(ticket, OversizeRequest("too big"), admitted=False)
    assert status_of(conn, 1)[:3] == ("rejected", "oversize_request", 0.0)
    assert ledger.spent == Spend() == spend_from_log(conn)


async def test_cancelled_in_flight_stays_reserved_and_counts_at_worst(
    conn: duckdb.DuckDBPyConnection,
) -> None:
    """No error and admitted (cancelled mid-flight): outcome unknown, so it counts as spent."""
    log, ledger = make_log(conn, BudgetConfig(usd=10.0))
    ticket = await log.reserve(chat(), attempt=1)
    log.release(ticket, None, admitted=True)
    assert status_of(conn, 1)[0] == "reserved"
    worst = Spend(to_nano(ticket.reserved_usd), ticket.reserved_tokens, 1)
    assert ledger.spent == worst == spend_from_log(conn)
    summary = attempt_summary(conn)
    assert (summary.sent, summary.ok, summary.reserved_usd) == (1, 0, ticket.reserved_usd)


async def test_cancelled_before_send_is_rejected_as_cancelled(
    conn: duckdb.DuckDBPyConnection,
) -> None:
    """No error and not admitted: a rejected row whose class says it was cancelled."""
    log, ledger = make_log(conn, BudgetConfig(usd=10.0))
    ticket = await log.reserve(chat(), attempt=1)
    log.release(ticket, None, admitted=False)
    assert status_of(conn, 1)[:2] == ("rejected", requestlog.CANCELLED)
    assert ledger.spent == Spend()


async def test_a_cap_refuses_before_anything_is_logged(conn: duckdb.DuckDBPyConnection) -> None:
    """BudgetExhausted at reserve: no row, nothing held, the next id is not reused."""
    log, ledger = make_log(conn, BudgetConfig(usd=0.3))
    with pytest.raises(BudgetExhausted, match=r"budget\.usd"):
        await log.reserve(chat(max_tokens=400), attempt=1)  # worst case $0.50
    assert conn.execute("SELECT count(*) FROM requests").fetchone() == (0,)
    assert ledger.reserved == Spend()
    ticket = await log.reserve(chat(max_tokens=100), attempt=1)
    assert ticket.request_id == 2


async def test_a_failed_write_gives_the_reservation_back(conn: duckdb.DuckDBPyConnection) -> None:
    """If the reserved row cannot be committed, the request is not sent and holds nothing."""
    log, ledger = make_log(conn, BudgetConfig(usd=10.0))
    sink = log._sink
    assert isinstance(sink, TableSink)
    sink.fail = StateError("disk full")
    with pytest.raises(StateError, match="disk full"):
        await log.reserve(chat(), attempt=1)
    assert ledger.reserved == Spend() and ledger.spent == Spend()


async def test_summary_counts_retries_429s_and_failed_steps(
    conn: duckdb.DuckDBPyConnection,
) -> None:
    """attempt_summary: a 429 is not a retry; a step whose last attempt failed is a failure."""
    log, _ = make_log(conn, BudgetConfig())
    outcomes: list[tuple[int, RequestError | None]] = [
        (0, RateLimited("429")),
        (0, ServerError("500")),
        (0, None),  # step 0: a 429, a retried 5xx, then ok
        (1, RequestTimeout("slow")),  # step 1: failed for good
    ]
    for attempt, (step, error) in enumerate(outcomes, start=1):
        ticket = await log.reserve(chat(step), attempt=attempt)
        if error is None:
            log.settle(ticket, reply(100, 10))
        else:
            log.release(ticket, error, admitted=True)
    summary = attempt_summary(conn)
    assert (summary.sent, summary.ok, summary.rate_limited) == (4, 1, 1)
    assert (summary.retries, summary.failed_steps) == (1, 1)
    assert summary.errors_by_class == {"server_error": 1, "request_timeout": 1}
    assert summary.last_error is not None and summary.last_error[0] == "request_timeout"
    assert spend_total(conn, per_usd=1_000_000_000)[2] == 4


def test_no_module_but_the_request_log_writes_a_status_into_sql() -> None:
    """Attempt statuses become SQL in state/requestlog.py only; the rest use its enum or queries."""
    root = Path(__file__).resolve().parent.parent
    literal = re.compile(
        r"status\s*(?:=|<>|!=|IN\s*\()\s*'(?:" + "|".join(s.value for s in AttemptStatus) + ")'",
        re.IGNORECASE,
    )
    offenders = [
        f"{path.relative_to(root)}:{n}"
        for package in ("engine", "state", "budgets", "prompts")
        for path in sorted((root / package).rglob("*.py"))
        if path != root / "state" / "requestlog.py"
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if literal.search(line)
    ]
    assert offenders == []
