"""A run's statistics from its store: what was made (language × task, turns planned and made,
evol types), what was filtered and why, every output thrown away by reason × step kind ×
language with what it cost, and what the run cost (tokens and USD by language, task and step
kind).

DuckDB aggregates everything; Python only holds the small result tables. ``compute_stats``
raises StateError when the connection holds no m2l store; printing raises nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import duckdb
import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from engine.config import StoreConfig
from engine.errors import ConfigError, StateError
from engine.formats import usd
from engine.records import step_kind
from prompts.taxonomy import load_taxonomy
from state._tables import table_width
from state.journal import adaptive_caps, read_meta
from state.requestlog import AttemptStatus, charged_and_used, status_is
from state.schema import STATE_FILE, has_added_columns, release_cache, stored_store_config

__all__ = [
    "KINDS",
    "STATUSES",
    "Breakdown",
    "Failure",
    "LanguageTask",
    "LogTotals",
    "ReasonCount",
    "RejectionCount",
    "RunStats",
    "TurnsMade",
    "TypeCount",
    "compute_stats",
    "print_stats",
    "stats_json",
]

# Conversation statuses in the order tables show them; "open" is pending + active.
STATUSES = ("done", "filtered", "failed", "open")

# Step kinds of the request log, from the step number (a failed step has no message row).
KINDS = ("evolve", "answer", "follow_up", "other")

# The status columns of the counts tables (done, filtered, failed, not finished), as the
# statuses each counts: one not listed counts in none of them.
_STATUS_GROUPS = (("done",), ("filtered",), ("failed",), ("pending", "active"))
# The columns by SQL, and a conversation's status to its column when counted in Python.
_STATUS_COUNTS = ", ".join(
    f"count(*) FILTER (WHERE status IN ({', '.join(repr(s) for s in group)}))"
    for group in _STATUS_GROUPS
)
_STATUS_COLUMN = {status: at for at, group in enumerate(_STATUS_GROUPS) for status in group}


@dataclass(frozen=True, slots=True)
class LanguageTask:
    """Conversations of one language and task, by status."""

    language: str
    task: str
    done: int
    filtered: int
    failed: int
    open: int

    @property
    def total(self) -> int:
        return self.done + self.filtered + self.failed + self.open


@dataclass(frozen=True, slots=True)
class TypeCount:
    """Conversations (or follow-up turns) made with one evol type, by conversation status."""

    type: str
    done: int
    filtered: int
    failed: int
    open: int


@dataclass(frozen=True, slots=True)
class ReasonCount:
    """Filtered conversations of one language with one filter reason."""

    language: str
    reason: str
    conversations: int


@dataclass(frozen=True, slots=True)
class Failure:
    """Failed conversations sharing an error message's first words."""

    error: str
    conversations: int


@dataclass(frozen=True, slots=True)
class LogTotals:
    """Requests, tokens and USD of one group of the request log.

    Tokens count settled ('ok') attempts, whose usage the provider reported; USD sums every
    attempt's cost_usd, a missing price counting as 0.
    """

    requests: int
    ok: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_usd: float
    reasoning_tokens: int = 0  # hidden reasoning, part of completion_tokens
    reasoning_usd: float = 0.0  # the part of cost_usd paid for it
    cache_saved_usd: float = 0.0  # what cached prompt tokens took off cost_usd

    @property
    def cache_hit_rate(self) -> float:
        """The share of prompt tokens served from the provider's prompt cache."""
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def model_lines(self) -> list[str]:
        """Reasoning and prompt-cache figures in words (none when there were none)."""
        lines = []
        if self.reasoning_tokens:
            lines.append(
                f"of {_compact(self.completion_tokens)} output tokens, "
                f"{_compact(self.reasoning_tokens)} hidden reasoning, ${self.reasoning_usd:,.4f}"
            )
        if self.cached_tokens:
            lines.append(
                f"prompt cache: {self.cache_hit_rate:.0%} of {_compact(self.prompt_tokens)} "
                f"prompt tokens cached, saving ${self.cache_saved_usd:,.4f}"
            )
        return lines

    def __add__(self, other: LogTotals) -> LogTotals:
        return LogTotals(
            self.requests + other.requests,
            self.ok + other.ok,
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cached_tokens + other.cached_tokens,
            self.cost_usd + other.cost_usd,
            self.reasoning_tokens + other.reasoning_tokens,
            self.reasoning_usd + other.reasoning_usd,
            self.cache_saved_usd + other.cache_saved_usd,
        )


