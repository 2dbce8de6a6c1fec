"""The end-of-run summary: what was made, what failed and why, what it cost, and what to do next.

Nothing here raises for any snapshot.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from engine.formats import compact, count, duration, percent, usd
from engine.progress.dashboard import STATE_STYLES
from engine.progress.snapshot import Pairs, ProgressSnapshot

__all__ = [
    "Row",
    "budget_next_step",
    "continue_command",
    "export_command",
    "next_steps",
    "render_summary",
    "summary_rows",
    "summary_text",
]

_HEADLINES = {
    "finished": "finished",
    "interrupted": "interrupted",
    "budget_exhausted": "stopped at the budget cap",
    "failed": "failed",
    "running": "running",
    "stalled": "stalled",
}


def export_command(run_dir: Path) -> str:
    """The shell command that exports this run in the release schema, quoted to paste as it is
    (``m2l run`` itself already wrote the OpenAI ``messages`` JSONL)."""
    return f"m2l export {shlex.quote(str(run_dir))} --format release-parquet"


def continue_command(config_path: str) -> str:
    """``m2l run CONFIG`` for the run's config, quoted to paste ("CONFIG" when unknown)."""
    return f"m2l run {shlex.quote(config_path) if config_path else 'CONFIG'}"


# The caps a budget stop can name, as the ledger's messages spell them; a projected overrun
# quotes the ledger's message for the cap it would pass.
_CAPS = ("budget.tokens", "budget.requests", "budget.usd")


def budget_next_step(message: str, config_path: str) -> str:
    """What to do after a stop at the budget: the cap to raise and the exact command that goes
    on (a raised cap is a changed config, which a resume takes only with --force)."""
    cap = next((c for c in _CAPS if c in message), "budget.usd")
    where = shlex.quote(config_path) if config_path else "the config"
    return f"raise {cap} in {where}, then continue with: {continue_command(config_path)} --force"


def _reasons(items: Pairs, limit: int = 4) -> str:
    shown = [f"{name} {count(n)}" for name, n in items[:limit]]
    if len(items) > limit:
        shown.append(f"{len(items) - limit} more")
    return ", ".join(shown)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _of_total(n: int, total: int, detail: str = "") -> str:
    share = percent(n / total) if total > 0 else ""
    return " · ".join(part for part in (share, detail) if part)


Row = tuple[str, str, str]  # label, figure (right-aligned), detail


def summary_rows(s: ProgressSnapshot) -> list[Row]:
    """The summary's (label, figure, detail) rows, shared by the rich table and the plain text."""
    total = s.total
    rows: list[Row] = [
        *([("model", s.model, f"on {s.provider}")] if s.endpoint else []),
        ("conversations", count(total), "planned"),
        ("  done", count(s.done), _of_total(s.done, total)),
        ("  failed", count(s.failed), _of_total(s.failed, total, _reasons(s.failed_by_reason))),
        (
            "  filtered",
            count(s.filtered),
            _of_total(s.filtered, total, _reasons(s.filtered_by_reason)),
        ),
    ]
    if s.finished_before:
        rows.append(("  earlier", count(s.finished_before), "finished in earlier sessions"))
    unfinished = s.pending + s.active
    if unfinished:
        rows.append(("  not finished", count(unfinished), _of_total(unfinished, total)))
    rows.append(
        (
            "requests",
            count(s.requests_sent),
            f"sent · {count(s.requests_ok)} ok · {count(s.retries)} retried · "
            f"{count(s.rate_limit_hits)} rate-limited (429) · {count(s.requests_failed)} failed",
        )
    )
    if s.queued_mean_s is not None or s.server_mean_s is not None:
        rows.append(
            (
                "time per request",
                _seconds(s.server_mean_s),
                f"mean at the server · {_seconds(s.queued_mean_s)} queued in m2l before sending"
                + (f" · limit {count(s.concurrency_limit)} at once" if s.concurrency_limit else ""),
            )
        )
    if len(s.endpoints) > 1:
        for e in s.endpoints:
            detail = (
                f"sent · {count(e.ok)} ok · {count(e.rate_limited)} rate-limited (429) · "
                f"{count(e.failed)} failed · {usd(e.cost_usd)}"
            )
            if e.out is not None:
                detail += f" · taken out: {' '.join(e.out.split())}"
            rows.append((f"  {e.name}", count(e.sent), detail))
    if s.errors_by_class:
        rows.append(("errors by class", "", _reasons(s.errors_by_class, limit=6)))
    for label, tokens in (("tokens in", s.tokens_in), ("tokens out", s.tokens_out)):
        rows.append((label, count(tokens), compact(tokens) if tokens >= 10_000 else ""))
    if s.tokens_reasoning:
        rows.append(
            (
                "reasoning",
                count(s.tokens_reasoning),
                f"of {compact(s.tokens_out)} output tokens, {compact(s.tokens_reasoning)} hidden "
                f"reasoning, {usd(s.reasoning_usd)}",
            )
        )
    if s.tokens_cached:
        rate = s.tokens_cached / s.tokens_in if s.tokens_in else 0.0
        rows.append(
            (
                "prompt cache",
                percent(rate),
                f"{compact(s.tokens_cached)} prompt tokens cached, saving {usd(s.cache_saved_usd)}",
            )
        )
    cost = "" if s.cap_usd is None else f"of the {usd(s.cap_usd)} cap ({percent(s.spent_fraction)})"
    if s.reserved_usd > 0:
        cost = " · ".join(part for part in (cost, f"{usd(s.reserved_usd)} still reserved") if part)
    if s.unknown_usd > 0:
        held = f"{usd(s.unknown_usd)} of it held for unknown outcomes (attempts a stop cut short)"
        cost = " · ".join(part for part in (cost, held) if part)
    if s.simulated:
        cost = " · ".join(part for part in (cost, s.money_note) if part)
    rows.append(("simulated cost" if s.simulated else "cost", usd(s.spent_usd), cost))
    if s.batches_open is not None:
        held = f" · {usd(s.batch_held_usd)} held" if s.batch_held_usd else ""
        states = ", ".join(f"{n} {name}" for name, n in s.batches_by_status)
        rows.append(
            (
                "batches",
                f"{count(s.batches_made)} made",
                f"{s.batches_open} open · {states + ' · ' if states else ''}"
                f"{count(s.batch_requests_done)}/{count(s.batch_requests_total)} lines answered"
                f"{held}",
            )
        )
    rows.append(("wall time", duration(s.elapsed_s), ""))
    if s.binding_limit is None or s.mean_utilisation is None:
        rows.append(("utilisation", "-", "no rpm or tpm limit known"))
    else:
        detail = f"mean of the {s.binding_limit} limit, the binding one"
        if s.mean_utilisation > 1.0:
            # Providers' buckets start full with up to a minute's quota, so a short run can
            # legitimately use more than the per-minute rate: say so rather than alarm.
            detail += " (over 100%: the provider's initial burst)"
        rows.append(("utilisation", percent(s.mean_utilisation), detail))
    return rows


