"""The live dashboard drawn from a scripted event stream into a recording rich Console."""

from __future__ import annotations

from dataclasses import replace

import pytest
from rich.cells import cell_len
from rich.console import Console

from engine.clock import FakeClock
from engine.events import (
    BudgetUpdate,
    ConversationFinished,
    ConversationStarted,
    OutputRejected,
    RateLimitHit,
    RequestDone,
    RequestFailed,
    RequestRetried,
    RequestSent,
    RunStarted,
    StepDone,
)
from engine.progress import Dashboard, ProgressModel, ProgressSnapshot
from engine.progress.lines import progress_line
from engine.progress.summary import summary_rows


def scripted_snapshot() -> ProgressSnapshot:
    """A run of 10 conversations in three languages, part-way, with a few errors."""
    clock = FakeClock(100.0)
    model = ProgressModel(clock, language_totals={"Hindi": 4, "Swahili": 4, "Japanese": 2})
    model.on_event(RunStarted("demo-run", 10, 0, 600.0, 100_000.0, 1.0, 0.0))
    for conv, (language, status, reason) in enumerate(
        [
            ("Hindi", "done", None),
            ("Hindi", "done", None),
            ("Japanese", "done", None),
            ("Japanese", "filtered", "repetition"),
            ("Swahili", "failed", "context_length_exceeded"),
        ],
        start=1,
    ):
        model.on_event(ConversationStarted(conv, language, "qa", 0.0))
        for step, kind in enumerate(("evolve", "answer")):
            key = f"{conv}/{step}"
            model.on_event(RequestSent(key, kind, 100, 400, 0.0, queued_s=0.5, concurrency=4))
            clock.advance(2.0)
            model.on_event(RequestDone(key, kind, 100, 200, 2.0, 0.01, 0.0))
            model.on_event(StepDone(conv, kind, language, 0.0))
        model.on_event(ConversationFinished(conv, status, reason, language, "qa", 1, 0.0))
    model.on_event(ConversationStarted(6, "Hindi", "qa", 0.0))
    model.on_event(RequestSent("6/0", "evolve", 100, 400, 0.0, queued_s=0.5, concurrency=4))
    model.on_event(RequestSent("7/0", "evolve", 100, 400, 0.0, queued_s=0.5, concurrency=4))
    model.on_event(RequestRetried("7/0", "server_error", "503 Service Unavailable", 1, 1.0, 0.0))
    model.on_event(RequestSent("7/0", "evolve", 100, 400, 0.0, queued_s=0.5, concurrency=4))
    model.on_event(RateLimitHit("7/0", "tokens", 1.0, 0.0))
    model.on_event(RequestSent("8/0", "answer", 100, 400, 0.0, queued_s=0.5, concurrency=4))
    model.on_event(RequestFailed("8/0", "request_timeout", "read timed out after 60 s", 0.0))
    model.on_event(BudgetUpdate(0.12, 0.03, 1.0, 0.24, 0.0))
    clock.advance(4.0)
    return model.snapshot()


def draw(snapshot: ProgressSnapshot, width: int) -> str:
    console = Console(record=True, width=width, force_terminal=True)
    console.print(Dashboard(snapshot))
    return console.export_text()


def test_the_dashboard_shows_the_runs_figures() -> None:
    """Counts, percentages, rates, limits, errors, money and the last error all appear."""
    text = draw(scripted_snapshot(), 120)
    assert "m2l · demo-run · running" in text
    assert "5/10  50.0%" in text
    assert "done 3 · failed 1 · filtered 1 · active 1 · pending 4" in text
    assert "answer 5 · evolve 5" in text  # steps done by kind
    assert "in flight     1 · evolve 1 · limit 4 · queued in m2l 0.5 s · at server 2.0 s" in text
    # 14 requests in 24 s is 35/min; 14 × 500 charged tokens is 17.5k/min.
    assert "35 of 600" in text and "5.8%" in text
    assert "17.5k of 100k" in text and "17.5%" in text
    assert "429s 1 · retries 1 · failed requests 1" in text
    assert "request_timeout 1 · server_error 1" in text
    assert "request_timeout 4 s ago: read timed out after 60 s" in text
    assert "$0.12 of $1.00" in text and "12.0%" in text
    assert "projected  $0.24" in text and "reserved   $0.03" in text


def test_the_languages_table_lists_the_slowest_language_first() -> None:
    """Swahili (1 of 4, slowest rate) precedes Hindi (2 of 4); Japanese (2 of 2) is last."""
    text = draw(scripted_snapshot(), 120)
    rows = [
        line
        for line in text.splitlines()
        if any(n in line for n in ("Hindi", "Swahili", "Japanese"))
    ]
    assert [next(n for n in ("Hindi", "Swahili", "Japanese") if n in row) for row in rows] == [
        "Swahili",
        "Hindi",
        "Japanese",
    ]
    assert "1/4" in rows[0] and "25.0%" in rows[0]
    assert "2/2" in rows[2] and "100.0%" in rows[2] and rows[2].rstrip(" │").endswith("done")


