"""The request log: every attempt is logged before it is sent and settled after.

This module is what the request table means, in one place: the attempt statuses
(``AttemptStatus``), which failed attempts may have been billed (each error class's stable
``error_class`` and ``billed``), the table's writes, and the queries the budget, the progress
display and the statistics read (``spend_total``, ``spend_by``, ``attempt_summary``). No other
module writes a status into SQL; one that filters on it uses ``status_is``.

Running totals: every write to the table also shifts the store's row of ``log_totals`` (sums of
the figures ``attempt_summary`` and ``spend_total`` read), in the same transaction, so they are
exact after a kill and cost a read of one row instead of a scan of millions. A store that has
rows but no totals yet (made by an older m2l) gets them from one scan when opened for writing
(``ensure_totals``); read-only, such a store is scanned as before. Each store keeps its own
row, so the figures of several stores (a sharded run's) are their rows' sums.

``RequestLog`` is the dispatcher's Accounting: ``reserve`` commits the attempt's row (status
reserved) before the request goes out, so after a crash every attempt whose outcome is unknown
is on record; ``settle`` and ``release`` update it in the next flush. Rows go through the
writer's journal batcher (state/batcher.py), shared with the run store, so many attempts are
logged by one statement. Prices and caps plug in through ``CostModel`` and ``Guard`` (the
budget's ledger).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias

from engine.chat import ChatRequest, ChatResult, Usage, cost_parts
from engine.errors import RateLimited, RequestError, request_error_classes
from state._bulk import columns, marks, now, unnest

if TYPE_CHECKING:
    # Only a type here: the dispatcher imports this module (request keys) in processes, like a
    # benchmark's client, that never open a store and should not load DuckDB.
    import duckdb

__all__ = [
    "CANCELLED",
    "UNBILLED",
    "AttemptStatus",
    "AttemptSummary",
    "CostModel",
    "EndpointFigures",
    "FinishedRow",
    "FreeCosts",
    "Guard",
    "ModelFigures",
    "RequestLog",
    "RequestRow",
    "RowSink",
    "Ticket",
    "attempt_summary",
    "charged_and_used",
    "completion_lengths",
    "completions_by_step",
    "endpoint_figures",
    "ensure_totals",
    "may_be_billed",
    "model_figures",
    "model_sums",
    "parse_request_key",
    "read_totals",
    "rebuild_totals",
    "request_key",
    "settle_unknown",
    "spend_by",
    "spend_total",
    "status_is",
    "write_attempts",
    "write_finished",
    "write_reserved",
]

log = logging.getLogger(__name__)

Conn: TypeAlias = "duckdb.DuckDBPyConnection"


class AttemptStatus(enum.StrEnum):
    """Where one attempt stands: the ``status`` column of the request table."""

    RESERVED = "reserved"  # logged before it was sent; outcome unknown (a crash leaves it so)
    OK = "ok"  # answered: usage and cost settled
    ERROR = "error"  # admitted and failed: billed at its worst case unless its error is not
    REJECTED = "rejected"  # never admitted (a cap, the limiter, cancelled first): free
    # Left reserved by a kill or a stop that cut it short, found so on the next start: the
    # provider may or may not have answered (and billed) it, so it counts at its worst case,
    # shown apart as money held for unknown outcomes.
    UNKNOWN = "unknown"


def status_is(*statuses: AttemptStatus, column: str = "status") -> str:
    """A SQL condition: ``column`` holds one of ``statuses``."""
    return f"{column} IN ({', '.join(repr(s.value) for s in statuses)})"


# The error_class of an attempt cancelled before it was sent (no error: it was never answered).
CANCELLED = "cancelled"

# Stored error classes of failures the provider has certainly not billed: it answered with an
# error before generating anything. From each class's own ``billed``, so a new error class
# states it once.
UNBILLED: frozenset[str] = frozenset(
    name for name, cls in request_error_classes().items() if not cls.billed
)


def may_be_billed(error_class: str | None) -> bool:
    """Whether an admitted attempt that failed with this stored class may have been billed
    (None, or a class this version does not know: yes, so the cap holds)."""
    return error_class is None or error_class not in UNBILLED


def request_key(conv_id: int, step: int) -> str:
    """The key a step's requests carry (``conv_id:step``): it names the attempt in logs and
    events, and the log files each attempt under its conversation and step by it."""
    return f"{conv_id}:{step}"


def parse_request_key(key: str) -> tuple[int, int] | None:
    """``(conv_id, step)`` from a key made by request_key; None for any other key."""
    conv, _, step = key.partition(":")
    if conv.isdigit() and step.isdigit():
        return int(conv), int(step)
    return None


# --- writes ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestRow:
    """One attempt in the request log, as logged before it is sent."""

    request_id: int
    conv_id: int | None
    step: int | None
    attempt: int
    prompt_tokens: int
    max_tokens: int
    reserved_usd: float
    model: str
    endpoint: str | None = None  # where it went: a [[providers]] name, or "provider"


_RESERVED_TYPES = (
    "BIGINT", "BIGINT", "SMALLINT", "SMALLINT", "INTEGER", "INTEGER", "DOUBLE", "VARCHAR",
    "VARCHAR",
)  # fmt: skip


def write_reserved(
    conn: Conn, rows: Sequence[RequestRow], *, totals: _Counts | None = None
) -> None:
    """Log these attempts as sent with their costs reserved (status reserved); their share of
    the running totals goes into ``totals`` when given (``write_attempts``), else is added."""
    if not rows:
        return
    values = [
        (
            r.request_id,
            r.conv_id,
            r.step,
            r.attempt,
            r.prompt_tokens,
            r.max_tokens,
            r.reserved_usd,
            r.model,
            r.endpoint,
        )
        for r in rows
    ]
    head = """INSERT INTO requests (request_id, conv_id, step, attempt, prompt_tokens, max_tokens,
              reserved_usd, model, endpoint, status, sent_at)"""
    status = AttemptStatus.RESERVED.value
    sent_at = now()
    if len(values) == 1:
        conn.execute(f"{head} VALUES ({marks(11)})", [*values[0], status, sent_at])
    else:
        conn.execute(
            f"{head} SELECT {unnest(_RESERVED_TYPES)}, $10::VARCHAR, $11::TIMESTAMP",
            [*columns(values), status, sent_at],
        )
    delta = _Counts() if totals is None else totals
    for r in rows:
        delta.add(
            _Counted(status, None, r.prompt_tokens, r.max_tokens, None, None, r.reserved_usd), +1
        )
    delta.widen(first_sent=sent_at)
    if totals is None:
        _add_totals(conn, delta)


@dataclass(frozen=True, slots=True)
class FinishedRow:
    """How one attempt ended: ``ok`` with usage and cost, ``error`` or ``rejected``."""

    request_id: int
    status: AttemptStatus
    completion_tokens: int | None = None
    prompt_tokens: int | None = None  # None keeps the count logged when it was reserved
    cached_tokens: int | None = None
    latency_ms: float | None = None
    cost_usd: float | None = None
    error_class: str | None = None
    error: str | None = None
    reasoning_tokens: int | None = None  # part of completion_tokens
    service_tier: str | None = None  # the tier that served it (and set its price)
    reasoning_usd: float | None = None  # the part of cost_usd paid for hidden reasoning
    cache_saved_usd: float | None = None  # what the prompt cache took off cost_usd


_FINISHED_TYPES = (
    "BIGINT", "VARCHAR", "INTEGER", "INTEGER", "INTEGER", "DOUBLE", "DOUBLE", "VARCHAR", "VARCHAR",
    "INTEGER", "VARCHAR", "DOUBLE", "DOUBLE",
)  # fmt: skip


def write_finished(
    conn: Conn, rows: Sequence[FinishedRow], *, totals: _Counts | None = None
) -> None:
    """Settle these attempts (each request_id at most once per call, or they go one by one);
    the change to the running totals goes into ``totals`` when given, else is added."""
    if not rows:
        return
    if len(rows) > 1 and len({r.request_id for r in rows}) < len(rows):
        for row in rows:
            write_finished(conn, [row], totals=totals)
        return
    values = [
        (
            r.request_id,
            AttemptStatus(r.status).value,
            r.completion_tokens,
            r.prompt_tokens,
            r.cached_tokens,
            r.latency_ms,
            r.cost_usd,
            r.error_class,
            r.error,
            r.reasoning_tokens,
            r.service_tier,
            r.reasoning_usd,
            r.cache_saved_usd,
        )
        for r in rows
    ]
    # What these rows counted for before, taken out, and what they count for now, added: both
    # from their values in Python, as one small UPDATE of the totals (summing them in SQL cost
    # ~10 ms of planning per statement, more than the rest of a flush together).
    before = _read_counted(conn, [r.request_id for r in rows])
    delta = _Counts() if totals is None else totals
    for r in rows:
        old = before.get(r.request_id)
        if old is None:
            continue  # no such attempt: the UPDATE below changes nothing either
        delta.add(old, -1)
        delta.add(
            _Counted(
                AttemptStatus(r.status).value,
                r.error_class,
                old.prompt_tokens if r.prompt_tokens is None else r.prompt_tokens,
                old.max_tokens,
                r.completion_tokens,
                r.cost_usd,
                old.reserved_usd,
            ),
            +1,
        )
    finished_at = now()
    _update_finished(conn, values, finished_at)
    if before:
        delta.widen(last_finished=finished_at)
    if totals is None:
        _add_totals(conn, delta)


def write_attempts(
    conn: Conn, reserved: Sequence[RequestRow], finished: Sequence[FinishedRow]
) -> None:
    """``write_reserved`` then ``write_finished``, with one UPDATE of the totals for both (a
    flush's attempts: each statement costs ~1-2 ms of CPU whatever it holds)."""
    totals = _Counts()
    write_reserved(conn, reserved, totals=totals)
    write_finished(conn, finished, totals=totals)
    _add_totals(conn, totals)


def _update_finished(conn: Conn, values: Sequence[tuple[Any, ...]], finished_at: Any) -> None:
    if len(values) == 1:
        request_id, *rest = values[0]
        conn.execute(
            """UPDATE requests SET status = ?, completion_tokens = ?,
               prompt_tokens = coalesce(?, prompt_tokens), cached_tokens = ?, latency_ms = ?,
               cost_usd = ?, error_class = ?, error = ?, reasoning_tokens = ?, service_tier = ?,
               reasoning_usd = ?, cache_saved_usd = ?, finished_at = ? WHERE request_id = ?""",
            [*rest, finished_at, request_id],
        )
        return
    conn.execute(
        f"""UPDATE requests SET status = v.status, completion_tokens = v.completion_tokens,
            prompt_tokens = coalesce(v.prompt_tokens, requests.prompt_tokens),
            cached_tokens = v.cached_tokens, latency_ms = v.latency_ms, cost_usd = v.cost_usd,
            error_class = v.error_class, error = v.error, reasoning_tokens = v.reasoning_tokens,
            service_tier = v.service_tier, reasoning_usd = v.reasoning_usd,
            cache_saved_usd = v.cache_saved_usd, finished_at = $14::TIMESTAMP
            FROM (SELECT {unnest(_FINISHED_TYPES)}) AS v(request_id, status, completion_tokens,
                 prompt_tokens, cached_tokens, latency_ms, cost_usd, error_class, error,
                 reasoning_tokens, service_tier, reasoning_usd, cache_saved_usd)
            WHERE requests.request_id = v.request_id""",
        [*columns(values), finished_at],
    )


# --- what was spent ----------------------------------------------------------------------------

_OK = status_is(AttemptStatus.OK)
_RESERVED = status_is(AttemptStatus.RESERVED)
_SENT = f"NOT {status_is(AttemptStatus.REJECTED)}"
# Attempts that count at their reserved worst case: outcome unknown (a crash, a cancellation in
# flight), or admitted failures that may have been billed.
_AT_WORST = (
    f"({status_is(AttemptStatus.RESERVED, AttemptStatus.UNKNOWN)} OR "
    f"({status_is(AttemptStatus.ERROR)} AND "
    f"coalesce(error_class, '') NOT IN ({', '.join(repr(c) for c in sorted(UNBILLED))})))"
)


def _row_spend(per_usd: int, *, settled_only: bool) -> str:
    # floor(usd * per_usd + 0.5) on IEEE doubles: the rounding the ledger's Python side uses.
    scale = f"CAST({per_usd} AS DOUBLE)"
    worst = "FALSE" if settled_only else _AT_WORST
    return f"""
    CAST(CASE WHEN {_OK} THEN floor(coalesce(cost_usd, reserved_usd) * {scale} + 0.5)
              WHEN {worst} THEN floor(reserved_usd * {scale} + 0.5)
              ELSE 0 END AS BIGINT) AS money,
    CAST(CASE WHEN {_OK} THEN prompt_tokens + coalesce(completion_tokens, 0)
              WHEN {worst} THEN prompt_tokens + max_tokens
              ELSE 0 END AS BIGINT) AS tokens,
    CAST({_SENT} AS BIGINT) AS requests"""


def settle_unknown(conn: Conn, *, awaited: str | None = None) -> int:
    """Mark every attempt still reserved as of unknown outcome; how many (call it at start,
    while no attempt of this run can be in flight: the store's writer holds the file).

    ``awaited`` is a SQL query of request_ids whose outcome is still to come and known to come
    (lines of a provider's batch, which outlive the process): those stay reserved.
    """
    keep = f" AND request_id NOT IN ({awaited})" if awaited else ""
    ids = [
        int(r[0])
        for r in conn.execute(f"SELECT request_id FROM requests WHERE {_RESERVED}{keep}").fetchall()
    ]
    if not ids:
        return 0
    # The totals change as write_finished changes them: from the rows' values, in Python.
    before = _read_counted(conn, ids)
    finished_at = now()
    row = conn.execute(
        f"UPDATE requests SET status = ?, finished_at = ? WHERE {_RESERVED}{keep}",
        [_UNKNOWN_VALUE, finished_at],
    ).fetchone()
    delta = _Counts()
    for old in before.values():
        delta.add(old, -1)
        delta.add(replace(old, status=_UNKNOWN_VALUE), +1)
    delta.widen(last_finished=finished_at)
    _add_totals(conn, delta)
    return int(row[0]) if row else 0


# --- running totals ----------------------------------------------------------------------------

# Money in the totals is in nano-dollars, each row rounded as the ledger rounds it.
_TOTALS_PER_USD = 1_000_000_000
_OWN = "own"  # this store's row of log_totals (a merged or summed view adds other stores' rows)


def _nano(expr: str) -> str:
    return f"CAST(floor(({expr}) * CAST({_TOTALS_PER_USD} AS DOUBLE) + 0.5) AS BIGINT)"


def _counted(condition: str, value: str = "1") -> str:
    return f"CAST(CASE WHEN {condition} THEN {value} ELSE 0 END AS BIGINT)"


# What one row adds to each total: summed over the table, these are attempt_summary's and
# spend_total's figures (the same conditions, in one place).
_SUMS: tuple[tuple[str, str], ...] = (
    ("sent", _counted(_SENT)),
    ("ok", _counted(_OK)),
    ("charged_tokens", _counted(_SENT, "prompt_tokens + max_tokens")),
    ("prompt_tokens", _counted(_OK, "prompt_tokens")),
    ("completion_tokens", _counted(_OK, "coalesce(completion_tokens, 0)")),
    ("cost_nano", _nano("coalesce(cost_usd, 0)")),
    ("reserved_nano", _counted(_RESERVED, _nano("reserved_usd"))),
    ("unknown_nano", _counted(status_is(AttemptStatus.UNKNOWN), _nano("reserved_usd"))),
    ("unknown", _counted(status_is(AttemptStatus.UNKNOWN))),
    ("rate_limited", _counted(f"error_class = {RateLimited.error_class!r}")),
    ("spend_nano", f"money_{_TOTALS_PER_USD}"),
    ("spend_tokens", f"tokens_{_TOTALS_PER_USD}"),
    ("spend_requests", f"requests_{_TOTALS_PER_USD}"),
)
_TOTAL_NAMES = tuple(name for name, _ in _SUMS)


def _sums_of(where: str) -> str:
    """A SELECT of every total over the rows matching ``where``, then first sent, last done."""
    spend = _row_spend(_TOTALS_PER_USD, settled_only=False)
    for part in ("money", "tokens", "requests"):
        spend = spend.replace(f"AS {part}", f"AS {part}_{_TOTALS_PER_USD}")
    sums = ", ".join(f"coalesce(sum({expr}), 0) AS {name}" for name, expr in _SUMS)
    return (
        f"SELECT {sums}, min(sent_at) AS first_sent, max(finished_at) AS last_finished "
        f"FROM (SELECT *, {spend} FROM requests WHERE {where})"
    )


# The same totals kept from the rows' values in Python, for every write of the log: one small
# UPDATE of the totals row instead of summing the rows in SQL, whose many expressions cost
# ~10 ms of planning per statement, whatever the rows. _counts_of must say what _SUMS says (the
# tests compare the two after every kind of write).


@dataclass(frozen=True, slots=True)
class _Counted:
    """The columns of one request row that its share of the running totals depends on."""

    status: str
    error_class: str | None
    prompt_tokens: int
    max_tokens: int
    completion_tokens: int | None
    cost_usd: float | None
    reserved_usd: float


def _nano_of(usd: float) -> int:
    # floor(usd * 1e9 + 0.5) on IEEE doubles, as _nano rounds in SQL.
    return math.floor(usd * float(_TOTALS_PER_USD) + 0.5)


_RESERVED_VALUE = AttemptStatus.RESERVED.value
_UNKNOWN_VALUE = AttemptStatus.UNKNOWN.value
_AT_WORST_VALUES = frozenset({_RESERVED_VALUE, _UNKNOWN_VALUE})


def _counts_of(row: _Counted) -> tuple[int, ...]:
    """What one row adds to each total, in the order of ``_TOTAL_NAMES`` (see ``_SUMS``)."""
    status = row.status
    sent = status != AttemptStatus.REJECTED.value
    ok = status == AttemptStatus.OK.value
    unknown = status == _UNKNOWN_VALUE
    at_worst = status in _AT_WORST_VALUES or (
        status == AttemptStatus.ERROR.value and may_be_billed(row.error_class)
    )
    completion = row.completion_tokens or 0
    reserved = _nano_of(row.reserved_usd)
    money = tokens = 0
    if ok:
        money = _nano_of(row.reserved_usd if row.cost_usd is None else row.cost_usd)
        tokens = row.prompt_tokens + completion
    elif at_worst:
        money, tokens = reserved, row.prompt_tokens + row.max_tokens
    return (
        int(sent),
        int(ok),
        row.prompt_tokens + row.max_tokens if sent else 0,
        row.prompt_tokens if ok else 0,
        completion if ok else 0,
        _nano_of(row.cost_usd or 0.0),
        reserved if status == _RESERVED_VALUE else 0,
        reserved if unknown else 0,
        int(unknown),
        int(row.error_class == RateLimited.error_class),
        money,
        tokens,
        int(sent),
    )


class _Counts:
    """A change to the running totals being summed up, and the times that widen their span."""

    __slots__ = ("first_sent", "last_finished", "values")

    def __init__(self) -> None:
        self.values = [0] * len(_TOTAL_NAMES)
        self.first_sent: dt.datetime | None = None
        self.last_finished: dt.datetime | None = None

    def add(self, row: _Counted, sign: int) -> None:
        self.values = [v + sign * c for v, c in zip(self.values, _counts_of(row), strict=True)]

    def widen(
        self, *, first_sent: dt.datetime | None = None, last_finished: dt.datetime | None = None
    ) -> None:
        if first_sent is not None:
            self.first_sent = min(first_sent, self.first_sent or first_sent)
        if last_finished is not None:
            self.last_finished = max(last_finished, self.last_finished or last_finished)


def _read_counted(conn: Conn, request_ids: Sequence[int]) -> dict[int, _Counted]:
    """The counted columns of these attempts as they are now (missing ids are left out)."""
    head = """SELECT request_id, status, error_class, prompt_tokens, max_tokens, completion_tokens,
              cost_usd, reserved_usd FROM requests"""
    if len(request_ids) == 1:
        found = conn.execute(f"{head} WHERE request_id = ?", [request_ids[0]]).fetchall()
    else:
        # The ids are recent, so the range lets DuckDB skip every older block of the table.
        found = conn.execute(
            f"{head} WHERE request_id BETWEEN $1 AND $2 "
            "AND request_id IN (SELECT unnest($3::BIGINT[]))",
            [min(request_ids), max(request_ids), list(request_ids)],
        ).fetchall()
    return {int(r[0]): _Counted(*r[1:]) for r in found}


_ADD_TOTALS = (
    "UPDATE log_totals SET "
    + ", ".join(f"{name} = {name} + ${i}" for i, name in enumerate(_TOTAL_NAMES, start=1))
    + f", first_sent = least(first_sent, ${len(_TOTAL_NAMES) + 1}::TIMESTAMP)"
    + f", last_finished = greatest(last_finished, ${len(_TOTAL_NAMES) + 2}::TIMESTAMP)"
    + f" WHERE store = '{_OWN}'"
)


def _add_totals(conn: Conn, delta: _Counts) -> None:
    """Add ``delta`` to this store's totals; its times widen their span (least/greatest skip
    NULLs)."""
    if delta.first_sent is None and delta.last_finished is None and not any(delta.values):
        return
    conn.execute(_ADD_TOTALS, [*delta.values, delta.first_sent, delta.last_finished])


def ensure_totals(conn: Conn) -> None:
    """Give a writable store its row of running totals, from one scan of its log if it has
    none (a store made by an older m2l, or a new one: zeros)."""
    conn.execute(
        f"INSERT INTO log_totals SELECT '{_OWN}' AS store, * FROM ({_sums_of('TRUE')}) "
        f"WHERE NOT EXISTS (SELECT 1 FROM log_totals WHERE store = '{_OWN}')"
    )


def rebuild_totals(conn: Conn) -> None:
    """Count the totals again from the whole log, as the store's only row (after rows were
    written past the request log: a merge of shards, a benchmark's bulk copy)."""
    conn.execute("DELETE FROM log_totals")
    ensure_totals(conn)


@dataclass(frozen=True, slots=True)
class LogTotals:
    """The running totals of one or more stores (summed), money in nano-dollars."""

    sent: int
    ok: int
    charged_tokens: int
    prompt_tokens: int
    completion_tokens: int
    cost_nano: int
    reserved_nano: int
    unknown_nano: int
    unknown: int
    rate_limited: int
    spend_nano: int
    spend_tokens: int
    spend_requests: int
    span_s: float


def read_totals(conn: Conn) -> LogTotals | None:
    """The store's running totals, or None when it keeps none (made by an older m2l and not
    opened for writing since): the caller then scans the log."""
    has = conn.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'log_totals'"
    ).fetchone()
    if not has or not has[0]:
        return None
    sums = ", ".join(f"sum({name})" for name in _TOTAL_NAMES)
    row = conn.execute(
        f"SELECT count(*), {sums}, "
        "coalesce(epoch(max(last_finished)) - epoch(min(first_sent)), 0) FROM log_totals"
    ).fetchone()
    if row is None or not row[0]:
        return None
    counted = dict(zip(_TOTAL_NAMES, (int(v) for v in row[1:-1]), strict=True))
    return LogTotals(**counted, span_s=float(row[-1]))


