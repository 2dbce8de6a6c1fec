"""The progress model: counters, sliding windows and snapshots driven by scripted events."""

from __future__ import annotations

import json

import pytest

from engine.clock import FakeClock
from engine.events import (
    BudgetUpdate,
    ConversationFinished,
    ConversationStarted,
    Event,
    Hooks,
    RateLimitHit,
    RequestDone,
    RequestFailed,
    RequestRetried,
    RequestSent,
    RunFinished,
    RunStarted,
    StepDone,
)
from engine.progress import LanguageProgress, ProgressModel, ProgressSnapshot, SlidingCounter


def start(
    model: ProgressModel,
    *,
    total: int = 10,
    done: int = 0,
    rpm: float | None = 600.0,
    tpm: float | None = 100_000.0,
    budget: float | None = 1.0,
) -> None:
    model.on_event(RunStarted("demo", total, done, rpm, tpm, budget, 0.0))


def sent(key: str, kind: str = "answer", prompt: int = 100, max_tokens: int = 400) -> Event:
    return RequestSent(key=key, kind=kind, prompt_tokens=prompt, max_tokens=max_tokens, t=0.0)


def replied(
    key: str,
    kind: str = "answer",
    prompt: int = 100,
    completion: int = 200,
    latency: float = 1.0,
    cost: float = 0.01,
) -> Event:
    return RequestDone(key, kind, prompt, completion, latency, cost, 0.0)


def finish(
    conv_id: int, language: str, status: str = "done", reason: str | None = None
) -> list[Event]:
    return [
        ConversationStarted(conv_id, language, "qa", 0.0),
        ConversationFinished(conv_id, status, reason, language, "qa", 3, 0.0),
    ]


def feed(model: ProgressModel, events: list[Event]) -> None:
    for event in events:
        model.on_event(event)


def test_counts_conversations_by_state_and_reason() -> None:
    """Finished conversations are counted by status, with failure and filter reasons."""
    clock = FakeClock()
    model = ProgressModel(clock)
    start(model, total=10)
    feed(model, finish(1, "Hindi") + finish(2, "Hindi", "failed", "context_length_exceeded"))
    feed(model, finish(3, "Swahili", "filtered", "repetition"))
    feed(model, finish(4, "Swahili", "filtered", "repetition"))
    model.on_event(ConversationStarted(5, "Hindi", "qa", 0.0))
    s = model.snapshot()
    assert (s.done, s.failed, s.filtered, s.active, s.pending) == (1, 1, 2, 1, 5)
    assert s.finished == 4 and s.fraction == pytest.approx(0.4)
    assert s.failed_by_reason == (("context_length_exceeded", 1),)
    assert s.filtered_by_reason == (("repetition", 2),)


def test_in_flight_counts_each_request_until_its_outcome() -> None:
    """A request is in flight from RequestSent until done, retried, rate-limited or failed."""
    model = ProgressModel(FakeClock())
    start(model)
    feed(model, [sent("a", "evolve"), sent("b"), sent("c"), sent("d", "follow_up")])
    assert model.snapshot().in_flight_by_kind == (("answer", 2), ("evolve", 1), ("follow_up", 1))
    feed(model, [replied("a", "evolve"), RequestRetried("b", "server_error", "503", 1, 1.0, 0.0)])
    feed(model, [RateLimitHit("c", "tokens", 2.0, 0.0), sent("b")])  # b goes out again
    s = model.snapshot()
    assert s.in_flight == 2 and s.in_flight_by_kind == (("answer", 1), ("follow_up", 1))
    feed(model, [RequestFailed("d", "content_filtered", "refused", 0.0), replied("b")])
    assert model.snapshot().in_flight == 0


def test_request_rates_cover_the_last_minute() -> None:
    """rpm counts requests sent in the last 60 s; an idle minute brings it back to zero."""
    clock = FakeClock(1000.0)
    model = ProgressModel(clock)
    start(model, rpm=240.0, tpm=100_000.0)
    for i in range(120):  # two a second for a minute
        model.on_event(sent(f"r{i}", prompt=300, max_tokens=200))
        clock.advance(0.5)
    s = model.snapshot()
    assert s.rpm == pytest.approx(120, rel=0.03)
    assert s.rpm_util == pytest.approx(0.5, rel=0.03)
    # Providers charge prompt + max_tokens against TPM, so that is what tpm counts.
    assert s.tpm == pytest.approx(120 * 500, rel=0.03)
    assert s.tpm_util == pytest.approx(0.6, rel=0.03)
    clock.advance(61)
    assert model.snapshot().rpm == 0


