"""A run's statistics as one self-contained HTML page: inline SVG bar charts and tables.

No script, font, stylesheet or image is fetched: the page opens offline, from an e-mail or a
CI artifact. Every bar carries an SVG <title>, so hovering shows its exact figure without
JavaScript. ``write_report`` raises OSError when the file cannot be written.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from html import escape
from pathlib import Path

from engine.formats import usd
from state.samples import Sample
from state.stats import STATUSES, Breakdown, RunStats, TypeCount

__all__ = ["bar_chart", "column_chart", "render_report", "write_report"]

# Colour-blind-safe (Okabe-Ito) colours; status colours keep their meaning in every chart.
PALETTE = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#CC79A7",
    "#56B4E9",
    "#D55E00",
    "#F0E442",
    "#999999",
    "#332288",  # a ninth, so the nine filter reasons of engine.quality never share a colour
)
STATUS_COLOURS = {"done": "#009E73", "filtered": "#E69F00", "failed": "#D55E00", "open": "#999999"}

_WIDTH = 760
_ROW = 22
_BAR = 15
_VALUE_W = 90
_AXIS_H = 22
_LEGEND_H = 22

Series = tuple[str, str]  # (name, colour)
Formatter = Callable[[float], str]


def _count(value: float) -> str:
    return f"{value:,.0f}"


def _ticks(largest: float, *, whole: bool) -> list[float]:
    """Axis ticks from 0 past ``largest`` in steps of 1, 2, 2.5 or 5 × 10^k, at most 6 of them.

    ``whole`` keeps steps integral (counts); a chart of nothing gets the axis 0 to 1.
    """
    if largest <= 0:
        return [0.0, 1.0]
    raw = largest / 4
    power = 10 ** math.floor(math.log10(raw))
    steps = (1, 2, 5, 10) if whole else (1, 2, 2.5, 5, 10)
    step = next(m * power for m in steps if m * power >= raw)
    if whole:
        step = max(1.0, float(math.ceil(step)))
    count = math.ceil(largest / step - 1e-9)
    return [step * i for i in range(count + 1)]


_MIN_PLOT = 260


def _text_width(text: str) -> float:
    """A generous estimate of ``text``'s width in pixels at the charts' 12px sans-serif.

    Capitals, digits and wide letters take more room than the rest; over-estimating only
    leaves some space, while under-estimating would clip a label.
    """
    wide = sum(1 for ch in text if ch.isupper() or ch.isdigit() or ch in "mwMW_%@")
    return 8.6 * wide + 7.0 * (len(text) - wide)


def _label_width(labels: Sequence[str]) -> int:
    """The label column's width: the longest label in full, never cut."""
    return int(max(60.0, max((_text_width(t) for t in labels), default=28.0) + 14))


def _legend(series: Sequence[Series], left: float, total: int) -> tuple[list[str], int]:
    """The legend's SVG items from ``left``, wrapped onto more lines when wide; and its height."""
    parts: list[str] = []
    x, y = left, 2
    for name, colour in series:
        width = 28 + _text_width(name)
        if x > left and x + width > total:
            x, y = left, y + _LEGEND_H
        parts.append(f'<rect x="{x:.0f}" y="{y}" width="12" height="12" fill="{colour}"/>')
        parts.append(f'<text x="{x + 16:.0f}" y="{y + 10}" class="legend">{escape(name)}</text>')
        x += width
    return parts, y - 2 + _LEGEND_H


def _grid(
    left: float, width: float, top: float, height: float, ticks: Sequence[float], fmt: Formatter
) -> list[str]:
    parts: list[str] = []
    for tick in ticks:
        x = left + width * tick / ticks[-1]
        parts.append(
            f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + height}" class="grid"/>'
        )
        parts.append(
            f'<text x="{x:.1f}" y="{top + height + 14}" class="tick" text-anchor="middle">'
            f"{escape(fmt(tick))}</text>"
        )
    return parts