def spend_total(conn: Conn, *, per_usd: int) -> tuple[int, int, int]:
    """(money, tokens, requests) the log says were spent, money in 1/``per_usd`` dollars.

    Settled attempts count at their real cost; attempts left reserved by a crash (outcome
    unknown) and admitted failures that may have been billed at their worst case; attempts never
    admitted not at all. This is the accounting the budget's cap is kept on.
    """
    if per_usd == _TOTALS_PER_USD and (kept := read_totals(conn)) is not None:
        return kept.spend_nano, kept.spend_tokens, kept.spend_requests
    row = conn.execute(
        "SELECT coalesce(sum(money), 0), coalesce(sum(tokens), 0), coalesce(sum(requests), 0) "
        f"FROM (SELECT {_row_spend(per_usd, settled_only=False)} FROM requests)"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def spend_by(
    conn: Conn,
    key: Literal["conv_id", "step"],
    *,
    per_usd: int,
    settled_only: bool = False,
) -> dict[int, tuple[int, int, int]]:
    """``spend_total`` per conversation or per step (rows with one). ``settled_only`` counts
    money and tokens of answered attempts only (what a step costs when it succeeds)."""
    rows = conn.execute(
        f"SELECT {key}, sum(money), sum(tokens), sum(requests) FROM (SELECT {key}, "
        f"{_row_spend(per_usd, settled_only=settled_only)} FROM requests "
        f"WHERE {key} IS NOT NULL) GROUP BY 1 ORDER BY 1"
    ).fetchall()
    return {int(k): (int(m), int(t), int(r)) for k, m, t, r in rows}


def completions_by_step(conn: Conn) -> dict[int, tuple[int, int]]:
    """(answered attempts, their completion tokens) per step, for rows with a step."""
    rows = conn.execute(
        f"""SELECT step, count(*), coalesce(sum(completion_tokens), 0) FROM requests
        WHERE step IS NOT NULL AND {_OK} GROUP BY 1 ORDER BY 1"""
    ).fetchall()
    return {int(step): (int(n), int(tokens)) for step, n, tokens in rows}


def charged_and_used(conn: Conn) -> tuple[int, int]:
    """(tokens charged against TPM: prompt + max_tokens of every attempt sent, tokens used:
    prompt + completion of every answered one)."""
    if (kept := read_totals(conn)) is not None:
        # The running totals hold both: no scan of the log (whose blocks a scan keeps cached).
        return kept.charged_tokens, kept.prompt_tokens + kept.completion_tokens
    row = conn.execute(
        f"""SELECT coalesce(sum(prompt_tokens + max_tokens) FILTER (WHERE {_SENT}), 0),
            coalesce(sum(prompt_tokens + coalesce(completion_tokens, 0)) FILTER (WHERE {_OK}), 0)
        FROM requests"""
    ).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def completion_lengths(conn: Conn, *, per_group: int) -> list[tuple[int, str, int, int]]:
    """(step, language code, completion tokens, max_tokens) of the latest answered attempts,
    at most ``per_group`` per step kind and language, oldest first: what adaptive max_tokens
    learns from when a run resumes."""
    kind = "CASE WHEN r.step = 0 THEN 0 WHEN r.step % 2 = 1 THEN 1 ELSE 2 END"
    rows = conn.execute(
        f"""SELECT step, language_code, completion_tokens, max_tokens FROM (
            SELECT r.request_id, r.step, c.language_code, r.completion_tokens, r.max_tokens,
                row_number() OVER (PARTITION BY {kind}, c.language_code
                                   ORDER BY r.request_id DESC) AS latest
            FROM requests r JOIN conversations c USING (conv_id)
            WHERE {status_is(AttemptStatus.OK, column="r.status")} AND r.step IS NOT NULL
                AND r.completion_tokens IS NOT NULL)
        WHERE latest <= ? ORDER BY request_id""",
        [per_group],
    ).fetchall()
    return [(int(s), str(c), int(t), int(m)) for s, c, t, m in rows]


# --- what happened -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AttemptSummary:
    """The request log summed up for a progress display."""

    sent: int  # attempts admitted (answered, failed or outcome unknown)
    ok: int
    charged_tokens: int  # prompt + max_tokens of admitted attempts: what TPM limits count
    prompt_tokens: int  # of answered attempts
    completion_tokens: int
    cost_usd: float
    reserved_usd: float  # held by attempts logged but not finished (in flight, when running)
    unknown_usd: float  # held at worst case by attempts a kill or stop left unknown
    unknown: int  # how many such attempts
    span_s: float  # first sent to last finished
    rate_limited: int  # 429 answers
    retries: int  # failed attempts (not 429s) that another attempt of the step followed
    failed_steps: int  # steps whose last attempt failed
    errors_by_class: dict[str, int]  # failed attempts by error class, 429s left out
    last_error: tuple[str | None, str] | None  # (error_class, message) of the latest failure


def _summary_totals(conn: Conn) -> tuple[Any, ...]:
    """(sent, ok, charged, prompt, completion, cost, reserved, held, unknown, span, 429s): from
    the running totals, or a scan of a store that keeps none."""
    kept = read_totals(conn)
    if kept is not None:
        usd = float(_TOTALS_PER_USD)
        return (
            kept.sent,
            kept.ok,
            kept.charged_tokens,
            kept.prompt_tokens,
            kept.completion_tokens,
            kept.cost_nano / usd,
            kept.reserved_nano / usd,
            kept.unknown_nano / usd,
            kept.unknown,
            kept.span_s,
            kept.rate_limited,
        )
    row = conn.execute(
        f"""SELECT count(*) FILTER (WHERE {_SENT}),
            count(*) FILTER (WHERE {_OK}),
            coalesce(sum(prompt_tokens + max_tokens) FILTER (WHERE {_SENT}), 0),
            coalesce(sum(prompt_tokens) FILTER (WHERE {_OK}), 0),
            coalesce(sum(completion_tokens) FILTER (WHERE {_OK}), 0),
            coalesce(sum(cost_usd), 0),
            coalesce(sum(reserved_usd) FILTER (WHERE {_RESERVED}), 0),
            coalesce(sum(reserved_usd) FILTER (WHERE {status_is(AttemptStatus.UNKNOWN)}), 0),
            count(*) FILTER (WHERE {status_is(AttemptStatus.UNKNOWN)}),
            coalesce(epoch(max(finished_at)) - epoch(min(sent_at)), 0),
            count(*) FILTER (WHERE error_class = {RateLimited.error_class!r})
        FROM requests"""
    ).fetchone()
    assert row is not None
    return tuple(row)


def attempt_summary(conn: Conn) -> AttemptSummary:
    """The request log's figures for a progress display."""
    rate_limited = repr(RateLimited.error_class)
    failed = status_is(AttemptStatus.ERROR, AttemptStatus.REJECTED)
    totals = _summary_totals(conn)
    # Like the live model: a retry is a failed attempt (not a 429, which only waits for the
    # limiter) that another attempt followed; a failed request is a step whose last attempt
    # did not succeed. Neither depends on how attempts are numbered.
    # Only steps with a failed attempt can count, so the window runs over those alone: over
    # the whole log it sorted every request (0.5 s at 10^5 conversations, seconds at 10^6).
    steps = conn.execute(
        f"""WITH failing AS (SELECT DISTINCT conv_id, step FROM requests WHERE {failed})
        SELECT count(*) FILTER (WHERE {failed} AND attempt < last_attempt
                AND coalesce(error_class, '') <> {rate_limited}),
            count(DISTINCT (conv_id, step)) FILTER (WHERE attempt = last_attempt AND {failed})
        FROM (SELECT r.conv_id, r.step, r.attempt, r.status, r.error_class,
                max(r.attempt) OVER (PARTITION BY r.conv_id, r.step) AS last_attempt
            FROM requests r JOIN failing f ON r.conv_id IS NOT DISTINCT FROM f.conv_id
                AND r.step IS NOT DISTINCT FROM f.step)"""
    ).fetchone()
    assert steps is not None
    errors = conn.execute(
        f"""SELECT error_class, count(*) FROM requests
        WHERE error_class IS NOT NULL AND error_class <> {rate_limited} GROUP BY 1"""
    ).fetchall()
    last = conn.execute(
        """SELECT error_class, error FROM requests WHERE error IS NOT NULL
        ORDER BY finished_at DESC NULLS LAST, request_id DESC LIMIT 1"""
    ).fetchone()
    (
        sent,
        ok,
        charged,
        tokens_in,
        tokens_out,
        spent,
        reserved,
        held,
        unknown,
        span,
        hits,
    ) = totals
    return AttemptSummary(
        sent=int(sent or 0),
        ok=int(ok or 0),
        charged_tokens=int(charged or 0),
        prompt_tokens=int(tokens_in or 0),
        completion_tokens=int(tokens_out or 0),
        cost_usd=float(spent or 0.0),
        reserved_usd=float(reserved or 0.0),
        unknown_usd=float(held or 0.0),
        unknown=int(unknown or 0),
        span_s=float(span or 0.0),
        rate_limited=int(hits or 0),
        retries=int(steps[0] or 0),
        failed_steps=int(steps[1] or 0),
        errors_by_class={str(c): int(n) for c, n in errors},
        last_error=None if last is None else (last[0], str(last[1])),
    )


@dataclass(frozen=True, slots=True)
class EndpointFigures:
    """The attempts that went to one endpoint (None: a store from before endpoints were
    recorded) and its model, as the log has them."""

    endpoint: str | None
    model: str | None
    sent: int  # attempts sent (429s included, attempts cancelled before sending not)
    ok: int
    rate_limited: int
    failed: int  # failed attempts other than 429s
    tokens: int  # prompt + completion tokens of answered attempts
    cost_usd: float
    latency_s: float | None  # mean time at the server of answered attempts


def endpoint_figures(conn: Conn) -> list[EndpointFigures]:
    """The log's attempts by the endpoint they went to, in the order endpoints were first used
    (a store with the ``endpoint`` column: see has_added_columns)."""
    rate_limited = repr(RateLimited.error_class)
    cancelled = repr(CANCELLED)
    failed = status_is(AttemptStatus.ERROR, AttemptStatus.REJECTED)
    rows = conn.execute(
        f"""SELECT endpoint, arg_max(model, request_id),
            count(*) FILTER (WHERE coalesce(error_class, '') <> {cancelled}),
            count(*) FILTER (WHERE {_OK}),
            count(*) FILTER (WHERE error_class = {rate_limited}),
            count(*) FILTER (WHERE {failed}
                AND coalesce(error_class, '') NOT IN ({rate_limited}, {cancelled})),
            coalesce(sum(prompt_tokens + coalesce(completion_tokens, 0)) FILTER (WHERE {_OK}), 0),
            coalesce(sum(cost_usd), 0),
            avg(latency_ms) FILTER (WHERE {_OK}) / 1000
        FROM requests GROUP BY 1 ORDER BY min(request_id)"""
    ).fetchall()
    return [
        EndpointFigures(
            None if e is None else str(e),
            None if m is None else str(m),
            int(sent),
            int(ok),
            int(hits),
            int(bad),
            int(tokens),
            float(cost),
            None if latency is None else float(latency),
        )
        for e, m, sent, ok, hits, bad, tokens, cost, latency in rows
    ]


@dataclass(frozen=True, slots=True)
class ModelFigures:
    """Hidden reasoning and the prompt cache, over answered attempts."""

    reasoning_tokens: int = 0
    cached_tokens: int = 0
    reasoning_usd: float = 0.0
    cache_saved_usd: float = 0.0


def model_sums(prefix: str = "") -> str:
    """SQL sums of the reasoning tokens, reasoning USD and cache savings of answered attempts
    (columns named ``prefix`` + name), for a store that has those columns."""
    ok = status_is(AttemptStatus.OK, column=f"{prefix}status")
    return (
        f"coalesce(sum({prefix}reasoning_tokens) FILTER (WHERE {ok}), 0), "
        f"coalesce(sum({prefix}reasoning_usd), 0), coalesce(sum({prefix}cache_saved_usd), 0)"
    )


def model_figures(conn: Conn, *, has_columns: bool = True) -> ModelFigures:
    """Reasoning and cache figures of the log. ``has_columns`` False (a store written before
    those columns existed, opened read-only since): reasoning and savings read as zero."""
    cached = conn.execute(f"SELECT coalesce(sum(cached_tokens), 0) FROM requests WHERE {_OK}")
    cached_tokens = int((cached.fetchone() or (0,))[0])
    if not has_columns:
        return ModelFigures(cached_tokens=cached_tokens)
    row = conn.execute(f"SELECT {model_sums()} FROM requests").fetchone()
    assert row is not None
    return ModelFigures(int(row[0]), cached_tokens, float(row[1]), float(row[2]))


# --- the dispatcher's accounting ---------------------------------------------------------------


class CostModel(Protocol):
    """Prices requests in USD."""

    def worst_case(self, request: ChatRequest) -> float: ...

    def actual(self, usage: Usage) -> float: ...


class Guard(Protocol):
    """Keeps settled + reserved within the caps (the budget ledger implements it)."""

    def reserve(self, ticket: Ticket) -> None:
        """Raises BudgetExhausted when the ticket would pass a cap."""
        ...

    def settle(self, ticket: Ticket, usd: float, tokens: int) -> None: ...

    def release(self, ticket: Ticket, *, admitted: bool, billed: bool = True) -> None:
        """The attempt failed; ``billed``: whether the provider may have charged it."""
        ...


class RowSink(Protocol):
    """Where the log's rows go: futures resolved once they are committed (the journal batcher)."""

    def reserved(self, row: RequestRow) -> asyncio.Future[None]: ...

    def finished(self, row: FinishedRow) -> asyncio.Future[None]: ...


class FreeCosts:
    """The CostModel of an unpriced model with no USD cap: every request costs nothing."""

    def worst_case(self, request: ChatRequest) -> float:
        return 0.0

    def actual(self, usage: Usage) -> float:
        return 0.0


@dataclass(frozen=True, slots=True)
class Ticket:
    """One attempt: its id in the request log and what it reserved."""

    request_id: int
    reserved_usd: float
    reserved_tokens: int


class RequestLog:
    """The dispatcher's Accounting, backed by the run's request table."""

    def __init__(
        self,
        sink: RowSink,
        *,
        model: str,
        next_request_id: int,
        costs: CostModel | None = None,
        guard: Guard | None = None,
        top_up: Callable[[Ticket], Awaitable[None]] | None = None,
    ) -> None:
        """``top_up`` (a shard of a sharded run) is awaited before the guard holds a ticket: it
        returns once the guard can hold it, or once nothing more can be granted."""
        self._sink = sink
        self._model = model
        self._next_id = next_request_id
        self._costs: CostModel = costs or FreeCosts()
        self._guard = guard
        self._top_up = top_up

    @staticmethod
    def next_id(conn: Conn) -> int:
        row = conn.execute("SELECT coalesce(max(request_id), 0) + 1 FROM requests").fetchone()
        return int(row[0]) if row else 1

    async def reserve(
        self, request: ChatRequest, attempt: int, *, endpoint: str = "", model: str = ""
    ) -> Ticket:
        ticket = Ticket(self._next_id, self._costs.worst_case(request), request.charge)
        self._next_id += 1
        if self._guard is not None:
            if self._top_up is not None:
                await self._top_up(ticket)
            self._guard.reserve(ticket)
        conv_id, step = parse_request_key(request.key) or (None, None)
        row = RequestRow(
            ticket.request_id,
            conv_id,
            step,
            attempt,
            request.prompt_tokens,
            request.max_tokens,
            ticket.reserved_usd,
            model or self._model,
            endpoint or None,
        )
        try:
            await asyncio.shield(self._sink.reserved(row))
        except BaseException:
            # Not sent: give the reservation back. Cancelled while the shielded insert was
            # under way, the row may still be written, so it is closed as never sent, too.
            if self._guard is not None:
                self._guard.release(ticket, admitted=False)
            self._submit(
                FinishedRow(
                    ticket.request_id,
                    status=AttemptStatus.REJECTED,
                    cost_usd=0.0,
                    error_class=CANCELLED,
                )
            )
            raise
        return ticket

    def settle(self, ticket: Ticket, result: ChatResult) -> float:
        usage = result.usage
        cost = self._costs.actual(usage)
        reasoning_usd, saved = cost_parts(self._costs.actual, usage, cost)
        if self._guard is not None:
            self._guard.settle(ticket, cost, usage.total_tokens)
        self._submit(
            FinishedRow(
                ticket.request_id,
                status=AttemptStatus.OK,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                cached_tokens=usage.cached_tokens,
                latency_ms=result.latency_s * 1000.0,
                cost_usd=cost,
                reasoning_tokens=usage.reasoning_tokens,
                service_tier=usage.service_tier,
                reasoning_usd=reasoning_usd,
                cache_saved_usd=saved,
            )
        )
        return cost

    def release(self, ticket: Ticket, error: RequestError | None, *, admitted: bool) -> None:
        if self._guard is not None:
            # No error: cancelled in flight, outcome unknown, so it may have been billed.
            billed = error.billed if error is not None else True
            self._guard.release(ticket, admitted=admitted, billed=billed)
        if error is None and admitted:
            # Cancelled mid-flight: the row stays reserved (outcome unknown, counted as spent).
            return
        self._submit(
            FinishedRow(
                ticket.request_id,
                status=AttemptStatus.ERROR if admitted else AttemptStatus.REJECTED,
                cost_usd=None if admitted else 0.0,
                error_class=error.error_class if error is not None else CANCELLED,
                error=str(error)[:500] if error is not None else None,
            )
        )

    def _submit(self, row: FinishedRow) -> None:
        self._sink.finished(row).add_done_callback(_log_failure)


def _log_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("could not update the request log: %s", future.exception())
