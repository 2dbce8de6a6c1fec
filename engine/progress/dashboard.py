"""The live terminal dashboard: one snapshot drawn as a bordered panel of plain text lines.

It is laid out by hand, line by line, instead of with rich Tables: a Table measures every
cell of every nested table on every frame, which cost ~20 ms a frame (8% of a core at 4 Hz);
one Text of fixed-width lines costs a few milliseconds. Nothing here raises for any snapshot.
"""

from __future__ import annotations

from rich.cells import cell_len, set_cell_size
from rich.console import Console, ConsoleOptions, RenderResult
from rich.segment import Segment
from rich.style import Style

from engine.formats import ago, compact, count, duration, percent, usd
from engine.progress.snapshot import EndpointProgress, LanguageProgress, Pairs, ProgressSnapshot

__all__ = ["STATE_STYLES", "Dashboard"]

STATE_STYLES = {
    "starting": "cyan",
    "running": "green",
    "stopping": "yellow",
    "finished": "green",
    "interrupted": "yellow",
    "stalled": "yellow",
    "budget_exhausted": "yellow",
    "failed": "red",
}
_DASH = "—"
_LABEL = "dim"
_BACK = "grey23"  # the empty part of a bar: visible, but quieter than anything else
_LABEL_W = 14
_WIDE = 92  # inner width from which limits and budget sit side by side
_BARS = 60  # inner width from which the languages table has bars
_MIN_WIDTH = 40


class _Line:
    """One dashboard line, built from (text, style) pieces with known cell widths."""

    __slots__ = ("parts", "width")

    def __init__(self) -> None:
        self.parts: list[tuple[str, str]] = []
        self.width = 0

    def add(self, text: str, style: str = "") -> _Line:
        self.parts.append((text, style))
        self.width += cell_len(text)
        return self

    def cell(self, text: str, width: int, *, right: bool = False, style: str = "") -> _Line:
        """``text`` cut or padded to exactly ``width`` cells."""
        size = cell_len(text)
        if size > width:
            text = set_cell_size(text, max(width - 1, 0)) + "…" if width > 0 else ""
        elif right:
            text = " " * (width - size) + text
        else:
            text = text + " " * (width - size)
        return self.add(text, style)

    def label(self, text: str, width: int = _LABEL_W) -> _Line:
        return self.cell(text, width, style=_LABEL)

    def bar(self, fraction: float | None, width: int, style: str) -> _Line:
        if width <= 0:
            return self
        if fraction is None:
            return self.cell(_DASH, width, style=_LABEL)
        halves = round(max(min(fraction, 1.0), 0.0) * width * 2)
        full, half = divmod(halves, 2)
        self.add("━" * full, style)
        if half:
            self.add("╸", style)
        return self.add("━" * (width - full - half), _BACK)

    def fitted(self, width: int) -> Parts:
        """The pieces cut (with an ellipsis) or padded to exactly ``width`` cells."""
        if self.width <= width:
            return [*self.parts, (" " * (width - self.width), "")]
        out: Parts = []
        room = width - 1
        for text, style in self.parts:
            size = cell_len(text)
            if size > room:
                out.append((set_cell_size(text, room), style))
                break
            out.append((text, style))
            room -= size
        out.append(("…", ""))
        return out


class Dashboard:
    """A snapshot as a panel that fits the width it is given: 100 columns, or 80 (stacked)."""

    def __init__(self, snapshot: ProgressSnapshot, *, max_languages: int = 8) -> None:
        self.snapshot = snapshot
        self.max_languages = max_languages

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        # Segments straight from the pieces: no Text wrapping pass, styles parsed once each.
        styles: dict[str, Style] = {}
        newline = Segment.line()
        for line in _panel(self.snapshot, options.max_width, self.max_languages):
            for text, name in line:
                style = styles.get(name)
                if style is None:
                    style = styles[name] = console.get_style(name) if name else Style.null()
                yield Segment(text, style)
            yield newline


Parts = list[tuple[str, str]]