def _compact(n: int) -> str:
    """1234 → 1.2k, 1_234_567 → 1.2M: token counts in a sentence."""
    for size, suffix in ((1_000_000_000, "G"), (1_000_000, "M"), (1_000, "k")):
        if n >= size:
            return f"{n / size:.1f}{suffix}"
    return str(n)


@dataclass(frozen=True, slots=True)
class Breakdown:
    """The spend of one value of a grouping (a language, a task or a step kind)."""

    key: str
    spend: LogTotals


@dataclass(frozen=True, slots=True)
class RejectionCount:
    """Outputs thrown away for one reason, at one step kind, in one language, and their cost."""

    reason: str
    kind: str
    language: str
    outputs: int
    completion_tokens: int
    cost_usd: float


@dataclass(frozen=True, slots=True)
class TurnsMade:
    """Done conversations planned with ``planned`` turns that were kept with ``made``."""

    planned: int
    made: int
    conversations: int


@dataclass(frozen=True, slots=True)
class RunStats:
    """Everything ``m2l stats`` shows, as plain values."""

    run: str
    statuses: tuple[tuple[str, int], ...]
    language_task: tuple[LanguageTask, ...]
    turns: tuple[tuple[int, int], ...]  # (turns, done conversations)
    evol_types: tuple[TypeCount, ...]
    # The same conversations by kind of evol: task-agnostic, task-specific (seeds.evol_mix).
    evol_kinds: tuple[TypeCount, ...]
    evol_mix: tuple[tuple[str, float], ...]  # the weights the run asked for
    multiturn_types: tuple[TypeCount, ...]  # counts follow-up turns stored
    filter_reasons: tuple[ReasonCount, ...]
    failures: tuple[Failure, ...]
    by_language: tuple[Breakdown, ...]
    by_task: tuple[Breakdown, ...]
    by_kind: tuple[Breakdown, ...]
    total: LogTotals
    rejections: tuple[RejectionCount, ...] = ()
    # By the endpoint and model each attempt went to ("east · gpt-4o"), costliest first.
    by_endpoint: tuple[Breakdown, ...] = ()
    outputs: int = 0  # step outputs received (replies settled 'ok' for a conversation step)
    turns_made: tuple[TurnsMade, ...] = ()
    charged_tokens: int = 0  # prompt + max_tokens of every attempt sent: what TPM limits count
    used_tokens: int = 0  # prompt + completion of every answered attempt
    # Adaptive max_tokens: first tries' caps by step kind and source ("configured" while the
    # step kind learned, "pooled"/"own" learned, "full" learned but none lower passed).
    cap_sources: tuple[tuple[str, str, int], ...] = ()

    @property
    def charge_ratio(self) -> float:
        """Tokens charged against TPM per token used (0 before any reply)."""
        return self.charged_tokens / self.used_tokens if self.used_tokens else 0.0

    @property
    def redone(self) -> int:
        """Replies cut at max_tokens, thrown away and asked again (or failed) with more room."""
        return sum(r.outputs for r in self.rejections if r.reason == "truncated")

    @property
    def redone_usd(self) -> float:
        return sum(r.cost_usd for r in self.rejections if r.reason == "truncated")

    def charge_line(self) -> str | None:
        """The TPM charge and the replies cut at max_tokens, in words (None before any reply)."""
        if not self.used_tokens:
            return None
        share = self.redone / self.outputs if self.outputs else 0.0
        line = (
            f"TPM charge: {self.charge_ratio:.2f}x the tokens used ({_compact(self.charged_tokens)}"
            f" charged for {_compact(self.used_tokens)}); replies cut at max_tokens and redone: "
            f"{self.redone:,} ({share:.1%} of {self.outputs:,}), {usd(self.redone_usd)}"
        )
        sources: dict[str, int] = {}
        for _, source, n in self.cap_sources:
            sources[source] = sources.get(source, 0) + n
        if sources:
            learned = sources.get("pooled", 0) + sources.get("own", 0)
            line += (
                f"; adaptive max_tokens: {learned:,} of {sum(sources.values()):,} first tries "
                f"sent a learned cap ({sources.get('configured', 0):,} the configured one while "
                f"learning, {sources.get('full', 0):,} where no lower cap was safe)"
            )
        return line

    @property
    def rejected(self) -> int:
        """Outputs thrown away (failed a check, truncated, or dropped with a failed turn)."""
        return sum(r.outputs for r in self.rejections)

    @property
    def rejected_usd(self) -> float:
        """What the thrown-away outputs cost."""
        return sum(r.cost_usd for r in self.rejections)

    @property
    def rejection_rate(self) -> float:
        """Share of received outputs thrown away (0 when nothing came back yet)."""
        return self.rejected / self.outputs if self.outputs else 0.0

    @property
    def partial(self) -> int:
        """Done conversations kept with fewer turns than planned (a late turn failed)."""
        return sum(t.conversations for t in self.turns_made if t.made < t.planned)

    def per_language(self) -> list[tuple[str, tuple[int, int, int, int]]]:
        """(language, (done, filtered, failed, open)) summed over tasks, by language name."""
        return _sum_by(self.language_task, lambda row: row.language)

    def per_task(self) -> list[tuple[str, tuple[int, int, int, int]]]:
        """(task, (done, filtered, failed, open)) summed over languages, by task name."""
        return _sum_by(self.language_task, lambda row: row.task)

    def reasons(self) -> list[tuple[str, int]]:
        """(filter reason, conversations) over all languages, most frequent first."""
        totals: dict[str, int] = {}
        for row in self.filter_reasons:
            totals[row.reason] = totals.get(row.reason, 0) + row.conversations
        return sorted(totals.items(), key=lambda item: (-item[1], item[0]))


