"""Progress displays (rich dashboard, plain log lines, JSON lines, quiet) and their timer.

``make_display`` and ``progress_display`` raise ConfigError for an unknown mode. A display
that fails while the run goes on is logged once and never stops the run.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol, TextIO

import anyio
import anyio.to_thread
from rich.console import Console
from rich.file_proxy import FileProxy
from rich.live import Live

from engine.errors import BudgetExhausted, ConfigError
from engine.events import RunFinished
from engine.progress.dashboard import Dashboard
from engine.progress.lines import progress_json, progress_line
from engine.progress.model import ProgressModel
from engine.progress.snapshot import FINAL_STATES, ProgressSnapshot
from engine.progress.statusfile import StatusFileWriter
from engine.progress.summary import export_command, render_summary, summary_text

__all__ = [
    "MODES",
    "Display",
    "JsonDisplay",
    "PlainDisplay",
    "QuietDisplay",
    "RichDisplay",
    "make_display",
    "progress_display",
    "resolve_mode",
]

log = logging.getLogger(__name__)

MODES = ("auto", "rich", "plain", "json", "quiet")
RICH_MIN_INTERVAL_S = 0.25  # 4 Hz: smooth to the eye, and a person cannot read faster
PLAIN_INTERVAL_S = 10.0
JSON_INTERVAL_S = 5.0
STATUS_INTERVAL_S = 1.0
# The share of one core drawing may take: a frame that costs more than this allows at the
# display's rate (a huge terminal, a slow machine) makes the display draw less often instead.
DRAW_BUDGET = 0.01


class Display(Protocol):
    """Shows snapshots; ``show`` runs in a worker thread, never two calls at once.

    ``close`` stops the display and, with ``summary``, prints the final figures and the
    end-of-run summary; without it, it prints nothing more.
    """

    interval_s: float

    def start(self) -> None: ...

    def show(self, snapshot: ProgressSnapshot) -> None: ...

    def close(self, snapshot: ProgressSnapshot, *, run_dir: Path | None, summary: bool) -> None: ...


def resolve_mode(mode: str, *, isatty: bool) -> str:
    """The concrete display for a ``--progress`` mode: ``auto`` is rich on a terminal, else plain.

    Raises ConfigError for a mode that is not one of MODES.
    """
    if mode not in MODES:
        raise ConfigError(f"unknown progress mode {mode!r}: use one of {', '.join(MODES)}")
    if mode == "auto":
        return "rich" if isatty else "plain"
    return mode


def _summary_dir(snapshot: ProgressSnapshot, run_dir: Path | None) -> Path:
    return run_dir if run_dir is not None else Path(snapshot.run or "RUN_DIR")


class RichDisplay:
    """The live dashboard: a rich Live redrawn by our timer (auto_refresh off), then a summary."""

    def __init__(self, console: Console, *, interval_s: float = RICH_MIN_INTERVAL_S) -> None:
        self.console = console
        self.interval_s = max(interval_s, RICH_MIN_INTERVAL_S)
        # Transient: at the end the dashboard gives its place to the summary, which holds the
        # same figures, so the scrollback keeps one final picture rather than two.
        self._live = Live(console=console, auto_refresh=False, transient=True)
        self._adopted: list[tuple[logging.StreamHandler[Any], Any]] = []

    def _dashboard(self, snapshot: ProgressSnapshot) -> Dashboard:
        # The dashboard's fixed part is about 20 lines; the languages table gets the rest.
        rows = max(3, min(12, self.console.height - 20))
        return Dashboard(snapshot, max_languages=rows)

    def start(self) -> None:
        self._live.start()
        self._adopt_log_handlers()

    def _adopt_log_handlers(self) -> None:
        """Route the root logger's stream handlers through rich while the panel is up.

        Handlers made before the dashboard (``logging.basicConfig``) hold the real stderr, so
        their lines would tear the live panel; the Live has put a proxy in sys.stderr (and
        sys.stdout) that prints above the panel, so they write to that until ``close``.
        """
        for proxy in (sys.stderr, sys.stdout):
            if not isinstance(proxy, FileProxy):
                continue  # not a terminal: the Live redirected nothing
            real = proxy.rich_proxied_file
            for handler in logging.getLogger().handlers:
                if isinstance(handler, logging.StreamHandler) and handler.stream is real:
                    handler.setStream(proxy)
                    self._adopted.append((handler, real))

    def show(self, snapshot: ProgressSnapshot) -> None:
        self._live.update(self._dashboard(snapshot), refresh=True)

    def close(self, snapshot: ProgressSnapshot, *, run_dir: Path | None, summary: bool) -> None:
        for handler, stream in self._adopted:
            handler.setStream(stream)
        self._adopted.clear()
        self._live.stop()
        if summary:
            render_summary(snapshot, run_dir=_summary_dir(snapshot, run_dir), console=self.console)


class _LineDisplay:
    """One line every ``interval_s`` seconds, written by ``line``; subclasses say how."""

    def __init__(
        self,
        stream: TextIO,
        *,
        interval_s: float,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.stream = stream
        self.interval_s = interval_s
        self._wall = wall

    def start(self) -> None:
        pass

    def line(self, snapshot: ProgressSnapshot) -> str:
        raise NotImplementedError

    def show(self, snapshot: ProgressSnapshot) -> None:
        if snapshot.state == "starting":
            return  # no run name or totals yet: a line would only be zeros
        self.write(self.line(snapshot))

    def write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()


class PlainDisplay(_LineDisplay):
    """One logfmt line every ``interval_s`` seconds, then the summary as plain text."""

    def __init__(
        self,
        stream: TextIO,
        *,
        interval_s: float = PLAIN_INTERVAL_S,
        wall: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(stream, interval_s=interval_s, wall=wall)

    def line(self, snapshot: ProgressSnapshot) -> str:
        return progress_line(snapshot, wall=self._wall())

    def close(self, snapshot: ProgressSnapshot, *, run_dir: Path | None, summary: bool) -> None:
        if summary:
            self.show(snapshot)
            self.write(summary_text(snapshot, run_dir=_summary_dir(snapshot, run_dir)))


class JsonDisplay(_LineDisplay):
    """One JSON object per line every ``interval_s`` seconds; the last has ``type: summary``."""

    def __init__(
        self,
        stream: TextIO,
        *,
        interval_s: float = JSON_INTERVAL_S,
        wall: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(stream, interval_s=interval_s, wall=wall)

    def line(self, snapshot: ProgressSnapshot) -> str:
        return progress_json(snapshot, wall=self._wall())

    def close(self, snapshot: ProgressSnapshot, *, run_dir: Path | None, summary: bool) -> None:
        if not summary:
            return
        export = export_command(_summary_dir(snapshot, run_dir))
        self.write(
            progress_json(snapshot, wall=self._wall(), kind="summary", extra={"export": export})
        )


class QuietDisplay:
    """Shows nothing, not even a summary (``m2l status`` still works from the status file)."""

    interval_s = math.inf

    def start(self) -> None:
        pass

    def show(self, snapshot: ProgressSnapshot) -> None:
        pass

    def close(self, snapshot: ProgressSnapshot, *, run_dir: Path | None, summary: bool) -> None:
        pass


def make_display(
    mode: str,
    *,
    console: Console | None = None,
    stream: TextIO | None = None,
    interval_s: float | None = None,
    isatty: bool | None = None,
) -> Display:
    """The display for ``mode`` (see resolve_mode); ``isatty`` defaults to stderr's.

    The dashboard draws on ``console`` (default: a Console on stderr); plain lines go to
    ``stream`` or stderr, JSON lines to ``stream`` or stdout, where other programs read them.
    Raises ConfigError for an unknown mode.
    """
    chosen = resolve_mode(mode, isatty=sys.stderr.isatty() if isatty is None else isatty)
    if chosen == "rich":
        return RichDisplay(console or Console(stderr=True), interval_s=interval_s or 0.0)
    if chosen == "plain":
        return PlainDisplay(stream or sys.stderr, interval_s=interval_s or PLAIN_INTERVAL_S)
    if chosen == "json":
        return JsonDisplay(stream or sys.stdout, interval_s=interval_s or JSON_INTERVAL_S)
    return QuietDisplay()


class _Ticker:
    """The one timer behind a display and the status file: snapshots on the loop, I/O off it."""

    def __init__(
        self,
        model: ProgressModel,
        display: Display,
        writer: StatusFileWriter | None,
        status_interval_s: float,
    ) -> None:
        self.model = model
        self.display = display
        self.writer = writer
        self.status_interval_s = status_interval_s if writer is not None else math.inf
        self.frame_cpu_s = 0.0  # recent CPU seconds per frame (snapshot + drawing)
        self._failed: set[str] = set()

    def _display_interval(self) -> float:
        return max(self.display.interval_s, self.frame_cpu_s / DRAW_BUDGET)

    @property
    def needed(self) -> bool:
        return math.isfinite(self.display.interval_s) or math.isfinite(self.status_interval_s)

    async def run(self) -> None:
        next_show = next_status = anyio.current_time()
        while True:
            now = anyio.current_time()
            snapshot = None
            if now >= next_show:
                # The snapshot is taken here, on the loop, between two events, so it is
                # consistent without any lock on the hot path; drawing happens in a thread so
                # a slow terminal or disk never stalls the loop.
                started = time.thread_time()
                snapshot = self.model.snapshot()
                cost = time.thread_time() - started
                cost += await self._off_loop("display", self.display.show, snapshot)
                self.frame_cpu_s = (
                    cost if not self.frame_cpu_s else 0.8 * self.frame_cpu_s + 0.2 * cost
                )
                next_show = max(next_show + self._display_interval(), anyio.current_time())
            # Not before RunStarted: a second `m2l run` on the same directory stops at the
            # store's lock before that, and must not overwrite the running one's status file.
            if now >= next_status:
                if self.writer is not None and self.model.state != "starting":
                    snapshot = snapshot or self.model.snapshot()
                    await self._off_loop("status file", self.writer.write, snapshot)
                # Advanced even when nothing was written: otherwise the sleep below is zero
                # and the loop spins for as long as the run is starting.
                next_status = max(next_status + self.status_interval_s, anyio.current_time())
            await anyio.sleep(max(min(next_show, next_status) - anyio.current_time(), 0.0))

    async def _off_loop(
        self, what: str, call: Callable[[ProgressSnapshot], None], snapshot: ProgressSnapshot
    ) -> float:
        """Run ``call(snapshot)`` in a worker thread; return the CPU seconds it took."""

        def timed() -> float:
            started = time.thread_time()
            call(snapshot)
            return time.thread_time() - started

        try:
            return await anyio.to_thread.run_sync(timed)
        except Exception:
            self._report(what)
            return 0.0

    def _report(self, what: str) -> None:
        # Once per kind: a display that broke (a closed terminal, a full disk) stays broken,
        # and a log line per second would bury the run's own messages.
        if what not in self._failed:
            self._failed.add(what)
            log.warning("the progress %s failed; the run goes on without it", what, exc_info=True)

    def final(self, snapshot: ProgressSnapshot, *, run_dir: Path | None, summary: bool) -> None:
        writer = self.writer if snapshot.state != "starting" else None
        for what, call in (
            ("status file", None if writer is None else writer.write),
            ("display", lambda s: self.display.close(s, run_dir=run_dir, summary=summary)),
        ):
            if call is None:
                continue
            try:
                call(snapshot)
            except Exception:
                self._report(what)


def _ending(exc: BaseException | None, model: ProgressModel) -> tuple[str, str]:
    """How a run ended that did not say so with a RunFinished event."""
    if exc is None:
        s = model.snapshot()
        if s.total and s.finished >= s.total:
            return "finished", ""
        return "interrupted", "the run stopped before every conversation finished"
    if isinstance(
        exc, KeyboardInterrupt | asyncio.CancelledError | anyio.get_cancelled_exc_class()
    ):
        return "interrupted", "interrupted"
    if isinstance(exc, BudgetExhausted):
        return "budget_exhausted", str(exc)
    return "failed", f"{type(exc).__name__}: {exc}"


@asynccontextmanager
async def progress_display(
    mode: str,
    model: ProgressModel,
    *,
    console: Console | None = None,
    stream: TextIO | None = None,
    interval_s: float | None = None,
    run_dir: Path | None = None,
    isatty: bool | None = None,
    summary: bool = True,
    status_interval_s: float = STATUS_INTERVAL_S,
) -> AsyncIterator[Display]:
    """Show ``model`` while the block runs, write ``<run_dir>/status.json`` every second, and
    print the end-of-run summary on the way out, however the block ends.

    The timer is an asyncio task this context manager starts and awaits itself: a task group
    here would wrap the caller's own exceptions (Ctrl-C, a fatal run error) in an
    ExceptionGroup, and rich's auto-refresh thread would read the model while the loop writes
    it. If the block ends without a RunFinished event, the model is told the run was
    interrupted (Ctrl-C, cancellation), failed (an exception) or finished. Raises ConfigError
    for an unknown mode, before anything starts.
    """
    display = make_display(
        mode, console=console, stream=stream, interval_s=interval_s, isatty=isatty
    )
    writer = StatusFileWriter(run_dir) if run_dir is not None else None
    ticker = _Ticker(model, display, writer, status_interval_s)
    display.start()
    task = asyncio.create_task(ticker.run(), name="m2l progress") if ticker.needed else None
    error: BaseException | None = None
    try:
        yield display
    except BaseException as exc:
        error = exc
        raise
    finally:
        if task is not None:
            task.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.wait({task})
            if not task.cancelled() and task.exception() is not None:
                log.warning("the progress timer failed", exc_info=task.exception())
        if model.state == "starting":
            # The run never began (a bad config, a locked store): there is nothing to sum up,
            # and the error the caller is about to report says everything.
            ticker.final(model.snapshot(), run_dir=run_dir, summary=False)
        else:
            if model.state not in FINAL_STATES:
                status, message = _ending(error, model)
                model.on_event(RunFinished(status=status, message=message, t=time.monotonic()))
            ticker.final(model.snapshot(), run_dir=run_dir, summary=summary)