def _panel(s: ProgressSnapshot, width: int, max_languages: int) -> list[Parts]:
    """Every line of the panel, borders included, as (text, style) pieces."""
    width = max(width, _MIN_WIDTH)
    inner = width - 4  # a border and a space on each side
    lines = _conversations(s, inner)
    if s.shards:
        lines += _shards(s, inner)
    lines.append(_Line())
    lines += _limits_and_budget(s, inner)
    lines.append(_Line())
    lines += _errors(s, inner)
    if s.batches_open is not None:
        lines += _batches(s, inner)
    if len(s.endpoints) > 1:
        lines.append(_Line())
        lines += _endpoints(s.endpoints, inner)
    if s.languages and s.unit == "conversations":
        lines.append(_Line())
        lines += _languages(s.languages, inner, max_languages)
    style = STATE_STYLES.get(s.state, "white")
    where = f" · {s.endpoint}" if s.endpoint else ""
    title = f" m2l · {s.run or 'run'} · {s.state.replace('_', ' ')}{where}"
    title = set_cell_size(title, inner) + " "
    title = title.rstrip(" ") + " "
    subtitle = f" elapsed {duration(s.elapsed_s)}"
    if s.paused_s > 0:
        subtitle += f" · paused {s.paused_s:.1f} s after a 429"
    subtitle = set_cell_size(subtitle, inner).rstrip(" ") + " "
    out: list[Parts] = [
        [
            ("╭─", style),
            (title, f"bold {style}"),
            ("─" * (width - 3 - cell_len(title)) + "╮", style),
        ]
    ]
    edge_left, edge_right = ("│ ", style), (" │", style)
    for line in lines:
        out.append([edge_left, *line.fitted(inner), edge_right])
    out.append([("╰" + "─" * (width - 3 - cell_len(subtitle)) + subtitle + "─╯", style)])
    return out


def _items(items: Pairs, *, limit: int = 4, exact: bool = False) -> list[tuple[str, str]]:
    shown = [(f"{name} {count(n) if exact else compact(n)}", "") for name, n in items[:limit]]
    if len(items) > limit:
        shown.append((f"+{len(items) - limit} more", _LABEL))
    return shown or [(_DASH, _LABEL)]


def _wrapped(label: str, pieces: list[tuple[str, str]], inner: int) -> list[_Line]:
    """``label`` then pieces joined by `` · ``, continued on indented lines rather than cut."""
    lines = [_Line().label(label)]
    for text, style in pieces:
        line = lines[-1]
        if line.width > _LABEL_W and line.width + 3 + cell_len(text) > inner:
            line = _Line().label("")
            lines.append(line)
        if line.width > _LABEL_W:
            line.add(" · ")
        line.add(text, style)
    return lines


def _conversations(s: ProgressSnapshot, inner: int) -> list[_Line]:
    figures = (
        f"{count(s.finished)}/{count(s.total)}  {percent(s.fraction)}  "
        f"{s.conv_per_min:.1f}/min  ETA {duration(s.eta_s) if s.eta_s is not None else _DASH}"
    )
    first = _Line().label(s.unit)
    first.bar(s.fraction, inner - _LABEL_W - 2 - cell_len(figures), "green")
    first.add("  ").add(figures, "bold")
    states = [
        (f"done {count(s.done)}", ""),
        (f"failed {count(s.failed)}", "red" if s.failed else ""),
        (f"filtered {count(s.filtered)}", ""),
    ]
    if s.finished_before:
        states.append((f"earlier sessions {count(s.finished_before)}", ""))
    states += [(f"active {count(s.active)}", ""), (f"pending {count(s.pending)}", "")]
    flight = [(count(s.in_flight), "bold")]
    flight += _items(s.in_flight_by_kind, exact=True) if s.in_flight_by_kind else []
    if s.concurrency_limit is not None:
        flight.append((f"limit {count(s.concurrency_limit)}", ""))
    # Time queued inside m2l (gate and rate limiter) apart from time at the server: a long
    # wait at the server means too much concurrency; a long wait in m2l means the limits bind.
    if s.queued_s is not None:
        flight.append((f"queued in m2l {s.queued_s:.1f} s", ""))
    if s.latency_s is not None:
        flight.append((f"at server {s.latency_s:.1f} s", ""))
    tokens = [
        (f"in {compact(s.tokens_in)}", ""),
        (f"out {compact(s.tokens_out)}", ""),
    ]
    if s.tokens_reasoning:
        tokens.append(
            (f"{compact(s.tokens_reasoning)} hidden reasoning {usd(s.reasoning_usd)}", "")
        )
    if s.tokens_cached and s.tokens_in:
        tokens.append((f"cache hits {s.tokens_cached / s.tokens_in:.0%} of in", ""))
    tokens += [
        (f"using {compact(s.tokens_per_min)}/min", ""),
    ]
    rejected = []
    if s.requests_ok:
        rate = s.outputs_rejected / s.requests_ok
        rejected.append(
            (
                f"{count(s.outputs_rejected)} of {count(s.requests_ok)} outputs ({rate:.1%}) "
                f"{usd(s.rejected_usd)}",
                "yellow" if rate >= 0.2 else "",
            )
        )
        rejected += _items(s.rejected_by_reason, limit=4, exact=True)
    if s.unit != "conversations":
        # A request file has no steps, quality gate or filter: answered, failed, waiting.
        states = [x for x in states if not x[0].startswith("filtered")]
        return [
            first,
            *_wrapped("", states, inner),
            *_wrapped("in flight", flight, inner),
            *_wrapped("tokens", tokens, inner),
        ]
    return [
        first,
        *_wrapped("", states, inner),
        *_wrapped("steps done", _items(s.steps_by_kind), inner),
        *(_wrapped("rejected", rejected, inner) if rejected else []),
        *_wrapped("in flight", flight, inner),
        *_wrapped("tokens", tokens, inner),
    ]