def test_rates_early_in_a_run_are_per_elapsed_time() -> None:
    """Ten seconds into a run, ten requests read as 60/min, not 10/min."""
    clock = FakeClock(50.0)
    model = ProgressModel(clock)
    start(model)
    for i in range(10):
        model.on_event(sent(f"r{i}"))
        clock.advance(1.0)
    assert model.snapshot().rpm == pytest.approx(60, rel=0.05)


def test_eta_follows_the_recent_finish_rate() -> None:
    """Ten finishes in the last minute of 100 planned leave 90 at 10/min: nine minutes."""
    clock = FakeClock()
    model = ProgressModel(clock)
    start(model, total=100)
    assert model.snapshot().eta_s is None  # nothing finished yet: no honest estimate
    for i in range(10):
        clock.advance(6.0)
        feed(model, finish(i, "Hindi"))
    s = model.snapshot()
    assert s.conv_per_min == pytest.approx(10, rel=0.01)
    assert s.eta_s == pytest.approx(540, rel=0.01)


def test_errors_are_counted_by_class_with_the_last_message_and_its_age() -> None:
    """Retries and failures count by error class; the newest message is kept with its age."""
    clock = FakeClock()
    model = ProgressModel(clock)
    start(model)
    feed(model, [sent("a"), RequestRetried("a", "server_error", "503 overloaded", 1, 1.0, 0.0)])
    feed(model, [sent("a"), RequestRetried("a", "request_timeout", "read timed out", 2, 2.0, 0.0)])
    clock.advance(5)
    feed(model, [sent("a"), RequestFailed("a", "server_error", "503 again", 0.0)])
    feed(model, [RateLimitHit("x", "requests", 1.0, 0.0)])
    clock.advance(3)
    s = model.snapshot()
    assert (s.retries, s.requests_failed, s.rate_limit_hits) == (2, 1, 1)
    assert s.errors_by_class == (("server_error", 2), ("request_timeout", 1))
    assert (s.last_error_class, s.last_error) == ("server_error", "503 again")
    assert s.last_error_age_s == pytest.approx(3)


def test_a_rate_limit_pause_counts_down() -> None:
    """After a 429 the snapshot says how much longer dispatch is paused."""
    clock = FakeClock()
    model = ProgressModel(clock)
    start(model)
    model.on_event(RateLimitHit("a", "tokens", 4.0, 0.0))
    clock.advance(1.5)
    assert model.snapshot().paused_s == pytest.approx(2.5)
    clock.advance(3)
    assert model.snapshot().paused_s == 0


def test_languages_are_listed_slowest_first() -> None:
    """The language that will finish last comes first; a finished language comes last."""
    clock = FakeClock()
    model = ProgressModel(clock, language_totals={"Hindi": 4, "Swahili": 4, "Japanese": 2})
    start(model)
    for i, language in enumerate(["Hindi", "Hindi", "Hindi", "Japanese", "Japanese", "Swahili"]):
        clock.advance(10)
        feed(model, finish(i, language))
    clock.advance(10)
    langs = model.snapshot().languages
    assert [lang.language for lang in langs] == ["Swahili", "Hindi", "Japanese"]
    swahili = langs[0]
    assert (swahili.finished, swahili.total, swahili.fraction) == (1, 4, 0.25)
    assert swahili.eta_s is not None and swahili.eta_s > langs[1].eta_s  # type: ignore[operator]
    assert langs[2].eta_s == 0


def test_a_language_with_work_and_no_finishes_is_slowest() -> None:
    """A planned language nothing has finished in yet sorts before every moving one."""
    clock = FakeClock()
    model = ProgressModel(clock, language_totals={"Yoruba": 3, "Hindi": 3})
    start(model)
    feed(model, finish(1, "Hindi"))
    clock.advance(5)
    langs = model.snapshot().languages
    assert [lang.language for lang in langs] == ["Yoruba", "Hindi"]
    # No finish of its own to go by: it will be done when the run is.
    assert langs[0].eta_s == model.snapshot().eta_s


def test_no_language_is_projected_to_finish_after_the_run() -> None:
    """A language whose own recent rate is slow still ends when the run does: its ETA is the
    run's, and the slowest language's ETA is the overall one."""
    clock = FakeClock()
    model = ProgressModel(clock, language_totals={"Yoruba": 10, "Hindi": 10})
    start(model, total=20)
    for i in range(9):
        clock.advance(6)
        feed(model, finish(i, "Hindi"))
    clock.advance(6)
    feed(model, finish(9, "Yoruba"))  # one Yoruba finish: alone, 9 left at 1/min = 9 min
    s = model.snapshot()
    assert s.eta_s is not None
    etas = {lang.language: lang.eta_s for lang in s.languages}
    assert etas["Yoruba"] == pytest.approx(s.eta_s)  # capped at the run's, not 9 minutes
    assert etas["Hindi"] is not None and etas["Hindi"] <= s.eta_s
    assert max(e for e in etas.values() if e is not None) == pytest.approx(s.eta_s)