def _sum_by(rows: Iterable[LanguageTask], key: Any) -> list[tuple[str, tuple[int, int, int, int]]]:
    sums: dict[str, list[int]] = {}
    for row in rows:
        acc = sums.setdefault(key(row), [0, 0, 0, 0])
        for i, value in enumerate((row.done, row.filtered, row.failed, row.open)):
            acc[i] += value
    return [(name, (a[0], a[1], a[2], a[3])) for name, a in sorted(sums.items())]


def compute_stats(conn: duckdb.DuckDBPyConnection, *, run: str) -> RunStats:
    """The statistics of the store on ``conn``; ``run`` names it when its config does not.

    Raises StateError when the connection holds no m2l store.
    """
    try:
        return _compute(conn, run)
    except duckdb.CatalogException as exc:
        raise StateError(f"this DuckDB file is not an m2l run store ({exc})") from exc


def _compute(conn: duckdb.DuckDBPyConnection, run: str) -> RunStats:
    def rows(sql: str) -> list[tuple[Any, ...]]:
        return conn.execute(sql).fetchall()

    store = stored_store_config(conn, Path(STATE_FILE))

    evol_types = _types(rows(f"SELECT evol_type, {_STATUS_COUNTS} FROM conversations GROUP BY 1"))
    language_task = tuple(
        LanguageTask(*r)
        for r in rows(
            f"SELECT language, task, {_STATUS_COUNTS} FROM conversations "
            "GROUP BY ALL ORDER BY language, task"
        )
    )
    spend, outputs = _spends(
        conn,
        store,
        languages=sorted({r.language for r in language_task}),
        tasks=sorted({r.task for r in language_task}),
    )
    charged, used = charged_and_used(conn)
    return RunStats(
        run=_run_name(conn) or run,
        statuses=tuple(
            (str(s), int(n))
            for s, n in rows(
                "SELECT status, count(*) FROM conversations GROUP BY 1 ORDER BY 2 DESC, 1"
            )
        ),
        language_task=language_task,
        turns=tuple(
            (int(t), int(n))
            for t, n in rows(
                "SELECT turns_planned, count(*) FROM conversations WHERE status = 'done' "
                "GROUP BY 1 ORDER BY 1"
            )
        ),
        evol_types=evol_types,
        evol_kinds=_evol_kinds(evol_types),
        evol_mix=_evol_mix(conn),
        multiturn_types=_multiturn_types(conn, store),
        filter_reasons=tuple(
            ReasonCount(*r)
            for r in rows(
                """SELECT language, coalesce(filter_reason, 'unknown'), count(*)
                FROM conversations WHERE status = 'filtered' GROUP BY ALL ORDER BY 1, 3 DESC, 2"""
            )
        ),
        failures=tuple(
            Failure(*r)
            for r in rows(
                """SELECT left(coalesce(error, 'unknown'), 80), count(*) FROM conversations
                WHERE status = 'failed' GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 10"""
            )
        ),
        by_language=spend["language"],
        by_task=spend["task"],
        by_kind=_by_kind(spend["step"]),
        by_endpoint=spend["endpoint"],
        total=next(iter(spend["all"]), Breakdown("all", _NO_SPEND)).spend,
        rejections=_rejections(conn) if has_added_columns(conn) else (),
        outputs=outputs,
        turns_made=tuple(
            TurnsMade(int(p), int(m), int(n))
            for p, m, n in rows(
                """SELECT turns_planned, steps_done // 2, count(*) FROM conversations
                WHERE status = 'done' GROUP BY ALL ORDER BY 1, 2"""
            )
        ),
        charged_tokens=charged,
        cap_sources=_cap_sources(conn),
        used_tokens=used,
    )


