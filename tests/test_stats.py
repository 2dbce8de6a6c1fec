"""Tests for state.stats, state.report_html and `m2l stats`: figures checked against the fixture."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import duckdb
import pytest
from rich.console import Console

import state.samples
import state.stats
from engine.app.outputs import add_stats_parser
from engine.errors import StateError
from engine.posthoc import filter_run
from state.export import STATE_FILE, open_run
from state.report_html import bar_chart, render_report
from state.samples import run_metadata, sample_conversations
from state.schema import open_store
from state.stats import (
    RejectionCount,
    RunStats,
    _cap_sources,
    compute_stats,
    print_stats,
    stats_json,
)
from tests.test_export import FixtureRun, build_run, copy_run, holding


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> FixtureRun:
    """The fixture run, built once for this module."""
    return build_run(tmp_path_factory.mktemp("template") / "run")


@pytest.fixture(scope="module")
def stats(template: FixtureRun) -> RunStats:
    """The fixture run's statistics (the tests only read them)."""
    conn = open_run(template.run_dir, action="read its stats")
    try:
        return compute_stats(conn, run="dir-name")
    finally:
        conn.close()


def bucket(status: str) -> str:
    """The stats column a conversation status counts in."""
    return "open" if status in ("pending", "active") else status


def test_counts_by_language_and_task_match_the_fixture(
    template: FixtureRun, stats: RunStats
) -> None:
    """Language × task cells count each conversation once, under its status."""
    expected: Counter[tuple[str, str, str]] = Counter(
        (c.language, c.task, bucket(c.status)) for c in template.convs.values()
    )
    got: Counter[tuple[str, str, str]] = Counter()
    for row in stats.language_task:
        for status in ("done", "filtered", "failed", "open"):
            if getattr(row, status):
                got[(row.language, row.task, status)] = getattr(row, status)
    assert got == expected
    assert sum(row.total for row in stats.language_task) == len(template.convs)
    assert dict(stats.statuses) == Counter(c.status for c in template.convs.values())
    assert stats.run == "fx"  # from the stored config, not the directory name


def test_turns_histogram_counts_done_conversations(template: FixtureRun, stats: RunStats) -> None:
    """The turns histogram has one entry per length, over done conversations only."""
    expected = Counter(c.turns for c in template.by_status("done"))
    assert dict(stats.turns) == expected
    assert [t for t, _ in stats.turns] == sorted(expected)


def test_evol_and_multiturn_types_are_counted(template: FixtureRun, stats: RunStats) -> None:
    """Task evol types count conversations; multi-turn types count stored follow-up turns."""
    evol = Counter(c.evol_type for c in template.by_status("done"))
    assert {t.type: t.done for t in stats.evol_types if t.done} == evol
    follow: Counter[str] = Counter()
    for c in template.by_status("done"):
        for step in range(2, len(c.texts), 2):
            follow[str(c.step_evol_type(step))] += 1
    assert {t.type: t.done for t in stats.multiturn_types if t.done} == follow


def test_spend_sums_the_request_log(template: FixtureRun, stats: RunStats) -> None:
    """Cost sums every attempt (NULL as 0); tokens count settled attempts; kinds by step."""
    rows = template.requests
    cost = sum(r[12] or 0.0 for r in rows)
    prompt_ok = sum(r[6] for r in rows if r[4] == "ok")
    assert stats.total.requests == len(rows)
    assert stats.total.cost_usd == pytest.approx(cost)
    assert stats.total.prompt_tokens == prompt_ok
    kinds: Counter[str] = Counter()
    for r in rows:
        step = r[2]
        kinds["evolve" if step == 0 else "answer" if step % 2 else "follow_up"] += 1
    assert {b.key: b.spend.requests for b in stats.by_kind} == kinds
    assert [b.key for b in stats.by_kind] == ["evolve", "answer", "follow_up"]
    by_lang: dict[str, float] = {}
    for r in rows:
        language = template.convs[r[1]].language
        by_lang[language] = by_lang.get(language, 0.0) + (r[12] or 0.0)
    assert {b.key: b.spend.cost_usd for b in stats.by_language} == pytest.approx(by_lang)
    assert sum(b.spend.requests for b in stats.by_task) == len(rows)


def test_filter_reasons_by_language_after_the_pass(template: FixtureRun, tmp_path: Path) -> None:
    """After `m2l filter`, each planted reason shows under its conversation's language."""
    run = copy_run(template, tmp_path / "run")
    filter_run(run.run_dir)
    conn = open_run(run.run_dir, action="read its stats")
    try:
        after = compute_stats(conn, run="x")
    finally:
        conn.close()
    expected = Counter((run.convs[cid].language, reason) for cid, reason in run.planted.items())
    expected.update((c.language, str(c.filter_reason)) for c in run.by_status("filtered"))
    assert {(r.language, r.reason): r.conversations for r in after.filter_reasons} == expected