def test_every_line_fits_the_width_at_100_and_80_columns() -> None:
    """The panel is exactly as wide as the console, and at 80 columns keeps its figures."""
    snapshot = scripted_snapshot()
    for width in (100, 80):
        lines = draw(snapshot, width).splitlines()
        assert {cell_len(line) for line in lines} == {width}
    narrow = draw(snapshot, 80)
    for figure in ("5/10  50.0%", "35 of 600", "$0.12 of $1.00", "read timed out after 60 s"):
        assert figure in narrow


def test_a_long_error_message_is_cut_to_one_line() -> None:
    """A long multi-line error message takes one line, ending with an ellipsis."""
    snapshot = replace(
        scripted_snapshot(), last_error="upstream said:\n" + "very long detail " * 20
    )
    lines = [line for line in draw(snapshot, 100).splitlines() if "last error" in line]
    assert len(lines) == 1 and "upstream said: very long" in lines[0]
    assert lines[0].rstrip(" │").endswith("…")


def test_an_empty_snapshot_draws_dashes_not_errors() -> None:
    """Before anything is known the dashboard shows dashes and zeros."""
    text = draw(ProgressSnapshot(), 100)
    assert "starting" in text and "ETA —" in text and "0/0" in text


def test_a_rate_limit_pause_shows_in_the_border() -> None:
    """While a 429 pauses dispatch, the panel says for how long."""
    text = draw(replace(scripted_snapshot(), paused_s=2.5), 100)
    assert "paused 2.5 s after a 429" in text


def test_hidden_reasoning_and_the_prompt_cache_are_shown_apart() -> None:
    """Replies that carry reasoning and cached tokens: the dashboard, the summary rows and the
    plain line show reasoning apart from output (with its cost) and the cache hit rate."""
    clock = FakeClock()
    model = ProgressModel(clock)
    model.on_event(RunStarted("r", 2, 0, None, None, None, 0.0))
    for key in ("1:1", "2:1"):
        model.on_event(
            RequestDone(key, "answer", 2000, 1500, 1.0, 0.004, 0.0, 1000, 1500, 0.002, 0.0003)
        )
    s = model.snapshot()
    assert (s.tokens_out, s.tokens_reasoning, s.tokens_cached) == (3000, 2000, 3000)
    assert s.reasoning_usd == pytest.approx(0.004)
    text = draw(s, 120)
    assert "2.00k hidden reasoning $0.004" in text and "cache hits 75% of in" in text
    rows = {label: (value, detail) for label, value, detail in summary_rows(s)}
    assert "of 3.00k output tokens, 2.00k hidden reasoning, $0.004" in rows["reasoning"][1]
    assert rows["prompt cache"][0] == "75.0%" and "saving $0.0006" in rows["prompt cache"][1]
    assert "tokens_reasoning=2000" in progress_line(s)


def test_a_request_file_job_is_shown_as_requests_without_steps_or_languages() -> None:
    """`m2l requests` (RunStarted.unit = "requests"): the bar counts requests, and the rows
    that only a conversation run has (steps, rejected outputs, languages) are left out."""
    clock = FakeClock()
    model = ProgressModel(clock)
    model.on_event(RunStarted("out.jsonl", 3, 0, None, None, None, 0.0, unit="requests"))
    for line in range(2):
        model.on_event(ConversationStarted(line, "gpt-4o-mini", "request", 0.0))
        model.on_event(RequestSent(f"{line}:0", "request", 10, 50, 0.0))
        model.on_event(RequestDone(f"{line}:0", "request", 10, 20, 0.1, 0.0, 0.0))
        model.on_event(ConversationFinished(line, "done", None, "gpt-4o-mini", "request", 1, 0.0))
    clock.advance(1.0)
    text = draw(model.snapshot(), 120)
    assert "requests " in text and "2/3" in text
    assert "conversations" not in text and "steps done" not in text
    assert "languages" not in text and "filtered" not in text


def test_the_rejection_rate_line_counts_what_the_gate_threw_away() -> None:
    """Outputs the quality gate rejected show as a share of the outputs received, with their
    cost and reasons; none rejected, the line reads 0.0%; the line follows new rejections."""
    clock = FakeClock(100.0)
    model = ProgressModel(clock)
    model.on_event(RunStarted("demo-run", 4, 0, 600.0, 100_000.0, 1.0, 0.0))
    for i in range(8):
        key = f"{i // 2 + 1}/{i % 2}"
        model.on_event(RequestSent(key, "answer", 100, 400, 0.0))
        clock.advance(1.0)
        model.on_event(RequestDone(key, "answer", 100, 200, 1.0, 0.001, 0.0))
    text = " ".join(draw(model.snapshot(), 100).split())
    assert "rejected 0 of 8 outputs (0.0%) $0.00" in text
    model.on_event(OutputRejected(1, "answer", "Hindi", "wrong_language", 0.0015, 0.0))
    model.on_event(OutputRejected(2, "evolve", "Swahili", "not_evolved", 0.0005, 0.0))
    model.on_event(OutputRejected(3, "answer", "Hindi", "wrong_language", 0.0010, 0.0))
    text = " ".join(draw(model.snapshot(), 100).split())
    assert "rejected 3 of 8 outputs (37.5%) $0.003" in text
    assert "wrong_language 2" in text and "not_evolved 1" in text
