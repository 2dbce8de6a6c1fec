"""The numbers agree: the end summary and `m2l status` of one run; a burst over 100% is named;
near-identical failure reasons are one line; a stop request shows as stopping."""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path

import duckdb
from rich.console import Console

from budgets.estimate import estimate_run
from engine.app.run import execute_run
from engine.clock import FakeClock, MonotonicClock
from engine.config import load_config
from engine.events import BudgetUpdate, ConversationFinished, Hooks, RunStarted, RunStopping
from engine.progress import Dashboard, ProgressModel, ProgressSnapshot
from engine.progress.lines import progress_line
from engine.progress.store import store_snapshot
from engine.progress.summary import summary_rows
from engine.simulator.sampling import sim_outputs
from tests.runfixtures import write_config


def rows_of(s: ProgressSnapshot) -> dict[str, tuple[str, str]]:
    return {label.strip(): (figure, detail) for label, figure, detail in summary_rows(s)}


def test_summary_and_status_give_the_same_wall_time_utilisation_and_spend(
    tmp_path: Path,
) -> None:
    """The live model's end summary and the store's (what `m2l status` shows) match."""
    config = load_config(write_config(tmp_path, extra="[limits]\nrpm = 600\ntpm = 100000"))
    model = ProgressModel(MonotonicClock())
    asyncio.run(
        execute_run(
            config,
            env={},
            hooks=Hooks([model]),
            baseline=model.load_baseline,
            final=model.load_final,
        )
    )
    live = rows_of(model.snapshot())
    with duckdb.connect(str(config.run_dir / "state.duckdb"), read_only=True) as conn:
        stored = rows_of(store_snapshot(conn))
    for label in ("wall time", "utilisation", "simulated cost", "tokens in", "tokens out"):
        assert live[label] == stored[label], label


def dashboard(s: ProgressSnapshot) -> str:
    console = Console(record=True, width=100, force_terminal=True)
    console.print(Dashboard(s))
    return console.export_text()


def test_over_100_percent_without_429s_is_named_the_initial_burst() -> None:
    """5.97M of 3.00M tokens/min with no 429: the dashboard and the log line say why."""
    burst = ProgressSnapshot(state="running", tpm=5_970_000, tpm_limit=3_000_000)
    assert "initial burst" in dashboard(burst)
    assert "over_limit=initial_burst" in progress_line(burst)
    limited = ProgressSnapshot(
        state="running", tpm=5_970_000, tpm_limit=3_000_000, rate_limit_hits=3
    )
    assert "initial burst" not in dashboard(limited)


def test_near_identical_failure_reasons_are_one_line() -> None:
    """34 malformed bodies that began differently are one reason with a count of 34."""
    model = ProgressModel(FakeClock())
    model.on_event(RunStarted("r", 40, 0, None, None, None, 0.0))
    for i in range(34):
        reason = (
            "malformed_response: the server's reply is not an OpenAI chat completion "
            f"(JSONDecodeError: unexpected character: line 1 column {i + 1}); it began '<p>{i}'"
        )
        model.on_event(ConversationFinished(i, "failed", reason, "French", "qa", 0, 1.0))
    reasons = model.snapshot().failed_by_reason
    assert len(reasons) == 1 and reasons[0][1] == 34


def test_a_stop_request_shows_stopping_until_the_run_ends() -> None:
    """Between Ctrl-C and the end, the state is stopping and says what it waits for."""
    model = ProgressModel(FakeClock())
    assert model.snapshot().state == "starting"  # seeds load before RunStarted
    model.on_event(RunStarted("r", 4, 0, None, None, None, 0.0))
    model.on_event(RunStopping("stopped by SIGINT", 30.0, 1.0))
    s = model.snapshot()
    assert s.state == "stopping" and "30 s" in s.message
    assert "stopping" in dashboard(s)


class Budgets:
    """Keeps every BudgetUpdate a run reports."""

    def __init__(self) -> None:
        self.updates: list[BudgetUpdate] = []

    def on_event(self, event: object) -> None:
        if isinstance(event, BudgetUpdate):
            self.updates.append(event)


def test_the_early_projection_starts_from_the_estimate_model(tmp_path: Path) -> None:
    """Before the first reply the projected cost is what `m2l estimate` says (the simulator's
    reply lengths), not every reply at max_tokens, and it is near what the run really costs."""
    config = load_config(write_config(tmp_path, evols_per_seed=3))
    estimate = estimate_run(config, simulated=True, reply_lengths=partial(sim_outputs, config.sim))
    assert estimate.cost_usd is not None and estimate.worst_usd is not None
    seen = Budgets()
    report = asyncio.run(execute_run(config, env={}, hooks=Hooks([seen])))
    assert report.counts.get("done", 0) == report.counts.get("done", 0) > 0
    first = next(u for u in seen.updates if u.projected_usd is not None)
    assert first.spent_usd == 0.0 and first.projected_usd is not None
    actual = seen.updates[-1].spent_usd
    # The worst case is over twice the estimate (a run projected from it started at 2.5x what
    # it cost); the start is now within a third of both.
    assert estimate.worst_usd > 2 * estimate.cost_usd
    assert 0.67 < first.projected_usd / estimate.cost_usd < 1.5
    assert 0.67 < first.projected_usd / actual < 1.5