def bar_chart(
    rows: Sequence[tuple[str, Sequence[float]]],
    series: Sequence[Series],
    *,
    title: str,
    fmt: Formatter = _count,
    whole: bool = True,
) -> str:
    """A horizontal (stacked when several series) bar chart as an inline <svg> element.

    ``whole`` says the values are counts, so the axis ticks are whole numbers.
    """
    label_w = _label_width([label for label, _ in rows])
    # A long label widens the chart (the page scales it down) rather than being cut.
    width = max(_WIDTH, label_w + _MIN_PLOT + _VALUE_W)
    legend, legend_h = _legend(series, label_w, width) if len(series) > 1 else ([], 0)
    plot_w = width - label_w - _VALUE_W
    top = legend_h + 4
    height = top + _ROW * len(rows) + _AXIS_H
    ticks = _ticks(max((sum(values) for _, values in rows), default=0.0), whole=whole)
    top_value = ticks[-1]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{escape(title)}">',
        *legend,
        *_grid(label_w, plot_w, top, _ROW * len(rows), ticks, fmt),
    ]
    for i, (label, values) in enumerate(rows):
        y = top + i * _ROW
        parts.append(
            f'<text x="{label_w - 6}" y="{y + _BAR - 3}" class="label" text-anchor="end">'
            f"{escape(label)}<title>{escape(label)}</title></text>"
        )
        x = float(label_w)
        for (name, colour), value in zip(series, values, strict=True):
            w = plot_w * value / top_value
            if w > 0:
                tip = (
                    f"{label} — {name}: {fmt(value)}"
                    if len(series) > 1
                    else f"{label}: {fmt(value)}"
                )
                parts.append(
                    f'<rect x="{x:.1f}" y="{y + 2}" width="{w:.1f}" height="{_BAR}" '
                    f'fill="{colour}"><title>{escape(tip)}</title></rect>'
                )
            x += w
        parts.append(
            f'<text x="{x + 5:.1f}" y="{y + _BAR - 3}" class="value">{escape(fmt(sum(values)))}'
            "</text>"
        )
    parts.append("</svg>")
    return "\n".join(parts)


