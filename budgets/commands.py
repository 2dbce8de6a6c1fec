"""``m2l estimate CONFIG [--pilot N] [--json]``: what a run will cost before it spends anything.

The handler returns an exit code; ConfigError and StateError propagate to the CLI's error
handling (exit 2).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from budgets.estimate import estimate_run, run_pilot
from engine.config import environment, load_config

__all__ = ["add_estimate_parser", "run_estimate"]


def add_estimate_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``estimate`` to a CLI; it sets ``func`` to its handler."""
    p = subparsers.add_parser(
        "estimate",
        help="project a run's requests, tokens, cost and wall time before it starts",
        description=(
            "Plan the run CONFIG describes (in memory: nothing is written) and project its "
            "requests, tokens, cost and wall time at the configured limits. Reply lengths are "
            "an assumption, shown with the result; --pilot N runs N real conversations (the "
            "simulator when no API key is set) and projects the cost from them with a 95% "
            "interval. A pilot against a real provider spends real money."
        ),
    )
    p.add_argument("config", type=Path, help="the run's TOML config")
    p.add_argument(
        "--pilot",
        type=int,
        default=0,
        metavar="N",
        help="also run N conversations into a temporary directory and extrapolate",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_estimate)


def run_estimate(args: argparse.Namespace) -> int:
    """Print the estimate (and the pilot's projection); returns an exit code."""
    config = load_config(args.config)
    env = environment()
    simulated = config.uses_simulator(env)
    estimate = estimate_run(config, simulated=simulated)
    pilot = None
    if args.pilot:
        if not args.json:
            where = "the simulator" if simulated else f"{config.provider.base_url} (real money)"
            print(f"running a pilot of {args.pilot} conversations against {where} ...")
            sys.stdout.flush()
        pilot = asyncio.run(
            run_pilot(
                config,
                args.pilot,
                env=env,
                population=estimate.conversations,
                price=estimate.price,
            )
        )
    if args.json:
        data: dict[str, Any] = estimate.to_json()
        data["pilot"] = pilot.to_json() if pilot is not None else None
        print(json.dumps(data, ensure_ascii=False, indent=2))
        return 0
    for line in estimate.lines():
        print(line)
    if pilot is not None:
        for line in pilot.lines(estimate.outputs):
            print(line)
    return 0
