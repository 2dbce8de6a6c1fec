"""Reading a run's figures from its DuckDB store, read-only, for ``m2l status`` and summaries.

``read_store`` opens it with ``state.schema.open_read_only``: it raises StoreLocked (a
StateError) while another process writes the store, and StateError when the file is missing,
not DuckDB, or not an m2l store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

from budgets.prices import NANO_PER_USD, from_nano
from engine.errors import StateError
from engine.progress.snapshot import (
    EndpointProgress,
    LanguageProgress,
    ProgressSnapshot,
    language_eta,
    pairs,
    slowest_first,
)
from engine.reasons import reason_family
from state.batchstore import batch_summary
from state.journal import meta_object
from state.requestlog import attempt_summary, endpoint_figures, model_figures, spend_total
from state.schema import STATE_FILE, has_added_columns, open_read_only
from state.shards import ensure_merged

__all__ = ["STATE_DB", "read_store", "store_snapshot"]

STATE_DB = STATE_FILE  # the run directory's store, as state.schema names it
_REASON_CHARS = 80  # failure reasons are grouped by their text; long messages are cut to group


def read_store(path: Path) -> ProgressSnapshot:
    """The figures of the store at ``path``, opened read-only; raises StoreLocked or StateError."""
    ensure_merged(path.parent)  # a sharded run whose last session ended unmerged
    con = open_read_only(path, action="read it")
    try:
        # DuckDB keeps every block a query reads until its memory_limit forces it out, so
        # `m2l status` grew with the store (97 -> 122 MB from 10^4 to 10^5 conversations). Its
        # figures are small aggregates: a small cap keeps it the same size at any N. A store
        # whose aggregates need more (DuckDB refuses rather than spill some of them) is read
        # again under the run's own cap.
        limit = con.execute("SELECT current_setting('memory_limit')").fetchone()
        con.execute(f"SET memory_limit = '{_STATUS_MB}MB'")
        try:
            return store_snapshot(con, run=path.parent.name)
        except duckdb.OutOfMemoryException:
            con.execute(f"SET memory_limit = '{limit[0] if limit else '512MB'}'")
            return store_snapshot(con, run=path.parent.name)
    finally:
        con.close()


# DuckDB's cache for `m2l status`: its reads are aggregates of a few columns.
_STATUS_MB = 8


def store_snapshot(con: duckdb.DuckDBPyConnection, *, run: str = "") -> ProgressSnapshot:
    """The run's figures from any open connection to its store (also the engine's own).

    Rates are means over the span from the first request sent to the last reply; ``state`` is
    run_meta's status. Raises StateError when the connection holds no m2l store.
    """
    try:
        return _snapshot(con, run)
    except duckdb.CatalogException as exc:
        raise StateError(f"this DuckDB file is not an m2l run store ({exc})") from exc


def _snapshot(con: duckdb.DuckDBPyConnection, run: str) -> ProgressSnapshot:
    meta = dict(con.execute("SELECT key, value FROM run_meta").fetchall())
    config = meta_object(meta, "config_json")
    run = str(_dig(config, "run", "name") or run)
    by_status = dict(
        con.execute("SELECT status, count(*) FROM conversations GROUP BY 1").fetchall()
    )
    reasons: dict[str, dict[str, int]] = {"failed": {}, "filtered": {}}
    for status, reason, n in con.execute(
        f"""SELECT status, left(coalesce(filter_reason, error, 'unknown'), {_REASON_CHARS}),
            count(*) FROM conversations WHERE status IN ('failed', 'filtered') GROUP BY ALL"""
    ).fetchall():
        family = reason_family(reason)  # near-identical reasons are one line
        reasons[status][family] = reasons[status].get(family, 0) + n
    log = attempt_summary(con)
    spent_nano, _, _ = spend_total(con, per_usd=NANO_PER_USD)
    span = log.span_s
    model = model_figures(con, has_columns=has_added_columns(con))
    # With several endpoints the limits are theirs: the run's are their sums (store's view).
    rpm_sum, tpm_sum = _endpoint_limits(config)
    rejected: dict[str, int] = {}
    rejected_usd = 0.0
    if _has_table(con, "rejections"):
        for reason, n, cost in con.execute(
            "SELECT reason, count(*), coalesce(sum(cost_usd), 0) FROM rejections GROUP BY 1"
        ).fetchall():
            rejected[str(reason)] = int(n)
            rejected_usd += float(cost)
    minutes = span / 60
    rpm_limit = rpm_sum if "providers" in config else _number(_dig(config, "limits", "rpm"))
    tpm_limit = tpm_sum if "providers" in config else _number(_dig(config, "limits", "tpm"))
    total = sum(by_status.values())
    finished = sum(by_status.get(k, 0) for k in ("done", "failed", "filtered"))
    rate = finished / minutes if minutes > 0 else 0.0
    eta = (total - finished) * 60 / rate if rate > 0 else (0.0 if total == finished else None)
    languages = _languages(con, minutes, eta)
    utils: list[tuple[float, str]] = []
    if minutes > 0 and rpm_limit:
        utils.append((log.sent / minutes / rpm_limit, "rpm"))
    if minutes > 0 and tpm_limit:  # tpm counts what providers charge: prompt + max_tokens
        utils.append((log.charged_tokens / minutes / tpm_limit, "tpm"))
    binding = max(utils) if utils else None
    cap = _number(_dig(config, "budget", "usd"))
    batches = batch_summary(con)
    added = has_added_columns(con)
    # Per-endpoint figures are one scan of the whole log (0.4 s of CPU at 7M attempts) and are
    # shown only for several endpoints; with one they are the run's own figures.
    several = _several_endpoints(config) or bool(meta_object(meta, "endpoints_out"))
    endpoints = _endpoints(con, meta, minutes) if added and several else ()
    return ProgressSnapshot(
        run=run,
        provider=meta.get("provider", ""),
        model=meta.get("model", "") or str(_dig(config, "provider", "model") or ""),
        simulated=meta.get("simulated") == "true",
        state=meta.get("status", "unknown"),
        message=meta.get("stop_message", ""),
        config_path=meta.get("config_path", ""),
        elapsed_s=span,
        total=total,
        done=by_status.get("done", 0),
        failed=by_status.get("failed", 0),
        filtered=by_status.get("filtered", 0),
        active=by_status.get("active", 0),
        failed_by_reason=pairs(reasons["failed"]),
        filtered_by_reason=pairs(reasons["filtered"]),
        outputs_rejected=sum(rejected.values()),
        rejected_by_reason=pairs(rejected),
        rejected_usd=rejected_usd,
        conv_per_min=rate,
        eta_s=eta,
        requests_sent=log.sent,
        requests_ok=log.ok,
        requests_failed=log.failed_steps,
        retries=log.retries,
        rate_limit_hits=log.rate_limited,
        errors_by_class=pairs(log.errors_by_class),
        last_error_class=None if log.last_error is None else log.last_error[0],
        last_error=None if log.last_error is None else log.last_error[1],
        rpm=log.sent / minutes if minutes > 0 else 0.0,
        rpm_limit=rpm_limit,
        tpm=log.charged_tokens / minutes if minutes > 0 else 0.0,
        tpm_limit=tpm_limit,
        tokens_per_min=(log.prompt_tokens + log.completion_tokens) / minutes
        if minutes > 0
        else 0.0,
        binding_limit=None if binding is None else binding[1],
        mean_utilisation=None if binding is None else binding[0],
        tokens_in=log.prompt_tokens,
        tokens_out=log.completion_tokens,
        # What counts against the cap, as the live ledger counts it: settled costs, admitted
        # failures that may have been billed and unknown outcomes, at their worst case.
        # (Attempts still reserved are shown apart, as reserved.)
        spent_usd=max(from_nano(spent_nano) - log.reserved_usd, 0.0),
        reserved_usd=log.reserved_usd,
        tokens_reasoning=model.reasoning_tokens,
        tokens_cached=model.cached_tokens,
        reasoning_usd=model.reasoning_usd,
        cache_saved_usd=model.cache_saved_usd,
        unknown_usd=log.unknown_usd,
        cap_usd=cap,
        languages=languages,
        endpoints=endpoints,
        batches_open=None if batches is None else batches.open_batches,
        batches_made=0 if batches is None else sum(n for k, n in batches.by_status.items() if k),
        batches_by_status=()
        if batches is None
        else pairs({k or "not created": n for k, n in batches.by_status.items()}),
        batch_requests_done=0 if batches is None else batches.requests_done,
        batch_requests_total=0 if batches is None else batches.requests_total,
        batch_oldest_age_s=None if batches is None else batches.oldest_open_age_s,
        batch_held_usd=None if batches is None else batches.held_usd,
    )


def _endpoints(
    con: duckdb.DuckDBPyConnection, meta: dict[str, str], minutes: float
) -> tuple[EndpointProgress, ...]:
    """Each endpoint's figures from the request log, and why an endpoint was taken out in the
    last session (run_meta ``endpoints_out``)."""
    out = meta_object(meta, "endpoints_out")
    return tuple(
        EndpointProgress(
            f.endpoint or meta.get("provider", "") or "provider",
            f.model or "",
            sent=f.sent,
            ok=f.ok,
            rate_limited=f.rate_limited,
            failed=f.failed,
            tokens=f.tokens,
            cost_usd=f.cost_usd,
            latency_s=f.latency_s,
            rpm=f.sent / minutes if minutes > 0 else 0.0,
            out=None if f.endpoint is None or out.get(f.endpoint) is None else str(out[f.endpoint]),
        )
        for f in endpoint_figures(con)
    )


def _several_endpoints(config: dict[str, Any]) -> bool:
    """Whether the run's config names more than one endpoint ([[providers]] entries)."""
    entries = config.get("providers")
    return isinstance(entries, dict | list) and len(entries) > 1