def test_money_comes_from_the_ledger_once_it_reports() -> None:
    """Spend is summed from replies until a BudgetUpdate, whose figures then win."""
    model = ProgressModel(FakeClock())
    start(model, total=4, budget=1.0)
    feed(model, [sent("a"), replied("a", cost=0.25), *finish(1, "Hindi")])
    s = model.snapshot()
    assert s.spent_usd == pytest.approx(0.25)
    assert s.projected_usd == pytest.approx(1.0)  # 1 of 4 finished for $0.25
    assert s.spent_fraction == pytest.approx(0.25)
    model.on_event(BudgetUpdate(0.4, 0.05, 2.0, 1.2, 0.0))
    s = model.snapshot()
    assert (s.spent_usd, s.reserved_usd, s.cap_usd, s.projected_usd) == (0.4, 0.05, 2.0, 1.2)


def test_tokens_steps_and_latency_are_summed() -> None:
    """Replies add tokens in and out, steps count by kind, latency is the recent mean."""
    clock = FakeClock()
    model = ProgressModel(clock)
    start(model)
    feed(model, [sent("a", "evolve"), replied("a", "evolve", 100, 50, latency=1.0)])
    feed(model, [sent("b"), replied("b", "answer", 200, 300, latency=3.0)])
    feed(model, [StepDone(1, "evolve", "Hindi", 0.0), StepDone(1, "answer", "Hindi", 0.0)])
    feed(model, [StepDone(2, "answer", "Hindi", 0.0)])
    clock.advance(1)
    s = model.snapshot()
    assert (s.tokens_in, s.tokens_out, s.requests_sent, s.requests_ok) == (300, 350, 2, 2)
    assert s.steps_by_kind == (("answer", 2), ("evolve", 1))
    assert s.latency_s == pytest.approx(2.0)


def test_time_queued_in_m2l_and_at_the_server_are_apart() -> None:
    """Waits before sending and times at the server are averaged separately, recent and for
    the session, and the latest concurrency limit is kept."""
    clock = FakeClock()
    model = ProgressModel(clock)
    start(model)
    feed(model, [RequestSent("a", "answer", 100, 400, 0.0, queued_s=4.0, concurrency=2)])
    feed(model, [replied("a", latency=1.0)])
    feed(model, [RequestSent("b", "answer", 100, 400, 0.0, queued_s=2.0, concurrency=3)])
    feed(model, [replied("b", latency=2.0)])
    clock.advance(1)
    s = model.snapshot()
    assert s.queued_s == pytest.approx(3.0)
    assert s.latency_s == pytest.approx(1.5)
    assert (s.queued_mean_s, s.server_mean_s) == (pytest.approx(3.0), pytest.approx(1.5))
    assert s.concurrency_limit == 3
    clock.advance(120)  # the recent window empties; the session means stay
    s = model.snapshot()
    assert (s.queued_s, s.latency_s) == (None, None)
    assert s.queued_mean_s == pytest.approx(3.0)


def test_run_finished_sets_the_state_and_stops_the_clock() -> None:
    """After RunFinished the state is final and elapsed time no longer grows."""
    clock = FakeClock()
    model = ProgressModel(clock)
    assert model.snapshot().state == "starting"
    start(model)
    clock.advance(30)
    model.on_event(RunFinished("budget_exhausted", "the $1.00 cap is reached", 0.0))
    clock.advance(100)
    s = model.snapshot()
    assert (s.state, s.message, s.elapsed_s) == ("budget_exhausted", "the $1.00 cap is reached", 30)


def test_mean_utilisation_names_the_binding_limit() -> None:
    """The limit used most over the run is the binding one, with its mean utilisation."""
    clock = FakeClock()
    model = ProgressModel(clock)
    start(model, rpm=100.0, tpm=10_000.0)
    for i in range(20):  # 20 requests a minute (20% of rpm), 8,000 tokens (80% of tpm)
        model.on_event(sent(f"r{i}", prompt=100, max_tokens=300))
        clock.advance(3)
    s = model.snapshot()
    assert s.binding_limit == "tpm"
    assert s.mean_utilisation == pytest.approx(0.8)


def test_a_resumed_run_counts_earlier_sessions() -> None:
    """Without a baseline, RunStarted's finished count is shown as earlier sessions."""
    model = ProgressModel(FakeClock())
    start(model, total=10, done=6)
    feed(model, finish(7, "Hindi"))
    s = model.snapshot()
    assert (s.finished_before, s.done, s.finished, s.pending) == (6, 1, 7, 3)