_NO_SPEND = LogTotals(0, 0, 0, 0, 0, 0.0)


def _rejections(conn: duckdb.DuckDBPyConnection) -> tuple[RejectionCount, ...]:
    """Thrown-away outputs by reason, step kind and language, most first."""
    return tuple(
        RejectionCount(str(a), str(b), str(c), int(d), int(e), float(f))
        for a, b, c, d, e, f in conn.execute(
            """SELECT r.reason, r.kind, coalesce(c.language, '?'), count(*),
                coalesce(sum(r.completion_tokens), 0), coalesce(sum(r.cost_usd), 0)
            FROM rejections r LEFT JOIN conversations c USING (conv_id)
            GROUP BY ALL ORDER BY 4 DESC, 1, 2, 3"""
        ).fetchall()
    )


def _cap_sources(conn: duckdb.DuckDBPyConnection) -> tuple[tuple[str, str, int], ...]:
    """Adaptive max_tokens' caps by step kind and source, as the run's sessions counted them."""
    caps = adaptive_caps(read_meta(conn))
    return tuple(
        (kind, source, n)
        for kind, counts in sorted(caps.items())
        for source, n in sorted(counts.items())
    )


def _run_name(conn: duckdb.DuckDBPyConnection) -> str | None:
    row = conn.execute("SELECT value FROM run_meta WHERE key = 'config_json'").fetchone()
    if row is None:
        return None
    try:
        name = orjson.loads(row[0]).get("run", {}).get("name")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return name if isinstance(name, str) and name else None


_KIND_LABELS = {"evol_general": "task-agnostic", "evol_task": "task-specific"}


def _evol_kinds(types: Sequence[TypeCount]) -> tuple[TypeCount, ...]:
    """Conversations per kind of evol type, by the built-in taxonomy's kinds."""
    taxonomy = load_taxonomy()
    sums: dict[str, list[int]] = {}
    for t in types:
        try:
            kind = _KIND_LABELS.get(taxonomy.get(t.type).kind, "other")
        except ConfigError:
            kind = "other"  # a custom taxonomy's type
        acc = sums.setdefault(kind, [0, 0, 0, 0])
        for i, value in enumerate((t.done, t.filtered, t.failed, t.open)):
            acc[i] += value
    return tuple(TypeCount(k, *v) for k, v in sorted(sums.items()))


def _evol_mix(conn: duckdb.DuckDBPyConnection) -> tuple[tuple[str, float], ...]:
    row = conn.execute("SELECT value FROM run_meta WHERE key = 'config_json'").fetchone()
    try:
        mix = orjson.loads(row[0]).get("seeds", {}).get("evol_mix") if row else None
    except (orjson.JSONDecodeError, AttributeError):
        mix = None
    if not isinstance(mix, dict):
        return ()
    return tuple((str(k), float(v)) for k, v in sorted(mix.items()) if isinstance(v, int | float))