def column_chart(
    rows: Sequence[tuple[str, float]],
    *,
    title: str,
    colour: str = PALETTE[0],
    fmt: Formatter = _count,
) -> str:
    """A vertical column chart (a histogram's shape) as an inline <svg> element."""
    plot_h, left, bottom, top = 200, 50, 36, 22  # top: room for the tallest value
    height = plot_h + bottom + top
    plot_w = _WIDTH - left - 10
    slot = plot_w / max(1, len(rows))
    ticks = _ticks(max((v for _, v in rows), default=0.0), whole=True)
    top_value = ticks[-1]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_WIDTH} {height}" '
        f'width="{_WIDTH}" height="{height}" role="img" aria-label="{escape(title)}">'
    ]
    for tick in ticks:
        y = top + plot_h - plot_h * tick / top_value
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{_WIDTH - 10}" y2="{y:.1f}" class="grid"/>'
        )
        parts.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">'
            f"{escape(fmt(tick))}</text>"
        )
    for i, (label, value) in enumerate(rows):
        h = plot_h * value / top_value
        x = left + i * slot + slot * 0.15
        y = top + plot_h - h
        parts.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{slot * 0.7:.1f}" height="{h:.1f}" '
            f'fill="{colour}"><title>{escape(f"{label}: {fmt(value)}")}</title></rect>'
        )
        centre = x + slot * 0.35
        parts.append(
            f'<text x="{centre:.1f}" y="{y - 4:.1f}" class="value" text-anchor="middle">'
            f"{escape(fmt(value))}</text>"
        )
        parts.append(
            f'<text x="{centre:.1f}" y="{top + plot_h + 16}" class="label" '
            f'text-anchor="middle">{escape(label)}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def _figure(title: str, chart: str | None, note: str = "") -> str:
    body = chart if chart else '<p class="empty">Nothing to show yet.</p>'
    caption = escape(title) + (f' <span class="note">{escape(note)}</span>' if note else "")
    return f"<figure>\n<figcaption>{caption}</figcaption>\n{body}\n</figure>"


def _status_series() -> list[Series]:
    return [(s, STATUS_COLOURS[s]) for s in STATUSES]


def _by_status(rows: Sequence[tuple[str, tuple[int, int, int, int]]]) -> str | None:
    if not rows:
        return None
    ordered = sorted(rows, key=lambda r: (-sum(r[1]), r[0]))
    return bar_chart(
        [(k, [float(v) for v in counts]) for k, counts in ordered],
        _status_series(),
        title="conversations by status",
    )


def _types_chart(rows: Sequence[TypeCount], title: str) -> str | None:
    if not rows:
        return None
    return bar_chart(
        [
            (t.type, [float(t.done), float(t.filtered), float(t.failed), float(t.open)])
            for t in rows
        ],
        _status_series(),
        title=title,
    )


def _reasons_chart(stats: RunStats) -> str | None:
    reasons = stats.reasons()
    if not reasons:
        return None
    return bar_chart(
        [(r, [float(n)]) for r, n in reasons],
        [("filtered", STATUS_COLOURS["filtered"])],
        title="filter reasons",
    )


def _reasons_by_language(stats: RunStats) -> str | None:
    reasons = [r for r, _ in stats.reasons()]
    if not reasons:
        return None
    cells = {(r.language, r.reason): r.conversations for r in stats.filter_reasons}
    languages = sorted(
        {r.language for r in stats.filter_reasons},
        key=lambda lang: (-sum(cells.get((lang, x), 0) for x in reasons), lang),
    )
    series = [(r, PALETTE[i % len(PALETTE)]) for i, r in enumerate(reasons)]
    rows = [(lang, [float(cells.get((lang, r), 0)) for r in reasons]) for lang in languages]
    return bar_chart(rows, series, title="filter reasons by language")


def _spend_chart(rows: Sequence[Breakdown], title: str) -> str | None:
    if not rows:
        return None
    return bar_chart(
        [(b.key, [b.spend.cost_usd]) for b in rows],
        [("USD", PALETTE[0])],
        title=title,
        fmt=usd,
        whole=False,
    )


def _tokens_chart(rows: Sequence[Breakdown]) -> str | None:
    if not rows:
        return None
    return bar_chart(
        [(b.key, [float(b.spend.prompt_tokens), float(b.spend.completion_tokens)]) for b in rows],
        [("prompt", PALETTE[4]), ("completion", PALETTE[0])],
        title="tokens by step kind",
    )


def _rejections_chart(stats: RunStats) -> str | None:
    if not stats.rejections:
        return None
    kinds = [
        k for k in ("evolve", "answer", "follow_up") if any(r.kind == k for r in stats.rejections)
    ]
    kinds += sorted({r.kind for r in stats.rejections} - set(kinds))
    totals: dict[str, dict[str, int]] = {}
    for r in stats.rejections:
        totals.setdefault(r.reason, {}).setdefault(r.kind, 0)
        totals[r.reason][r.kind] += r.outputs
    ordered = sorted(totals.items(), key=lambda item: (-sum(item[1].values()), item[0]))
    series = [(k, PALETTE[i % len(PALETTE)]) for i, k in enumerate(kinds)]
    rows = [(reason, [float(by.get(k, 0)) for k in kinds]) for reason, by in ordered]
    return bar_chart(rows, series, title="rejected outputs by reason and step kind")


def _rejected_cost_chart(stats: RunStats) -> str | None:
    costs: dict[str, float] = {}
    for r in stats.rejections:
        costs[r.language] = costs.get(r.language, 0.0) + r.cost_usd
    if not costs:
        return None
    rows = sorted(costs.items(), key=lambda item: (-item[1], item[0]))
    return bar_chart(
        [(k, [v]) for k, v in rows], [("USD", PALETTE[0])], title="cost of rejected outputs",
        fmt=usd, whole=False,
    )  # fmt: skip


def _turns_made_chart(stats: RunStats) -> str | None:
    if not stats.turns_made:
        return None
    rows = [
        (f"{t.planned} planned, {t.made} made", [float(t.conversations)]) for t in stats.turns_made
    ]
    return bar_chart(rows, [("done", STATUS_COLOURS["done"])], title="turns planned vs made")


def _rejections_table(stats: RunStats) -> str:
    if not stats.rejections:
        return ""
    head = "".join(
        f"<th>{h}</th>"
        for h in ("reason", "step kind", "language", "outputs", "completion tokens", "cost")
    )
    body = "".join(
        f"<tr><th>{escape(r.reason)}</th><td>{escape(r.kind)}</td><td>{escape(r.language)}</td>"
        f"<td>{r.outputs:,}</td><td>{r.completion_tokens:,}</td><td>{escape(usd(r.cost_usd))}</td>"
        "</tr>"
        for r in stats.rejections
    )
    return (
        "<details><summary>Rejected outputs: reason × step kind × language (table)</summary>"
        f"<table><tr>{head}</tr>{body}</table></details>"
    )


def _cards(stats: RunStats) -> str:
    counts = dict(stats.statuses)
    open_ = counts.get("pending", 0) + counts.get("active", 0)
    turns = sum(t * n for t, n in stats.turns)
    items = [
        ("done conversations", _count(counts.get("done", 0))),
        ("user turns (done)", _count(turns)),
        ("filtered", _count(counts.get("filtered", 0))),
        ("failed", _count(counts.get("failed", 0))),
        ("rejected outputs", f"{_count(stats.rejected)} ({stats.rejection_rate:.1%})"),
        ("spent on rejected", usd(stats.rejected_usd)),
        ("TPM charged per token used", f"{stats.charge_ratio:.2f}"),
        ("cut at max_tokens, redone", f"{_count(stats.redone)} ({usd(stats.redone_usd)})"),
        ("kept short", _count(stats.partial)),
        ("not finished", _count(open_)),
        ("requests", _count(stats.total.requests)),
        ("tokens", _count(stats.total.prompt_tokens + stats.total.completion_tokens)),
        ("cost", usd(stats.total.cost_usd)),
    ]
    cells = "".join(
        f'<div class="card"><div class="big">{escape(v)}</div><div>{escape(k)}</div></div>'
        for k, v in items
    )
    return f'<section class="cards">{cells}</section>'


def _matrix(stats: RunStats) -> str:
    tasks = sorted({r.task for r in stats.language_task})
    cells = {(r.language, r.task): r.done for r in stats.language_task}
    head = "".join(f"<th>{escape(t)}</th>" for t in tasks)
    body = []
    for language, counts in stats.per_language():
        row = "".join(f"<td>{cells.get((language, t), 0) or '·'}</td>" for t in tasks)
        body.append(f"<tr><th>{escape(language)}</th>{row}<td><b>{counts[0]}</b></td></tr>")
    return (
        "<details><summary>Done conversations: language × task (table)</summary>"
        f"<table><tr><th>language</th>{head}<th>all</th></tr>{''.join(body)}</table></details>"
    )


def _metadata(facts: Sequence[tuple[str, str]]) -> str:
    if not facts:
        return ""
    rows = "".join(
        f"<tr><th>{escape(k)}</th><td><code>{escape(v)}</code></td></tr>" for k, v in facts
    )
    return f'<h2>Run</h2>\n<table class="meta">{rows}</table>'


def _sample(sample: Sample) -> str:
    badge = (
        f' <span class="badge filtered">filtered: {escape(sample.filter_reason or "?")}</span>'
        if sample.status == "filtered"
        else ' <span class="badge done">done</span>'
    )
    users = sum(1 for m in sample.messages if m.role == "user")
    head = (
        f'<div class="conv-head">#{sample.conv_id} · task {escape(sample.task)} · evol '
        f"<b>{escape(sample.evol_type)}</b> · {users} turn{'s' if users != 1 else ''}{badge}</div>"
    )
    turns = []
    for m in sample.messages:
        label = "user" if m.role == "user" else "assistant"
        if m.role == "user" and m.evol_type:
            label += f" · {m.evol_type}"
        turns.append(
            f'<div class="msg {escape(m.role)}"><div class="who">{escape(label)}</div>'
            f'<div class="text" dir="auto">{escape(m.content)}</div></div>'
        )
    css = "conv filtered" if sample.status == "filtered" else "conv"
    return f'<div class="{css}">{head}{"".join(turns)}</div>'


def _samples(samples: Sequence[Sample]) -> str:
    if not samples:
        return ""
    by_language: dict[str, list[Sample]] = {}
    for sample in samples:
        by_language.setdefault(sample.language, []).append(sample)
    parts = ['<h2 id="samples">Sample conversations</h2>']
    for i, (language, group) in enumerate(sorted(by_language.items())):
        done = sum(1 for g in group if g.status == "done")
        note = f"{done} done" + (f", {len(group) - done} filtered" if len(group) > done else "")
        opened = " open" if i == 0 else ""
        parts.append(
            f'<details{opened}><summary>{escape(language)} <span class="note">({note})</span>'
            f"</summary>{''.join(_sample(g) for g in group)}</details>"
        )
    return "\n".join(parts)


def _mix_note(stats: RunStats) -> str:
    asked = ", ".join(f"{k} {v:g}" for k, v in stats.evol_mix)
    return f"(seeds.evol_mix: {asked})" if asked else ""


_STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto;
  max-width: 820px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 2em; font-size: 1.2em; }
