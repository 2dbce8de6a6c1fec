"""The ``m2l run`` command: config at the edge, the run inside a live progress display."""

from __future__ import annotations

import argparse
import asyncio

from engine.clock import MonotonicClock
from engine.config import Config, environment, load_config
from engine.events import Hooks
from engine.progress import ProgressModel, progress_display, progress_options
from engine.run import RunOptions, execute_run, exit_code

__all__ = ["run_from_cli"]


def run_from_cli(args: argparse.Namespace) -> int:
    """Load the config, run it with progress, and return the process exit code."""
    config = load_config(args.config)
    mode, interval = progress_options(args)
    return asyncio.run(_run(config, mode=mode, interval=interval, force=bool(args.force)))


async def _run(config: Config, *, mode: str, interval: float | None, force: bool) -> int:
    model = ProgressModel(MonotonicClock())
    async with progress_display(mode, model, interval_s=interval, run_dir=config.run_dir):
        report = await execute_run(
            config,
            env=environment(),
            hooks=Hooks([model]),
            options=RunOptions(force=force),
            baseline=model.load_baseline,
        )
    return exit_code(report.result.status)