def next_steps(s: ProgressSnapshot, *, run_dir: Path) -> list[str]:
    """What to do now, by how the run ended; the export command is always last."""
    steps = []
    if s.state == "interrupted":
        steps.append("resume: run the same command again; finished steps are kept")
    elif s.state == "budget_exhausted":
        steps.append(f"the budget cap was reached: {budget_next_step(s.message, s.config_path)}")
    elif s.state == "failed":
        why = f" ({s.message})" if s.message else ""
        steps.append(f"the run stopped early{why}: fix the cause, then run the same command again")
    steps.append(f"export: {export_command(run_dir)}")
    return steps


def _headline(s: ProgressSnapshot) -> str:
    return _HEADLINES.get(s.state, s.state.replace("_", " "))


def summary_text(s: ProgressSnapshot, *, run_dir: Path) -> str:
    """The summary as plain text lines, for logs and terminals without rich."""
    lines = [f"m2l run {s.run or run_dir.name}: {_headline(s)} after {duration(s.elapsed_s)}"]
    rows = summary_rows(s)
    label_w = max(len(label) for label, _, _ in rows)
    figure_w = max(len(figure) for _, figure, _ in rows)
    for label, figure, detail in rows:
        lines.append(f"  {label:<{label_w}}  {figure:>{figure_w}}  {detail}".rstrip())
    lines += next_steps(s, run_dir=run_dir)
    return "\n".join(lines)


def render_summary(s: ProgressSnapshot, *, run_dir: Path, console: Console) -> None:
    """Print the summary as a rich panel, then the next steps below it.

    The next steps are printed outside the panel and soft-wrapped, so a long run directory
    never breaks the export command across box-drawn lines: it stays one line to copy.
    """
    table = Table.grid(padding=(0, 2))
    table.add_column(style="dim", no_wrap=True)
    table.add_column(justify="right", no_wrap=True, style="bold")
    table.add_column()
    for label, figure, detail in summary_rows(s):
        table.add_row(label, figure, detail)
    style = STATE_STYLES.get(s.state, "white")
    title = Text.assemble(("m2l", "bold"), f" · {s.run or run_dir.name} · ", (_headline(s), style))
    console.print(
        Panel(
            table,
            title=title,
            title_align="left",
            border_style=style,
            padding=(0, 1),
            expand=False,
        )
    )
    for step in next_steps(s, run_dir=run_dir):
        line = Text(step)
        line.highlight_regex(r"m2l export .*$", "bold")
        console.print(line, soft_wrap=True)
