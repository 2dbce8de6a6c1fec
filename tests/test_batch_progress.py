"""Batch mode in the progress displays, the end-of-run summary, `m2l status` and `m2l estimate`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from rich.console import Console

from engine.app.estimate import add_estimate_parser
from engine.app.run import execute_run
from engine.clock import FakeClock
from engine.config import load_config
from engine.events import BatchUpdate, RunStarted
from engine.progress import ProgressModel
from engine.progress.dashboard import Dashboard
from engine.progress.lines import progress_line
from engine.progress.snapshot import ProgressSnapshot
from engine.progress.store import read_store
from engine.progress.summary import summary_text
from state.schema import STATE_FILE
from tests.runfixtures import write_config
from tests.test_batch_run import batch_config


def _model_with_batches() -> tuple[ProgressModel, FakeClock]:
    clock = FakeClock(100.0)
    model = ProgressModel(clock)
    model.on_event(RunStarted("r", 10, 0, None, None, None, clock.now()))
    model.on_event(
        BatchUpdate(
            open_batches=3,
            by_status=(("in_progress", 2), ("validating", 1)),
            requests_done=40,
            requests_total=120,
            oldest_age_s=30.0,
            waiting=7,
            batches_created=5,
            t=clock.now(),
        )
    )
    return model, clock


def test_the_model_shows_the_latest_batch_update_and_ages_it() -> None:
    """Open batches by status, lines answered of all, waiting lines; the oldest keeps ageing."""
    model, clock = _model_with_batches()
    clock.advance(12.0)
    s = model.snapshot()
    assert s.batches_open == 3
    assert dict(s.batches_by_status) == {"in_progress": 2, "validating": 1}
    assert (s.batch_requests_done, s.batch_requests_total, s.batch_waiting) == (40, 120, 7)
    assert s.batch_oldest_age_s == pytest.approx(42.0)
    assert ProgressSnapshot.from_dict(s.as_dict()).batches_by_status == s.batches_by_status


def test_plain_lines_and_the_dashboard_show_batches() -> None:
    """The logfmt line carries the batch figures; the dashboard has a batches row."""
    model, _ = _model_with_batches()
    s = model.snapshot()
    line = progress_line(s)
    assert "batches_open=3" in line and "batches=in_progress:2,validating:1" in line
    assert "batch_requests=40/120" in line and "batch_waiting=7" in line
    console = Console(width=100, record=True, color_system=None)
    console.print(Dashboard(s))
    text = console.export_text()
    assert "batches" in text and "3 open" in text and "40/120 lines" in text


def test_an_online_run_shows_no_batches() -> None:
    """Without batch mode, no batch fields appear anywhere."""
    clock = FakeClock()
    model = ProgressModel(clock)
    model.on_event(RunStarted("r", 10, 0, None, None, None, clock.now()))
    s = model.snapshot()
    assert s.batches_open is None and "batches_open" not in progress_line(s)


@pytest.mark.anyio
async def test_status_of_a_batch_run_counts_its_batches(tmp_path: Path) -> None:
    """After a batch run the store's snapshot and the summary count batches and their lines."""
    config = load_config(batch_config(tmp_path))
    await execute_run(config, env={})
    s = read_store(config.run_dir / STATE_FILE)
    assert s.batches_open == 0
    statuses = dict(s.batches_by_status)
    assert set(statuses) == {"completed"} and statuses["completed"] >= 8
    assert s.batch_requests_total == s.batch_requests_done == s.requests_ok
    assert s.batches_made == statuses["completed"]
    text = summary_text(s, run_dir=config.run_dir)
    assert f"{s.batches_made} made" in text and "completed" in text


def test_estimate_shows_batch_cost_and_waves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`m2l estimate` prints the batch-mode cost next to the online one and the waves needed."""
    config = write_config(tmp_path)
    parser = argparse.ArgumentParser()
    add_estimate_parser(parser.add_subparsers())
    args = parser.parse_args(["estimate", str(config), "--json"])
    assert args.func(args) == 0
    data = json.loads(capsys.readouterr().out)
    longest = max(int(t) for t, n in data["turns"].items() if n)
    assert data["batch_waves"] == 2 * longest
    assert data["batch_cost_usd"] == pytest.approx(data["cost_usd"] / 2)
    args = parser.parse_args(["estimate", str(config)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert f"in about {2 * longest} waves" in out and 'run.mode = "batch"' in out