def _types(rows: Sequence[tuple[Any, ...]]) -> tuple[TypeCount, ...]:
    items = [TypeCount(str(r[0] or "(none)"), *r[1:]) for r in rows]
    return tuple(sorted(items, key=lambda t: (-t.done, -t.filtered, t.type)))


# The spend tables, in the order _spends returns them.
_SPEND_NAMES = ("language", "task", "step", "all", "endpoint")
_NO_CONVERSATION = "(no conversation)"
_NOT_RECORDED = "(not recorded)"


def _spends(
    conn: duckdb.DuckDBPyConnection,
    store: StoreConfig,
    *,
    languages: Sequence[str],
    tasks: Sequence[str],
) -> tuple[dict[str, tuple[Breakdown, ...]], int]:
    """Request-log spend by language, task, step, endpoint and in all, costliest first in each;
    and the step outputs received (answered attempts of a conversation step).

    The log is read one range of conversations at a time, by two queries: one joins the
    attempts to their conversation's language and task (as their places in ``languages`` and
    ``tasks``: integers hash faster than the strings), the other groups them by step, endpoint
    and model, columns of the log itself; both return a row per key and answered or not, the
    plain sums _spend_row makes a LogTotals of. Then DuckDB's cached blocks are let go
    (release_cache), so what this holds is one range's, whatever the run's size: one query over
    the whole log kept every block it read (+14 MB from 10^4 to 10^5 conversations).

    At 10^6 conversations (101 ranges) one query per range grouping by (language, task, step,
    endpoint) took 2.2 s and returned 2,124 rows a range, which Python then folded (0.9 s
    more): hashing the strings of the join and sums each with its own FILTER were most of it.
    """
    added = has_added_columns(conn)
    answered = status_is(AttemptStatus.OK, column="r.status")
    # A store from before the reasoning columns, opened read-only, reads them as zero.
    reasoning = (
        "sum(r.reasoning_tokens), sum(r.reasoning_usd), sum(r.cache_saved_usd)"
        if added
        else "0, 0, 0"
    )
    sums = (
        f"{answered}, count(*), sum(r.prompt_tokens), sum(r.completion_tokens), "
        f"sum(r.cached_tokens), sum(r.cost_usd), {reasoning}"
    )
    # Without the endpoint column (an old store opened read-only) every attempt is one row.
    endpoint = "r.endpoint, r.model" if added else "NULL, NULL"
    acc: dict[str, dict[Any, list[Any]]] = {name: {} for name in _SPEND_NAMES}
    outputs = 0
    for where in _conv_ranges(conn):
        on_r = where.replace("conv_id", "r.conv_id")
        for language, task, *sums_row in conn.execute(
            f"""SELECT c.language, c.task, {sums}
            FROM requests r LEFT JOIN
                (SELECT conv_id, list_position($1, language) AS language,
                    list_position($2, task) AS task
                FROM conversations WHERE {where}) c
                USING (conv_id)
            WHERE {on_r}
            GROUP BY ALL""",
            [languages, tasks],
        ).fetchall():
            values = _spend_row(*sums_row)
            _add(
                acc["language"],
                _NO_CONVERSATION if language is None else languages[language - 1],
                values,
            )
            _add(acc["task"], _NO_CONVERSATION if task is None else tasks[task - 1], values)
        for step, endpoint_name, model, *sums_row in conn.execute(
            f"SELECT r.step, {endpoint}, {sums} FROM requests r WHERE {on_r} GROUP BY ALL"
        ).fetchall():
            values = _spend_row(*sums_row)
            _add(acc["step"], step, values)
            _add(acc["all"], "all", values)
            key = (
                f"{_NOT_RECORDED if endpoint_name is None else endpoint_name} · "
                f"{'?' if model is None else model}"
                if added
                else _NOT_RECORDED
            )
            _add(acc["endpoint"], key, values)
            if step is not None:
                outputs += values[1]
        release_cache(conn, store)
    found: dict[str, tuple[Breakdown, ...]] = {}
    for name, by_key in acc.items():
        rows = [(key, Breakdown(str(key), LogTotals(*values))) for key, values in by_key.items()]
        # As ORDER BY cost DESC, key (NULLS LAST) would have them.
        rows.sort(key=lambda r: (-r[1].spend.cost_usd, r[0] is None, r[0]))
        found[name] = tuple(b for _, b in rows)
    return found, outputs