def test_failures_list_the_failed_conversations_errors(
    template: FixtureRun, stats: RunStats
) -> None:
    """Failed conversations are grouped by their error message."""
    expected = Counter(str(c.error) for c in template.by_status("failed"))
    assert {f.error: f.conversations for f in stats.failures} == expected


def run_cli(run_dir: Path, *extra: str, width: int = 220) -> tuple[int, str]:
    """Run `m2l stats RUN_DIR ...` through its parser; return the exit code and the output."""
    parser = argparse.ArgumentParser(prog="m2l")
    add_stats_parser(parser.add_subparsers())
    args = parser.parse_args(["stats", str(run_dir), *extra])
    console = Console(record=True, width=width)
    code = args.func(args, console)
    return code, console.export_text()


def test_cli_prints_tables(template: FixtureRun) -> None:
    """`m2l stats` prints the tables with every language and the total cost."""
    code, text = run_cli(template.run_dir)
    assert code == 0
    for title in ("language × task", "Turns", "Filter reasons by language", "Spend by step kind"):
        assert title in text
    for c in template.convs.values():
        assert c.language in text


def test_narrow_terminal_lists_tasks_per_language(template: FixtureRun, stats: RunStats) -> None:
    """At 60 columns the language × task grid becomes one row per language naming its tasks."""
    code, text = run_cli(template.run_dir, width=60)
    assert code == 0
    assert "by task" in text
    assert max(len(line) for line in text.splitlines()) <= 60
    for language, _counts in stats.per_language():
        assert language in text


