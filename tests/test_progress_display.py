"""progress_display: the timer, the status file, and the summary however the run ends."""

from __future__ import annotations

import io
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from rich.console import Console

from engine.clock import MonotonicClock
from engine.errors import BudgetExhausted
from engine.events import ConversationFinished, ConversationStarted, RunFinished, RunStarted
from engine.progress import (
    JsonDisplay,
    PlainDisplay,
    ProgressModel,
    ProgressSnapshot,
    RichDisplay,
    progress_display,
    read_status_file,
)


def started_model(total: int = 2) -> ProgressModel:
    model = ProgressModel(MonotonicClock())
    model.on_event(RunStarted("demo", total, 0, 600.0, 100_000.0, 1.0, 0.0))
    return model


def finish_one(model: ProgressModel, conv_id: int) -> None:
    model.on_event(ConversationStarted(conv_id, "Hindi", "qa", 0.0))
    model.on_event(ConversationFinished(conv_id, "done", None, "Hindi", "qa", 1, 0.0))


def temp_files(run_dir: Path) -> list[str]:
    return [p.name for p in run_dir.glob(".*.tmp")]


async def wait_for(condition: Callable[[], bool]) -> None:
    # The condition is met by a worker thread (the display's), so a short poll is the plain way
    # to wait for it; fail_after keeps a broken display from hanging the test.
    with anyio.fail_after(10):
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.01)


@pytest.mark.anyio
async def test_plain_lines_while_running_then_a_summary(tmp_path: Path) -> None:
    """Plain mode writes a line per interval and the status file, then a summary at the end."""
    out = io.StringIO()
    model = started_model()
    async with progress_display("plain", model, stream=out, interval_s=0.02, run_dir=tmp_path):
        finish_one(model, 1)
        await wait_for(lambda: "done=1" in out.getvalue())
        await wait_for(lambda: (tmp_path / "status.json").exists())
        running = read_status_file(tmp_path)
        assert running is not None and running.state == "running"
        finish_one(model, 2)
        model.on_event(RunFinished("finished", "", 0.0))
    text = out.getvalue()
    assert "m2l run demo: finished after" in text
    assert text.rstrip().endswith(f"export: m2l export {tmp_path} --format release-parquet")
    final = read_status_file(tmp_path)
    assert final is not None and final.state == "finished" and final.snapshot.done == 2
    assert not temp_files(tmp_path)  # the atomic writes left no temp file behind


@pytest.mark.anyio
async def test_json_lines_end_with_a_summary_record(tmp_path: Path) -> None:
    """JSON mode writes parseable objects; the last one is the summary."""
    out = io.StringIO()
    model = started_model()
    async with progress_display("json", model, stream=out, interval_s=0.02):
        await wait_for(lambda: out.getvalue().count("\n") >= 2)
        model.on_event(RunFinished("finished", "", 0.0))
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert {r["type"] for r in records[:-1]} == {"progress"}
    assert records[-1]["type"] == "summary" and records[-1]["state"] == "finished"


@pytest.mark.anyio
async def test_an_error_in_the_run_marks_it_failed_and_propagates_as_is(tmp_path: Path) -> None:
    """The caller's exception comes out unwrapped; the status file records a failed run."""
    out = io.StringIO()
    with pytest.raises(KeyError):
        async with progress_display("plain", started_model(), stream=out, run_dir=tmp_path):
            raise KeyError("boom")
    status = read_status_file(tmp_path)
    assert status is not None and status.state == "failed"
    assert "KeyError" in status.snapshot.message
    assert "fix the cause" in out.getvalue()


@pytest.mark.anyio
async def test_a_budget_stop_is_recorded_as_budget_exhausted(tmp_path: Path) -> None:
    """BudgetExhausted escaping the run means the run stopped at its cap."""
    with pytest.raises(BudgetExhausted):
        async with progress_display("quiet", started_model(), run_dir=tmp_path):
            raise BudgetExhausted("the $1.00 cap is reached")
    status = read_status_file(tmp_path)
    assert status is not None and status.state == "budget_exhausted"