def test_a_baseline_from_the_store_keeps_its_breakdown() -> None:
    """A baseline snapshot's counts, reasons and languages carry on under this session's."""
    baseline = ProgressSnapshot(
        run="demo",
        total=10,
        done=4,
        failed=1,
        failed_by_reason=(("content_filtered", 1),),
        errors_by_class=(("server_error", 3),),
        requests_sent=20,
        tokens_in=1000,
        spent_usd=0.5,
        languages=(LanguageProgress("Hindi", total=6, done=3, failed=1),),
    )
    model = ProgressModel(FakeClock(), baseline=baseline)
    start(model, total=10, done=5)
    feed(model, finish(9, "Hindi", "failed", "content_filtered"))
    feed(model, [sent("z"), RequestRetried("z", "server_error", "502", 1, 1.0, 0.0)])
    s = model.snapshot()
    assert (s.done, s.failed, s.finished_before, s.finished) == (4, 2, 0, 6)
    assert s.failed_by_reason == (("content_filtered", 2),)
    assert s.errors_by_class == (("server_error", 4),)
    assert (s.requests_sent, s.tokens_in, s.spent_usd) == (21, 1000, 0.5)
    assert s.languages[0].finished == 5 and s.languages[0].total == 6


def test_a_snapshot_survives_a_json_round_trip() -> None:
    """as_dict is JSON-serialisable and from_dict gives the same snapshot back."""
    clock = FakeClock()
    model = ProgressModel(clock, language_totals={"Hindi": 3, "Swahili": 2})
    start(model)
    feed(model, [sent("a"), RequestRetried("a", "server_error", "503", 1, 1.0, 0.0)])
    feed(
        model,
        [*finish(1, "Hindi", "filtered", "wrong_language"), StepDone(1, "evolve", "Hindi", 0.0)],
    )
    clock.advance(2)
    s = model.snapshot()
    data = json.loads(json.dumps(s.as_dict(), allow_nan=False))
    assert data["finished"] == 1 and data["languages"][0]["language"] == "Swahili"
    assert ProgressSnapshot.from_dict(data) == s


def test_the_model_is_a_safe_hook() -> None:
    """Events of unknown types are ignored and the model stays registered with Hooks."""
    model = ProgressModel(FakeClock())
    hooks = Hooks([model])
    hooks.on_event(object())  # type: ignore[arg-type]
    hooks.on_event(RunStarted("demo", 3, 0, None, None, None, 0.0))
    hooks.on_event(ConversationFinished(1, "done", None, "Hindi", "qa", 1, 0.0))  # never started
    s = model.snapshot()
    assert (s.total, s.done, s.active) == (3, 1, 0)
    assert (s.rpm_util, s.tpm_util, s.binding_limit) == (None, None, None)


def test_sliding_counter_forgets_what_left_the_window() -> None:
    """Amounts older than the span drop out of the total; a long silence costs nothing."""
    counter = SlidingCounter(60.0, 1.0)
    counter.add(0.5, 2)
    counter.add(30.2, 3)
    assert counter.total(59.9) == 5
    assert counter.total(60.5) == 3
    assert counter.total(10_000.0) == 0
    counter.add(10_000.0, 7)
    assert counter.total(10_000.0) == 7
    # 59 whole buckets and half of the current one: 59.5 s.
    assert counter.rate(10_000.5, since=0.0) == pytest.approx(7 / 59.5)
    assert counter.rate(10_000.2, since=10_000.0) == 7  # never divides by less than a bucket


def test_sliding_counter_rejects_a_span_that_is_not_whole_buckets() -> None:
    """A window must be a positive whole number of buckets."""
    with pytest.raises(ValueError, match="cannot be cut"):
        SlidingCounter(10.0, 3.0)
    with pytest.raises(ValueError, match="cannot be cut"):
        SlidingCounter(10.0, 0.0)


def test_a_baseline_loaded_after_run_started_replaces_the_lump() -> None:
    """The engine may read the store after RunStarted: the breakdown then replaces the lump."""
    model = ProgressModel(FakeClock())
    start(model, total=10, done=5)
    model.load_baseline(ProgressSnapshot(total=10, done=4, filtered=1, cap_usd=3.0))
    feed(model, finish(1, "Hindi"))
    s = model.snapshot()
    assert (s.finished_before, s.done, s.filtered, s.finished) == (0, 5, 1, 6)
    assert s.cap_usd == 1.0  # RunStarted's cap (this session's config) wins over the store's


def test_a_request_without_a_kind_is_counted_as_other() -> None:
    """A dispatcher that does not name the step kind still shows up in flight."""
    model = ProgressModel(FakeClock())
    start(model)
    model.on_event(sent("a", kind=""))
    assert model.snapshot().in_flight_by_kind == (("other", 1),)