def test_cli_json_is_one_document(template: FixtureRun, capsys: pytest.CaptureFixture[str]) -> None:
    """`m2l stats --json` prints one JSON document with the run's figures."""
    parser = argparse.ArgumentParser(prog="m2l")
    add_stats_parser(parser.add_subparsers())
    args = parser.parse_args(["stats", str(template.run_dir), "--json"])
    assert args.func(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["statuses"]["done"] == len(template.by_status("done"))
    assert {t["turns"] for t in doc["turns"]} == {c.turns for c in template.by_status("done")}
    assert doc["total"]["requests"] == len(template.requests)
    assert {"language_task", "evol_types", "multiturn_types", "by_kind"} <= set(doc)


def test_stats_refuses_a_store_in_use(template: FixtureRun, tmp_path: Path) -> None:
    """`m2l stats` on a store a running process holds says to wait, then read its stats."""
    run = copy_run(template, tmp_path / "run")
    with holding(run.run_dir / STATE_FILE), pytest.raises(StateError, match="in use"):
        run_cli(run.run_dir)


# --- the HTML report -------------------------------------------------------------------------


class Page(HTMLParser):
    """Collects figures (caption and SVG element counts) and anything that loads from outside."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: list[dict[str, Any]] = []
        self.external: list[str] = []
        self.tags: Counter[str] = Counter()
        self._in_caption = False
        self._in_title = False
        self.bar_titles: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] += 1
        if tag == "figure":
            self.figures.append({"caption": "", "svg": 0, "rect": 0})
        elif tag == "figcaption":
            self._in_caption = True
        elif tag in ("svg", "rect") and self.figures:
            self.figures[-1][tag] += 1
        elif tag == "title" and self.figures:
            self._in_title = True
        for name, value in attrs:
            if name in ("src", "href") and value and not value.startswith("#"):
                self.external.append(f"{tag} {name}={value}")

    def handle_endtag(self, tag: str) -> None:
        if tag == "figcaption":
            self._in_caption = False
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_caption:
            self.figures[-1]["caption"] += data
        elif self._in_title:
            self.bar_titles.append(data)


def parse(html: str) -> Page:
    """Parse a report page."""
    page = Page()
    page.feed(html)
    page.close()
    return page


def test_html_report_has_a_chart_per_figure_and_nothing_external(
    template: FixtureRun, tmp_path: Path
) -> None:
    """`--html` writes a page whose figures each hold an inline SVG chart; no script, no URL."""
    out = tmp_path / "report" / "stats.html"
    code, text = run_cli(template.run_dir, "--html", str(out))
    assert code == 0 and str(out) in text.replace("\n", "")
    page = parse(out.read_text(encoding="utf-8"))
    captions = {f["caption"].split(" (")[0].strip(): f for f in page.figures}
    for wanted in (
        "Conversations per language",
        "Conversations per task",
        "Turns per done conversation",
        "Filter reasons",
        "Cost by step kind",
    ):
        assert captions[wanted]["svg"] == 1, wanted
        assert captions[wanted]["rect"] >= 1, wanted
    assert page.tags["script"] == 0 and page.tags["link"] == 0 and page.tags["img"] == 0
    assert page.external == []
    assert not [p for p in tmp_path.joinpath("report").iterdir() if p.name != "stats.html"]


def test_html_bars_carry_the_figures(template: FixtureRun, stats: RunStats) -> None:
    """Bar tooltips give each language's done count and the turns histogram's bins."""
    html = render_report(stats)
    for svg in re.findall(r"<svg.*?</svg>", html, re.S):
        ElementTree.fromstring(svg)  # well-formed: it renders on its own too
    page = parse(html)
    titles = set(page.bar_titles)
    done = Counter(c.language for c in template.by_status("done"))
    for language, n in done.items():
        assert f"{language} — done: {n}" in titles
    for turns, n in Counter(c.turns for c in template.by_status("done")).items():
        assert f"{turns} turn{'s' if turns > 1 else ''}: {n}" in titles


def test_empty_run_renders_without_charts(tmp_path: Path) -> None:
    """A run with nothing in it gives zero figures and a page saying there is nothing yet."""
    open_store(tmp_path / "empty" / STATE_FILE, create=True).close()
    conn = open_run(tmp_path / "empty", action="read its stats")
    try:
        empty = compute_stats(conn, run="empty")
    finally:
        conn.close()
    assert empty.total.requests == 0 and empty.language_task == () and empty.turns == ()
    page = parse(render_report(empty))
    assert page.figures and all(f["svg"] == 0 for f in page.figures)
    assert "Nothing to show yet" in render_report(empty)


def test_html_report_shows_sample_conversations_per_language_and_run_metadata(
    template: FixtureRun,
) -> None:
    """Each language has samples to read: turns, roles, evol types; filtered ones are marked."""
    conn = open_run(template.run_dir, action="read its stats")
    try:
        stats = compute_stats(conn, run="dir-name")
        samples = sample_conversations(conn)
        metadata = run_metadata(conn)
    finally:
        conn.close()
    done_languages = {c.language for c in template.by_status("done")}
    assert {s.language for s in samples if s.status == "done"} == done_languages
    filtered = [s for s in samples if s.status == "filtered"]
    assert filtered and all(s.filter_reason for s in filtered)
    html = render_report(stats, samples=samples, metadata=metadata)
    for sample in samples:
        conv = template.convs[sample.conv_id]
        assert [m.content for m in sample.messages] == conv.texts
        assert f"#{sample.conv_id} · task {conv.task} · evol <b>{conv.evol_type}</b>" in html
        for follow_up in conv.followup_types()[: (len(conv.texts) - 1) // 2]:
            assert f"user · {follow_up}" in html
    assert html.count('class="badge filtered"') == len(filtered)
    assert "filtered: leaked_markers" in html
    assert '<div class="text" dir="auto">' in html
    facts = dict(metadata)
    assert {"m2l version", "created"} <= set(facts)
    for label, value in metadata:
        assert f"<th>{label}</th><td><code>{value}</code></td>" in html


def test_html_labels_are_never_cut(stats: RunStats) -> None:
    """A chart label is shown whole, however long; the chart widens instead."""
    long_label = "FEEDBACK_HANDLING_FOLLOW_UP_WITH_A_VERY_LONG_CUSTOM_NAME"
    html = bar_chart([(long_label, [3.0]), ("x", [1.0])], [("n", "#000")], title="t")
    assert f">{long_label}<title>" in html and "…" not in html
    width = int(re.search(r'viewBox="0 0 (\d+) ', html).group(1))  # type: ignore[union-attr]
    assert width > 760
    assert "…" not in render_report(stats)


def test_stats_show_the_evol_mix(stats: RunStats, template: FixtureRun) -> None:
    """Conversations are counted by kind of evol type, task-agnostic and task-specific."""
    planned = len(template.convs)
    total = sum(t.done + t.filtered + t.failed + t.open for t in stats.evol_kinds)
    assert total == planned
    console = Console(record=True, width=160)
    print_stats(stats, console)
    assert "Evol mix (conversations): task-agnostic" in console.export_text()


def test_stats_show_the_tpm_charge_and_the_replies_redone(
    template: FixtureRun, stats: RunStats, capsys: pytest.CaptureFixture[str]
) -> None:
    """Charged = prompt + max_tokens of attempts sent; used = prompt + completion of answered
    ones; replies cut at max_tokens and redone are counted with their money, in every form."""
    rows = template.requests
    charged = sum(r[6] + r[7] for r in rows if r[4] != "rejected")
    used = sum(r[6] + (r[8] or 0) for r in rows if r[4] == "ok")
    assert (stats.charged_tokens, stats.used_tokens) == (charged, used) and used > 0
    assert stats.charge_ratio == pytest.approx(charged / used)
    cut = dataclasses.replace(
        stats,
        rejections=(
            *stats.rejections,
            RejectionCount("truncated", "answer", "English", 3, 300, 0.25),
            RejectionCount("truncated", "evolve", "Hindi", 1, 64, 0.05),
        ),
    )
    assert cut.redone == stats.redone + 4
    assert cut.redone_usd == pytest.approx(stats.redone_usd + 0.30)
    line = cut.charge_line()
    assert line is not None and f"{charged / used:.2f}x" in line and "redone" in line
    doc = json.loads(stats_json(cut))
    assert doc["tpm_charge"]["charged_tokens"] == charged
    assert doc["tpm_charge"]["redone_replies"] == cut.redone
    console = Console(width=200, record=True)
    print_stats(stats, console)
    assert "TPM charge:" in console.export_text()
    assert "TPM charged per token used" in render_report(stats)


def test_stats_say_how_many_caps_were_learned(stats: RunStats) -> None:
    """Adaptive max_tokens' caps by source, as the run's sessions counted them in run_meta,
    are summed in the charge line and listed in the JSON; an unreadable count shows nothing."""
    conn = duckdb.connect()
    conn.execute("CREATE TABLE run_meta(key VARCHAR PRIMARY KEY, value VARCHAR)")
    assert _cap_sources(conn) == ()
    counts = {"evolve": {"configured": 50, "pooled": 150}, "answer": {"full": 20, "own": 80}}
    conn.execute("INSERT INTO run_meta VALUES ('adaptive_caps', ?)", [json.dumps(counts)])
    sources = _cap_sources(conn)
    assert ("evolve", "configured", 50) in sources and len(sources) == 4
    line = dataclasses.replace(stats, cap_sources=sources).charge_line()
    assert line is not None
    assert (
        "230 of 300 first tries sent a learned cap (50 the configured one while learning, 20"
        in line
    )
    doc = json.loads(stats_json(dataclasses.replace(stats, cap_sources=sources)))
    assert doc["tpm_charge"]["adaptive_caps"] == counts
    conn.execute("UPDATE run_meta SET value = '{not json'")
    assert _cap_sources(conn) == ()


def test_spend_and_samples_read_in_small_ranges_are_the_same(
    template: FixtureRun, stats: RunStats, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spend tables, the multi-turn type counts and the sample conversations' texts are
    read a range of conversations at a time, letting DuckDB's cache go after each (bounded
    memory at 10^6): ranges of 3 ids give what one range gives."""
    conn = open_run(template.run_dir, action="read")
    try:
        whole = sample_conversations(conn)
        monkeypatch.setattr(state.stats, "_SPEND_RANGE", 3)
        monkeypatch.setattr(state.samples, "_WINDOW", 3)
        ranged = compute_stats(conn, run="fx")
        assert sample_conversations(conn) == whole
    finally:
        conn.close()
    for name in ("by_language", "by_task", "by_kind", "by_endpoint"):
        assert [(b.key, b.spend.requests, b.spend.ok) for b in getattr(ranged, name)] == [
            (b.key, b.spend.requests, b.spend.ok) for b in getattr(stats, name)
        ]
    assert ranged.multiturn_types == stats.multiturn_types
    assert ranged.total.cost_usd == pytest.approx(stats.total.cost_usd)
    assert ranged.total.requests == stats.total.requests == len(template.requests)


# The spend tables as their definition says, one query each over the whole store (the first
# column is the key): what the ranged, split queries of compute_stats must add up to.
_SPEND_BY = {
    "by_language": "coalesce(c.language, '(no conversation)')",
    "by_task": "coalesce(c.task, '(no conversation)')",
    "by_endpoint": "coalesce(r.endpoint, '(not recorded)') || ' · ' || coalesce(r.model, '?')",
    "total": "'all'",
}
_SPEND_SQL = """SELECT {key}, count(*), count(*) FILTER (WHERE r.status = 'ok'),
    coalesce(sum(r.prompt_tokens) FILTER (WHERE r.status = 'ok'), 0),
    coalesce(sum(r.completion_tokens) FILTER (WHERE r.status = 'ok'), 0),
    coalesce(sum(r.cached_tokens) FILTER (WHERE r.status = 'ok'), 0),
    coalesce(sum(r.cost_usd), 0),
    coalesce(sum(r.reasoning_tokens) FILTER (WHERE r.status = 'ok'), 0),
    coalesce(sum(r.reasoning_usd), 0), coalesce(sum(r.cache_saved_usd), 0)
    FROM requests r LEFT JOIN conversations c USING (conv_id) GROUP BY 1"""


@pytest.mark.parametrize("spend_range", [3, 10_000])
def test_spend_and_multiturn_tables_are_what_one_query_over_the_store_says(
    template: FixtureRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spend_range: int
) -> None:
    """Every field of every spend table (by language, task, endpoint, in all), the outputs
    received and the multi-turn counts by status are what one query over the whole store gives,
    in ranges of 3 conversation ids as in one: with attempts of no conversation and of one not
    in the store, several endpoints and models (and none recorded), reasoning and cached
    tokens, and failed, rejected and open attempts."""
    run = copy_run(template, tmp_path / "run")
    conn = duckdb.connect(str(run.run_dir / STATE_FILE))
    top = conn.execute("SELECT max(request_id), max(conv_id) FROM requests").fetchone()
    assert top is not None
    conn.execute(
        """UPDATE requests SET endpoint = CASE WHEN conv_id % 3 = 0 THEN 'east'
            WHEN conv_id % 3 = 1 THEN 'west' END,
            model = CASE WHEN conv_id % 5 = 0 THEN 'gpt-4o' ELSE model END,
            reasoning_tokens = CASE WHEN status = 'ok' THEN 7 * step ELSE 3 END,
            reasoning_usd = 0.0001 * step, cache_saved_usd = 0.00002 * attempt,
            cached_tokens = CASE WHEN step > 1 THEN 16 ELSE 0 END"""
    )
    extra = [  # (conv_id, step, status, cost, endpoint, model)
        (None, None, "ok", 0.5, "east", "gpt-4o"),
        (None, None, "error", 0.25, None, None),
        (top[1] + 100, 1, "ok", 0.125, "west", None),
        (top[1] + 101, None, "rejected", None, "west", "gpt-4o"),
    ]
    conn.executemany(
        """INSERT INTO requests (request_id, conv_id, step, attempt, status, prompt_tokens,
            max_tokens, completion_tokens, cached_tokens, cost_usd, endpoint, model,
            reasoning_tokens, reasoning_usd, cache_saved_usd)
        VALUES (?, ?, ?, 1, ?, 90, 512, 40, 8, ?, ?, ?, 5, 0.001, 0.0005)""",
        [(top[0] + i + 1, *row) for i, row in enumerate(extra)],
    )
    expected = {
        name: {row[0]: row[1:] for row in conn.execute(_SPEND_SQL.format(key=key)).fetchall()}
        for name, key in _SPEND_BY.items()
    }
    outputs = conn.execute(
        "SELECT count(*) FROM requests WHERE status = 'ok' AND step IS NOT NULL"
    ).fetchone()
    multiturn = {
        row[0]: row[1:]
        for row in conn.execute(
            f"""SELECT m.evol_type, {state.stats._STATUS_COUNTS} FROM messages m
            JOIN conversations c USING (conv_id) WHERE m.kind = 'follow_up' GROUP BY 1"""
        ).fetchall()
    }
    conn.close()
    assert len(expected["by_endpoint"]) >= 5 and "(no conversation)" in expected["by_language"]
    monkeypatch.setattr(state.stats, "_SPEND_RANGE", spend_range)
    conn = open_run(run.run_dir, action="read")
    try:
        got = compute_stats(conn, run="fx")
    finally:
        conn.close()
    for name, rows in expected.items():
        tables = [got.total] if name == "total" else [b.spend for b in getattr(got, name)]
        keys = ["all"] if name == "total" else [b.key for b in getattr(got, name)]
        assert sorted(keys) == sorted(rows)
        for key, spend in zip(keys, tables, strict=True):
            fields = dataclasses.astuple(spend)
            want = rows[key]
            assert fields[:5] == tuple(want[:5]) and fields[6] == want[6], (name, key)
            assert [fields[5], fields[7], fields[8]] == pytest.approx(
                [want[5], want[7], want[8]]
            ), (name, key)
        costs = [spend.cost_usd for spend in tables]
        assert costs == sorted(costs, reverse=True)  # costliest first
    assert got.outputs == (outputs or (0,))[0]
    assert {t.type: (t.done, t.filtered, t.failed, t.open) for t in got.multiturn_types} == {
        key: tuple(n) for key, n in multiturn.items()
    }
    assert any(t.filtered or t.failed or t.open for t in got.multiturn_types)