def _spend_row(
    answered: bool,
    requests: int,
    prompt: int | None,
    completion: int | None,
    cached: int | None,
    cost: float | None,
    reasoning: int | None,
    reasoning_usd: float | None,
    saved_usd: float | None,
) -> list[Any]:
    """A LogTotals' fields from plain sums over attempts answered or not: token counts are the
    answered attempts' (the usage the provider reported), USD every attempt's (as
    requestlog.model_sums sums them)."""
    n = int(requests)
    tokens = (n, int(prompt or 0), int(completion or 0), int(cached or 0)) if answered else (0,) * 4
    return [
        n, *tokens, float(cost or 0), int(reasoning or 0) if answered else 0,
        float(reasoning_usd or 0), float(saved_usd or 0),
    ]  # fmt: skip


def _add(sums: dict[Any, list[Any]], key: Any, values: Sequence[Any]) -> None:
    """Add one row of a range's sums to ``key``'s."""
    acc = sums.get(key)
    if acc is None:
        sums[key] = list(values)
    else:
        for i, value in enumerate(values):
            acc[i] += value


def _multiturn_types(conn: duckdb.DuckDBPyConnection, store: StoreConfig) -> tuple[TypeCount, ...]:
    """Stored follow-up turns by multi-turn type and their conversation's status, one range of
    conversations at a time as _spends reads them (the join over all of them grew with N).

    Both sides of the join are cut to the range: with the messages' side alone, DuckDB built
    its join on the range's messages and probed every conversation of the store for each range
    (at 10^6 conversations 0.6-1.3 s, and the command's peak, 210 MB). A row per (type,
    status) counted into the status columns here costs less than a FILTER per column."""
    counts: dict[Any, list[int]] = {}
    for where in _conv_ranges(conn, "conversations"):
        for evol_type, status, n in conn.execute(
            f"""SELECT m.evol_type, c.status, count(*)
            FROM messages m JOIN (SELECT conv_id, status FROM conversations WHERE {where}) c
                USING (conv_id)
            WHERE m.kind = 'follow_up' AND {where.replace("conv_id", "m.conv_id")}
            GROUP BY ALL"""
        ).fetchall():
            acc = counts.setdefault(evol_type, [0, 0, 0, 0])
            if (at := _STATUS_COLUMN.get(status)) is not None:
                acc[at] += int(n)
        release_cache(conn, store)
    return _types([(evol_type, *n) for evol_type, n in counts.items()])


# Conversations per range of the spend query: a few row groups of the request log each. One
# range's queries are most of what `m2l stats` holds above its start: ranges of 20,000 made it
# 11% larger on a 10^5 run than on a 10^4 one (7% at 10,000, for a third more CPU at 10^6;
# 5,000 doubled the CPU); with the queries of 2026-12-03 still 12% at 20,000 and 22% at 50,000.
_SPEND_RANGE = 10_000


def _conv_ranges(conn: duckdb.DuckDBPyConnection, table: str = "requests") -> list[str]:
    """SQL conditions on conv_id that together cover every row of ``table`` once: ranges of
    _SPEND_RANGE conversation ids, then the rows of no conversation."""
    row = conn.execute(f"SELECT min(conv_id), max(conv_id) FROM {table}").fetchone()
    ranges = ["conv_id IS NULL"]
    if row is not None and row[0] is not None:
        lo, hi = int(row[0]), int(row[1])
        ranges[:0] = [
            f"conv_id >= {start} AND conv_id < {start + _SPEND_RANGE}"
            for start in range(lo, hi + 1, _SPEND_RANGE)
        ]
    return ranges


def _by_kind(by_step: tuple[Breakdown, ...]) -> tuple[Breakdown, ...]:
    """Spend per step folded into spend per step kind, in KINDS order."""
    kinds: dict[str, LogTotals] = {}
    for row in by_step:
        kind = "other" if row.key == "None" else step_kind(int(row.key)).value
        kinds[kind] = kinds[kind] + row.spend if kind in kinds else row.spend
    return tuple(Breakdown(k, kinds[k]) for k in KINDS if k in kinds)