@pytest.mark.anyio
async def test_cancellation_marks_the_run_interrupted(tmp_path: Path) -> None:
    """A run cancelled from outside (Ctrl-C in the engine) is interrupted, with a summary."""
    out = io.StringIO()
    with anyio.move_on_after(0.1):
        async with progress_display("plain", started_model(), stream=out, run_dir=tmp_path):
            await anyio.sleep(30)
    status = read_status_file(tmp_path)
    assert status is not None and status.state == "interrupted"
    assert "resume: run the same command again" in out.getvalue()


@pytest.mark.anyio
async def test_the_rich_dashboard_gives_way_to_the_summary(tmp_path: Path) -> None:
    """In rich mode the live panel is drawn while running and the summary panel stays."""
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, height=40, color_system=None)
    model = started_model(total=1)
    async with progress_display("rich", model, console=console, run_dir=tmp_path):
        finish_one(model, 1)
        await wait_for(lambda: "languages, slowest first" in out.getvalue())
    text = out.getvalue()
    assert "conversations" in text and "1/1  100.0%" in text
    assert "m2l · demo · finished" in text  # all conversations done: the run finished
    assert "m2l export" in text


@pytest.mark.anyio
async def test_a_broken_display_is_logged_once_and_the_run_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A display that raises is reported once; the status file keeps being written."""

    class Broken(io.StringIO):
        def write(self, s: str) -> int:
            raise OSError("the terminal went away")

    model = started_model()
    with caplog.at_level(logging.WARNING, logger="engine.progress.display"):
        async with progress_display(
            "plain", model, stream=Broken(), interval_s=0.01, run_dir=tmp_path
        ):
            await wait_for(lambda: (tmp_path / "status.json").exists())
            await anyio.sleep(0.05)
            model.on_event(RunFinished("finished", "", 0.0))
    warnings = [r for r in caplog.records if "progress display failed" in r.getMessage()]
    assert len(warnings) == 1
    status = read_status_file(tmp_path)
    assert status is not None and status.state == "finished"


def test_log_lines_print_above_the_dashboard_while_it_is_up() -> None:
    """A root stderr handler prints via rich while the panel is up, then gets its stream back."""
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, height=40, color_system=None)
    handler = logging.StreamHandler(sys.stderr)
    original = handler.stream
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        display = RichDisplay(console)
        display.start()
        logging.getLogger("engine.test").warning("connection reset, retrying")
        display.close(ProgressSnapshot(state="finished"), run_dir=Path("r"), summary=True)
    finally:
        root.removeHandler(handler)
    assert "connection reset, retrying" in out.getvalue()
    assert handler.stream is original


@pytest.mark.anyio
async def test_a_run_that_never_started_leaves_no_status_file(tmp_path: Path) -> None:
    """Failing before RunStarted (e.g. the store is locked) writes nothing and sums up nothing."""
    out = io.StringIO()
    model = ProgressModel(MonotonicClock())
    with pytest.raises(RuntimeError):
        async with progress_display("plain", model, stream=out, interval_s=0.01, run_dir=tmp_path):
            await anyio.sleep(0.05)
            raise RuntimeError("run directory is in use by another m2l process")
    assert not (tmp_path / "status.json").exists()
    assert "m2l run" not in out.getvalue()


@pytest.mark.parametrize("display_type", [PlainDisplay, JsonDisplay])
def test_line_displays_say_nothing_before_the_run_starts(
    display_type: type[PlainDisplay] | type[JsonDisplay],
) -> None:
    """Plain and JSON lines begin with RunStarted: before it there is no run name or total."""
    stream = io.StringIO()
    display = display_type(stream, wall=lambda: 0.0)
    display.show(ProgressSnapshot(state="starting"))
    assert stream.getvalue() == ""
    display.show(ProgressSnapshot(run="demo", state="running", total=3))
    assert "demo" in stream.getvalue()


@pytest.mark.anyio
async def test_display_timer_sleeps_while_the_run_is_starting(tmp_path: Path) -> None:
    """Before RunStarted the timer waits between ticks: it never spins the event loop.

    (A spinning loop burns its whole wait in CPU; a machine under load can only make that
    smaller, so this can miss a spin on a very busy machine but never fails falsely.)
    """
    model = ProgressModel(MonotonicClock())
    async with progress_display("quiet", model, run_dir=tmp_path, summary=False):
        cpu = time.thread_time()
        await anyio.sleep(0.6)
        spent = time.thread_time() - cpu
    assert spent < 0.3, f"the display timer used {spent:.2f} s of CPU in 0.6 s of waiting"
