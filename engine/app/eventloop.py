"""The event loop a command runs on: uvloop when it is installed (the ``m2l[fast]`` extra), else
asyncio's own; ``--loop`` picks one. Raises ConfigError (engine.errors) when uvloop is asked for
and not installed.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar

from engine.errors import ConfigError

__all__ = ["LOOPS", "add_loop_option", "loop_factory", "run"]

T = TypeVar("T")

LOOPS: Final = ("auto", "asyncio", "uvloop")


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop factory for ``choice`` (None: asyncio's default loop); raises ConfigError."""
    if choice not in LOOPS:
        raise ConfigError(f"--loop {choice!r}: choose one of {', '.join(LOOPS)}")
    if choice == "asyncio":
        return None
    try:
        # By name: an optional extra, so neither the core install nor mypy needs it.
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        if choice == "uvloop":
            raise ConfigError(
                "--loop uvloop: uvloop is not installed; install it with "
                "`pip install 'm2l[fast]'`, or leave --loop at auto"
            ) from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T], choice: str = "auto") -> T:
    """Run ``main`` to its end on a new loop of the chosen kind, as ``asyncio.run`` does."""
    try:
        factory = loop_factory(choice)
    except ConfigError:
        main.close()  # never started: no "coroutine was never awaited" warning
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def add_loop_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--loop`` to a command that runs an event loop."""
    parser.add_argument(
        "--loop",
        choices=LOOPS,
        default="auto",
        help="event loop: auto (uvloop when installed, `pip install 'm2l[fast]'`; it costs "
        "less CPU per request), asyncio, or uvloop (an error when it is not installed)",
    )
