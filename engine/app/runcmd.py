"""The ``m2l run`` command: config at the edge, the run inside a live progress display."""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys

from engine.app import eventloop
from engine.app.estimate import selection_lines
from engine.app.run import RunOptions, RunReport, cancel_batches, execute_run, exit_code
from engine.app.status import progress_options
from engine.clock import MonotonicClock
from engine.config import Config, environment, load_config
from engine.errors import ConfigError
from engine.events import Hooks
from engine.progress import ProgressModel, progress_display
from engine.progress.summary import budget_next_step, continue_command
from engine.scheduler import RunStatus
from state.setup import SetupReport

__all__ = ["run_from_cli"]


def run_from_cli(args: argparse.Namespace) -> int:
    """Load the config, run it with progress, and return the process exit code."""
    config = load_config(args.config)
    if getattr(args, "cancel_batches", False):
        return _cancel_batches(config, args)
    mode, interval = progress_options(args)
    options = RunOptions(force=bool(args.force), retry_failed=bool(args.retry_failed))
    ray = getattr(args, "ray", None)
    shards = getattr(args, "shards", None)
    if ray is None and shards is not None:
        raise ConfigError("--shards is for a sharded run: add --ray")
    sharding = None if ray is None else (ray or None, shards)
    command = continue_command(str(args.config))
    try:
        report = eventloop.run(
            _run(config, mode=mode, interval=interval, options=options, sharding=sharding),
            args.loop,
        )
    except KeyboardInterrupt:
        # Ctrl-C before the run's own handler is installed or after it is removed (set-up, the
        # end-of-run export): what was journaled is kept, so the hint is the same.
        print(f"m2l: interrupted; resume with: {command}", file=sys.stderr)
        return exit_code(RunStatus.INTERRUPTED)
    status = report.result.status
    if mode != "quiet" and report.dataset is not None:
        print(
            f"dataset: {report.dataset.path} ({report.dataset.rows} conversations, OpenAI "
            "messages form)",
            file=sys.stderr,
        )
    if status is RunStatus.FAILED and mode == "quiet":
        # Every other mode ends with the summary, which says why; quiet still must.
        print(f"m2l: the run failed: {report.result.message}", file=sys.stderr)
    elif status is RunStatus.INTERRUPTED:
        print(f"m2l: interrupted; resume with: {command}", file=sys.stderr)
    elif status is RunStatus.BUDGET_EXHAUSTED:
        step = budget_next_step(report.result.message, str(args.config))
        print(f"m2l: stopped at the budget cap; {step}", file=sys.stderr)
    return exit_code(status)


def _cancel_batches(config: Config, args: argparse.Namespace) -> int:
    """`m2l run CONFIG --cancel-batches`: cancel the run's open batches, generate nothing."""
    cancelled = asyncio.run(cancel_batches(config, env=environment()))
    command = f"m2l run {shlex.quote(str(args.config))}"
    if not cancelled:
        print(f"m2l: run {config.run.name!r} has no batch open on the provider", file=sys.stderr)
        return 0
    for batch_id, status in cancelled:
        print(f"{batch_id}: {status}")
    print(
        f"m2l: {len(cancelled)} batches cancelled; what they finished is kept: resume with "
        f"{command}",
        file=sys.stderr,
    )
    return 0


def _print_setup(setup: SetupReport) -> None:
    """What a new run selected: seeds asked / available / taken per language, unknown sources."""
    lines = [f"m2l: {line}" for line in setup.ingest.lines()[1:]]
    lines += [f"m2l: {line}" for line in selection_lines(setup.selection, every=False)]
    print("\n".join(lines), file=sys.stderr, flush=True)


async def _run(
    config: Config,
    *,
    mode: str,
    interval: float | None,
    options: RunOptions,
    sharding: tuple[str | None, int | None] | None = None,
) -> RunReport:
    model = ProgressModel(MonotonicClock())
    if sharding is not None:
        from engine.app.rayrun import execute_sharded, require_ray

        require_ray()  # before the display starts: a missing extra is one clear line
        address, shards = sharding
        async with progress_display(mode, model, interval_s=interval, run_dir=config.run_dir):
            return await execute_sharded(
                config,
                env=environment(),
                address=address,
                shards=shards,
                hooks=Hooks([model]),
                options=options,
                baseline=model.load_baseline,
                on_setup=_print_setup if mode != "quiet" else None,
                final=model.load_final,
                forward_events=mode != "quiet",
            )
    async with progress_display(mode, model, interval_s=interval, run_dir=config.run_dir):
        report = await execute_run(
            config,
            env=environment(),
            hooks=Hooks([model]),
            options=options,
            baseline=model.load_baseline,
            on_setup=_print_setup if mode != "quiet" else None,
            final=model.load_final,
        )
    return report
