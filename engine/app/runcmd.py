"""The ``m2l run`` command: config at the edge, the run inside a live progress display."""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys

from engine.app.run import RunOptions, RunReport, execute_run, exit_code
from engine.app.status import progress_options
from engine.clock import MonotonicClock
from engine.config import Config, environment, load_config
from engine.events import Hooks
from engine.progress import ProgressModel, progress_display
from engine.scheduler import RunStatus

__all__ = ["run_from_cli"]


def run_from_cli(args: argparse.Namespace) -> int:
    """Load the config, run it with progress, and return the process exit code."""
    config = load_config(args.config)
    mode, interval = progress_options(args)
    report = asyncio.run(_run(config, mode=mode, interval=interval, force=bool(args.force)))
    status = report.result.status
    if mode != "quiet":
        print(
            f"dataset: {report.dataset.path} ({report.dataset.rows} conversations, OpenAI "
            "messages form)",
            file=sys.stderr,
        )
    command = f"m2l run {shlex.quote(str(args.config))}"
    if status is RunStatus.INTERRUPTED:
        print(f"m2l: interrupted; resume with: {command}", file=sys.stderr)
    elif status is RunStatus.BUDGET_EXHAUSTED:
        print(
            f"m2l: stopped at the budget cap; raise budget.usd in {args.config}, then resume "
            f"with: {command} --force",
            file=sys.stderr,
        )
    return exit_code(status)


async def _run(config: Config, *, mode: str, interval: float | None, force: bool) -> RunReport:
    model = ProgressModel(MonotonicClock())
    async with progress_display(mode, model, interval_s=interval, run_dir=config.run_dir):
        report = await execute_run(
            config,
            env=environment(),
            hooks=Hooks([model]),
            options=RunOptions(force=force),
            baseline=model.load_baseline,
        )
    return report