def _endpoint_limits(config: dict[str, Any]) -> tuple[float | None, float | None]:
    """The sums of the [[providers]] entries' rpm and tpm (an entry without its own limits has
    the [limits] section's); None when any endpoint has no such limit."""
    entries = config.get("providers")
    if not isinstance(entries, dict) or not entries:
        return None, None
    sums: list[float | None] = []
    for kind in ("rpm", "tpm"):
        total: float | None = 0.0
        for entry in entries.values():
            own = entry.get("limits") if isinstance(entry, dict) else None
            limits = own if isinstance(own, dict) else _dig(config, "limits")
            value = _number(limits.get(kind)) if isinstance(limits, dict) else None
            total = None if value is None or total is None else total + value
        sums.append(total)
    return sums[0], sums[1]


def _languages(
    con: duckdb.DuckDBPyConnection, minutes: float, overall_eta: float | None
) -> tuple[LanguageProgress, ...]:
    rows = []
    for language, total, done, failed, filtered, active in con.execute(
        """SELECT language, count(*), count(*) FILTER (WHERE status = 'done'),
            count(*) FILTER (WHERE status = 'failed'), count(*) FILTER (WHERE status = 'filtered'),
            count(*) FILTER (WHERE status = 'active')
        FROM conversations GROUP BY language"""
    ).fetchall():
        finished = done + failed + filtered
        rate = finished / minutes if minutes > 0 else 0.0
        eta = language_eta(total - finished, rate / 60, overall_eta)
        rows.append(
            LanguageProgress(
                language=language,
                total=total,
                done=done,
                failed=failed,
                filtered=filtered,
                active=active,
                rate_per_min=rate,
                eta_s=eta,
            )
        )
    rows.sort(key=slowest_first)
    return tuple(rows)


def _dig(data: dict[str, Any], *keys: str) -> Any:
    value: Any = data
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


def _has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    """Whether the store has table ``name`` (a store made by an older m2l may lack one)."""
    row = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [name]
    ).fetchone()
    return bool(row and row[0])