def _gauge(
    label: str,
    value: str,
    fraction: float | None,
    style: str,
    *,
    width: int,
    label_w: int,
    value_w: int,
) -> _Line:
    """``label  value ━━━━╸━━━  96.0%`` in exactly ``width`` cells."""
    line = _Line().label(label, label_w).cell(value, value_w, right=True).add(" ")
    line.bar(fraction, width - label_w - value_w - 8, style)
    return line.cell(percent(fraction) if fraction is not None else "", 7, right=True)


def _limits_and_budget(s: ProgressSnapshot, inner: int) -> list[_Line]:
    def of(value: float, limit: float | None) -> str:
        return compact(value) if limit is None else f"{compact(value)} of {compact(limit)}"

    wide = inner >= _WIDE
    half = (inner - 3) // 2 if wide else inner
    rpm, tpm = of(s.rpm, s.rpm_limit), of(s.tpm, s.tpm_limit)
    spent = usd(s.spent_usd) if s.cap_usd is None else f"{usd(s.spent_usd)} of {usd(s.cap_usd)}"
    # Bars in one column line up: stacked, all three share a value width; side by side, each half.
    limits_w = max(cell_len(rpm), cell_len(tpm), 0 if wide else cell_len(spent))
    spent_w = cell_len(spent) if wide else limits_w
    budget_label = 11 if wide else _LABEL_W
    # Utilisation near 100% is the goal, not a warning: red only while a 429 pauses dispatch.
    limit_style = "red" if s.paused_s > 0 else "cyan"
    size = {"width": half, "label_w": _LABEL_W, "value_w": limits_w}
    limits = [
        _gauge("requests/min", rpm, s.rpm_util, limit_style, **size),
        _gauge("tokens/min", tpm, s.tpm_util, limit_style, **size),
    ]
    if max(s.rpm_util or 0.0, s.tpm_util or 0.0) > 1.0 and s.rate_limit_hits == 0:
        # A provider's bucket starts full (up to a minute's quota), so the first minute can
        # run above the per-minute rate without a single 429: not a breach, and not for long.
        limits.append(
            _Line().add(" " * _LABEL_W).add("over 100%: the provider's initial burst", "dim")
        )
    fraction = s.spent_fraction
    spend_style = "green" if fraction is None or fraction < 0.8 else "yellow"
    if fraction is not None and fraction >= 0.95:
        spend_style = "red"
    projected = _Line().label("projected", budget_label)
    over = s.projected_usd is not None and s.cap_usd is not None and s.projected_usd > s.cap_usd
    projected.add(
        usd(s.projected_usd) if s.projected_usd is not None else _DASH, "bold red" if over else ""
    )
    if over:
        projected.add(" over the cap", "red")
    budget = [
        _gauge(
            "simulated" if s.simulated else "spent",
            spent,
            fraction,
            spend_style,
            width=half,
            label_w=budget_label,
            value_w=spent_w,
        ),
        projected,
        _Line().label("reserved", budget_label).add(usd(s.reserved_usd)),
    ]
    if s.unknown_usd > 0:
        budget.append(
            _Line()
            .label("unknown", budget_label)
            .add(usd(s.unknown_usd))
            .add(" held for unknown outcomes", "dim")
        )
    if not wide:
        return limits + budget
    rows = []
    for i in range(max(len(limits), len(budget))):
        row = _Line()
        left = limits[i] if i < len(limits) else _Line()
        row.parts += left.parts
        row.width = left.width
        row.add(" " * (half + 3 - left.width))
        if i < len(budget):
            row.parts += budget[i].parts
            row.width += budget[i].width
        rows.append(row)
    return rows


def _batches(s: ProgressSnapshot, inner: int) -> list[_Line]:
    """Batch mode: open batches by status, their lines answered, the oldest, money held."""
    pieces = [(f"{s.batches_open} open", "")]
    pieces += _items(s.batches_by_status, exact=True)[: 4 if s.batches_by_status else 0]
    pieces.append((f"{count(s.batch_requests_done)}/{count(s.batch_requests_total)} lines", ""))
    if s.batch_waiting:
        pieces.append((f"{count(s.batch_waiting)} waiting", _LABEL))
    if s.batch_oldest_age_s is not None:
        pieces.append((f"oldest {duration(s.batch_oldest_age_s)}", ""))
    if s.batch_held_usd is not None:
        pieces.append((f"{usd(s.batch_held_usd)} held", ""))
    return _wrapped("batches", pieces, inner)