def stats_json(stats: RunStats) -> bytes:
    """The statistics as one JSON document (UTF-8), for machines."""
    doc = asdict(stats)
    doc["statuses"] = dict(stats.statuses)
    doc["turns"] = [{"turns": t, "conversations": n} for t, n in stats.turns]
    doc["total"]["cache_hit_rate"] = round(stats.total.cache_hit_rate, 4)
    doc["rejected"] = {
        "outputs": stats.rejected,
        "of_outputs": stats.outputs,
        "rate": round(stats.rejection_rate, 4),
        "cost_usd": stats.rejected_usd,
    }
    doc["partial_conversations"] = stats.partial
    doc["tpm_charge"] = {
        "charged_tokens": stats.charged_tokens,
        "used_tokens": stats.used_tokens,
        "charged_per_used": round(stats.charge_ratio, 4),
        "redone_replies": stats.redone,
        "redone_share": round(stats.redone / stats.outputs, 4) if stats.outputs else 0.0,
        "redone_usd": stats.redone_usd,
        "adaptive_caps": _nested(stats.cap_sources),
    }
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2)


def _nested(rows: Iterable[tuple[str, str, int]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for kind, source, n in rows:
        out.setdefault(kind, {})[source] = n
    return out


# --- terminal tables ---------------------------------------------------------------------------


def print_stats(stats: RunStats, console: Console) -> None:
    """Print the statistics as rich tables."""
    total = sum(n for _, n in stats.statuses)
    summary = ", ".join(f"{n} {s}" for s, n in stats.statuses) or "none"
    console.print(f"[bold]{escape(stats.run)}[/bold]: {total} conversations ({summary})")
    for line in stats.total.model_lines():
        console.print(escape(line))
    charge = stats.charge_line()
    if charge is not None:
        console.print(escape(charge))
    grid = _language_task_table(stats)
    if table_width(grid) > console.width:
        # A column per task does not fit: one row per language, listing its tasks.
        grid = _language_task_list(stats)
    for table in (
        grid,
        _status_table("Conversations by language", "language", stats.per_language()),
        _status_table("Conversations by task", "task", stats.per_task()),
        _turns_table(stats),
        _types_table(_mix_title(stats), stats.evol_kinds),
        _types_table("Task evol types (conversations)", stats.evol_types),
        _types_table("Multi-turn evol types (follow-up turns)", stats.multiturn_types),
        _reasons_table(stats),
        _pairs_table(
            "Failures",
            ("error", "conversations"),
            [(f.error, f.conversations) for f in stats.failures],
        ),
        _rejections_table(stats),
        _spend_table("Spend by step kind", "step kind", stats.by_kind, stats.total),
        _spend_table("Spend by language", "language", stats.by_language, stats.total),
        _spend_table("Spend by task", "task", stats.by_task, stats.total),
        _spend_table(
            "Spend by endpoint",
            "endpoint · model",
            stats.by_endpoint if len(stats.by_endpoint) > 1 else (),
            stats.total,
        ),
    ):
        if table.row_count:
            console.print(table)


def _mix_title(stats: RunStats) -> str:
    """The evol-mix table's title, with the mix the run asked for when it is known."""
    total = sum(t.done + t.filtered + t.failed + t.open for t in stats.evol_kinds) or 1
    shares = ", ".join(
        f"{t.type} {100 * (t.done + t.filtered + t.failed + t.open) / total:.0f}%"
        for t in stats.evol_kinds
    )
    asked = ", ".join(f"{k} {v:g}" for k, v in stats.evol_mix)
    return f"Evol mix (conversations): {shares}" + (f"; asked {asked}" if asked else "")


def _turns_table(stats: RunStats) -> Table:
    table = Table(
        title="Turns of done conversations: planned vs made"
        + (f" ({stats.partial} kept short after a late failure)" if stats.partial else ""),
        title_justify="left",
    )
    for column in ("planned", "made", "conversations"):
        table.add_column(column, justify="right")
    for t in stats.turns_made:
        style = "yellow" if t.made < t.planned else None
        table.add_row(str(t.planned), str(t.made), str(t.conversations), style=style)
    return table


def _rejections_table(stats: RunStats) -> Table:
    title = (
        f"Rejected outputs: {stats.rejected:,} of {stats.outputs:,} "
        f"({stats.rejection_rate:.1%}), {usd(stats.rejected_usd)} spent on them"
    )
    table = Table(title=title, title_justify="left")
    for column in ("reason", "step kind", "language"):
        table.add_column(column)
    for column in ("outputs", "completion tokens", "cost"):
        table.add_column(column, justify="right")
    for r in stats.rejections:
        table.add_row(
            r.reason, r.kind, r.language, f"{r.outputs:,}", f"{r.completion_tokens:,}",
            usd(r.cost_usd),
        )  # fmt: skip
    return table


def _language_task_table(stats: RunStats) -> Table:
    tasks = sorted({row.task for row in stats.language_task})
    table = Table(title="Done conversations: language × task", title_justify="left")
    table.add_column("language")
    for task in tasks:
        table.add_column(task, justify="right")
    table.add_column("all", justify="right", style="bold")
    cells: dict[tuple[str, str], int] = {(r.language, r.task): r.done for r in stats.language_task}
    for language, counts in stats.per_language():
        row = [str(cells.get((language, task), 0) or "·") for task in tasks]
        table.add_row(language, *row, str(counts[0]))
    return table


def _language_task_list(stats: RunStats) -> Table:
    table = Table(title="Done conversations: language × task", title_justify="left")
    table.add_column("language")
    table.add_column("done", justify="right", style="bold")
    table.add_column("by task")
    by_language: dict[str, list[tuple[str, int]]] = {}
    for row in stats.language_task:
        if row.done:
            by_language.setdefault(row.language, []).append((row.task, row.done))
    for language, counts in stats.per_language():
        tasks = sorted(by_language.get(language, []), key=lambda item: (-item[1], item[0]))
        table.add_row(language, str(counts[0]), ", ".join(f"{t} {n}" for t, n in tasks))
    return table


def _status_table(
    title: str, name: str, rows: Sequence[tuple[str, tuple[int, int, int, int]]]
) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column(name, overflow="fold")
    for status in STATUSES:
        table.add_column(status, justify="right")
    for key, counts in rows:
        table.add_row(key, *(str(n) for n in counts))
    return table


def _pairs_table(title: str, header: tuple[str, str], rows: Iterable[tuple[Any, int]]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column(header[0], overflow="fold")
    table.add_column(header[1], justify="right")
    for key, n in rows:
        table.add_row(str(key), str(n))
    return table


def _types_table(title: str, rows: Sequence[TypeCount]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("type", overflow="fold")
    for status in STATUSES:
        table.add_column(status, justify="right")
    for t in rows:
        table.add_row(t.type, str(t.done), str(t.filtered), str(t.failed), str(t.open))
    return table


def _reasons_table(stats: RunStats) -> Table:
    reasons = [reason for reason, _ in stats.reasons()]
    table = Table(title="Filter reasons by language", title_justify="left")
    table.add_column("language")
    for reason in reasons:
        table.add_column(reason, justify="right")
    cells = {(r.language, r.reason): r.conversations for r in stats.filter_reasons}
    for language in sorted({r.language for r in stats.filter_reasons}):
        table.add_row(language, *(str(cells.get((language, x), 0) or "·") for x in reasons))
    return table


def _spend_table(title: str, name: str, rows: Sequence[Breakdown], total: LogTotals) -> Table:
    table = Table(title=title, title_justify="left", show_footer=bool(rows))
    columns = ("requests", "ok", "prompt tokens", "completion tokens", "cached", "cost")
    table.add_column(name, footer="all", overflow="fold")
    for column, value in zip(columns, _spend_cells(total), strict=True):
        table.add_column(column, justify="right", footer=value)
    for row in rows:
        table.add_row(row.key, *_spend_cells(row.spend))
    return table


def _spend_cells(s: LogTotals) -> list[str]:
    return [
        f"{s.requests:,}",
        f"{s.ok:,}",
        f"{s.prompt_tokens:,}",
        f"{s.completion_tokens:,}",
        f"{s.cached_tokens:,}",
        usd(s.cost_usd),
    ]