.sub { color: #666; }
.cards { display: grid; grid-template-columns: repeat(4, 1fr); gap: 8px; margin: 1.2em 0; }
.card { background: #f4f6f8; border-radius: 6px; padding: 8px 10px; color: #555; }
.card .big { font-size: 1.4em; color: #111; font-weight: 600; }
figure { margin: 1.2em 0; } figcaption { font-weight: 600; margin-bottom: 4px; }
.note { font-weight: normal; color: #666; }
svg text { font-size: 12px; fill: #333; } svg .tick { fill: #888; font-size: 11px; }
svg .grid { stroke: #e3e3e3; } svg .value { fill: #555; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { padding: 2px 8px; border-bottom: 1px solid #eee; text-align: right; }
th:first-child { text-align: left; } .empty { color: #888; font-style: italic; }
svg { max-width: 100%; height: auto; }
table.meta td { text-align: left; word-break: break-all; } table.meta code { font-size: 0.92em; }
details { margin: 0.4em 0; } summary { cursor: pointer; font-weight: 600; }
.conv { border: 1px solid #dde3ea; border-radius: 6px; margin: 0.6em 0; padding: 6px 10px; }
.conv.filtered { border-color: #E69F00; background: #fffaf0; }
.conv-head { color: #444; margin-bottom: 4px; }
.badge { font-size: 0.85em; padding: 1px 6px; border-radius: 8px; margin-left: 6px; }
.badge.done { background: #e3f4ee; color: #00664a; }
.badge.filtered { background: #fbe6c2; color: #7a4b00; }
.msg { margin: 4px 0; } .msg .who { font-size: 0.85em; color: #0072B2; font-weight: 600; }
.msg.assistant .who { color: #009E73; }
.msg .text { white-space: pre-wrap; overflow-wrap: anywhere; }
"""


def render_report(
    stats: RunStats,
    *,
    generated: datetime | None = None,
    samples: Sequence[Sample] = (),
    metadata: Sequence[tuple[str, str]] = (),
) -> str:
    """The whole HTML page for ``stats``, run ``metadata`` and sample conversations to read.

    Nothing in it is fetched from elsewhere.
    """
    when = (generated or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    counts = dict(stats.turns)
    # Every bin from 1 to the longest, so a missing length shows as a gap, not as nothing.
    turns = [
        (f"{t} turn" + ("s" if t > 1 else ""), float(counts.get(t, 0)))
        for t in range(1, max(counts, default=0) + 1)
    ]
    sections = [
        "<h2>What was made</h2>",
        _figure("Conversations per language", _by_status(stats.per_language())),
        _figure("Conversations per task", _by_status(stats.per_task())),
        _matrix(stats),
        _figure(
            "Turns per done conversation",
            column_chart(turns, title="turns histogram") if turns else None,
        ),
        _figure(
            "Evol mix: task-agnostic and task-specific",
            _types_chart(stats.evol_kinds, "evol mix"),
            _mix_note(stats),
        ),
        _figure("Task evol types", _types_chart(stats.evol_types, "task evol types")),
        _figure(
            "Multi-turn evol types",
            _types_chart(stats.multiturn_types, "multi-turn evol types"),
            "(follow-up turns)",
        ),
        "<h2>What was filtered</h2>",
        _figure("Filter reasons", _reasons_chart(stats)),
        _figure("Filter reasons by language", _reasons_by_language(stats)),
        "<h2>What was thrown away</h2>",
        _figure(
            "Rejected outputs by reason and step kind",
            _rejections_chart(stats),
            f"{stats.rejected:,} of {stats.outputs:,} outputs, {usd(stats.rejected_usd)}",
        ),
        _figure("Cost of rejected outputs by language", _rejected_cost_chart(stats)),
        _figure("Turns planned vs made", _turns_made_chart(stats), "(done conversations)"),
        _rejections_table(stats),
        "<h2>What it cost</h2>",
        _figure("Cost by step kind", _spend_chart(stats.by_kind, "cost by step kind")),
        _figure("Tokens by step kind", _tokens_chart(stats.by_kind), "(settled requests)"),
        _figure("Cost by language", _spend_chart(stats.by_language, "cost by language")),
        _figure("Cost by task", _spend_chart(stats.by_task, "cost by task")),
    ]
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>m2l run {escape(stats.run)}</title>",
            f"<style>{_STYLE}</style></head><body>",
            f"<h1>m2l run {escape(stats.run)}</h1>",
            f'<p class="sub">Report generated {when}.</p>',
            _cards(stats),
            _metadata(metadata),
            *sections,
            _samples(samples),
            "</body></html>",
            "",
        ]
    )


def write_report(
    stats: RunStats,
    path: Path,
    *,
    samples: Sequence[Sample] = (),
    metadata: Sequence[tuple[str, str]] = (),
) -> Path:
    """Write the report to ``path`` atomically (a temporary file beside it, then a rename).

    Raises OSError when the folder cannot be written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        page = render_report(stats, samples=samples, metadata=metadata)
        temp.write_text(page, encoding="utf-8")
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path