def _shards(s: ProgressSnapshot, inner: int) -> list[_Line]:
    """A sharded run: each shard's conversations finished of planned, its share of the limits
    and how often its process was restarted."""
    pieces = []
    for k, (finished, total, restarts, share) in enumerate(s.shards):
        text = f"{k:02d} {count(finished)}/{count(total)}"
        text += " done" if total and finished >= total else f" {share}%"
        if restarts:
            text += f" ↻{restarts}"
        pieces.append((text, "yellow" if restarts else ""))
    return _wrapped("shards", pieces, inner)


def _errors(s: ProgressSnapshot, inner: int) -> list[_Line]:
    first = _Line().label("errors")
    for i, (label, n) in enumerate(
        (
            ("429s", s.rate_limit_hits),
            ("retries", s.retries),
            ("failed requests", s.requests_failed),
        )
    ):
        if i:
            first.add(" · ")
        first.add(f"{label} ").add(count(n), "bold red" if n and label != "retries" else "bold")
    lines = [first]
    if s.errors_by_class:
        lines += _wrapped("by class", _items(s.errors_by_class, limit=5, exact=True), inner)
    if s.last_error is not None:
        last = _Line().label("last error").add(s.last_error_class or "error", "red")
        if s.last_error_age_s is not None:
            last.add(f" {ago(s.last_error_age_s)}", _LABEL)
        last.add(": " + " ".join(s.last_error.split()))
        lines.append(last)
    return lines


def _endpoints(endpoints: tuple[EndpointProgress, ...], inner: int) -> list[_Line]:
    """One line per endpoint: its requests, replies, 429s, failures, pace, time at the server
    and cost; an endpoint taken out says why, in red."""
    name_w = min(max(max(cell_len(e.name) for e in endpoints), 8), 16)
    columns = (
        ("sent", 8), ("ok", 8), ("429s", 6), ("failed", 7), ("/min", 7), ("server", 8),
        ("cost", 10),
    )  # fmt: skip
    header = _Line().cell("endpoint", name_w, style="bold")
    for name, w in columns:
        header.cell(name, w, right=True, style="bold")
    lines = [_Line().add("endpoints", _LABEL), header.add("  ").add("model", "bold")]
    for e in endpoints:
        row = _Line().cell(e.name, name_w, style="red" if e.out is not None else "")
        row.cell(count(e.sent), 8, right=True).cell(count(e.ok), 8, right=True)
        row.cell(count(e.rate_limited), 6, right=True, style="red" if e.rate_limited else _LABEL)
        row.cell(count(e.failed), 7, right=True, style="red" if e.failed else _LABEL)
        row.cell(f"{e.rpm:.0f}", 7, right=True)
        server = f"{e.latency_s:.1f} s" if e.latency_s is not None else _DASH
        row.cell(server, 8, right=True).cell(usd(e.cost_usd), 10, right=True).add("  ")
        if e.out is not None:
            row.add("out: " + " ".join(e.out.split()), "red")
        else:
            row.add(e.model)
        lines.append(row)
    return lines


def _languages(langs: tuple[LanguageProgress, ...], inner: int, limit: int) -> list[_Line]:
    shown = langs[: max(limit, 1)]
    title = "languages, slowest first"
    if len(langs) > len(shown):
        title += f" · {len(shown)} of {len(langs)}"
    name_w = min(max(max(cell_len(lang.language) for lang in shown), 8), 20)
    # "dropped" is failed + filtered: either way the language's quota lost a conversation.
    columns = (("done/total", 12), ("%", 7), ("dropped", 8), ("active", 7), ("/min", 7), ("ETA", 9))
    fixed = name_w + sum(w for _, w in columns)
    bar_w = inner - fixed - 2 if inner - fixed - 2 >= 8 and inner >= _BARS else 0
    header = _Line().cell("language", name_w, style="bold")
    if bar_w:
        header.add(" " * (bar_w + 2))
    for name, w in columns:
        header.cell(name, w, right=True, style="bold")
    lines = [_Line().add(title, _LABEL), header]
    for lang in shown:
        row = _Line().cell(lang.language, name_w)
        if bar_w:
            row.add(" ").bar(lang.fraction, bar_w, "green").add(" ")
        total = count(lang.total) if lang.total is not None else _DASH
        bad = lang.failed + lang.filtered
        row.cell(f"{count(lang.finished)}/{total}", 12, right=True)
        row.cell(percent(lang.fraction) if lang.fraction is not None else _DASH, 7, right=True)
        row.cell(count(bad), 8, right=True, style="red" if bad else _LABEL)
        row.cell(count(lang.active), 7, right=True)
        row.cell(f"{lang.rate_per_min:.1f}", 7, right=True)
        if lang.total is not None and lang.finished >= lang.total:
            row.cell("done", 9, right=True, style="green")
        else:
            row.cell(duration(lang.eta_s) if lang.eta_s is not None else _DASH, 9, right=True)
        lines.append(row)
    return lines
