"""An asyncio event loop on virtual time: when nothing is ready to run, the clock jumps to the
next timer instead of sleeping, so tests of timeouts, grace periods and backoff run in
milliseconds and see exact times. Real I/O still works (it is polled, never waited for while
a timer is due); with no timer at all the loop blocks on I/O as usual.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["VirtualTimeLoop", "run_virtual"]

T = TypeVar("T")


class _JumpingSelector:
    """Wraps the loop's selector: a wait with a timeout polls, then jumps the clock instead."""

    def __init__(self, real: selectors.BaseSelector, loop: VirtualTimeLoop) -> None:
        self._real = real
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            return self._real.select(None)
        events = self._real.select(0)
        if not events and timeout > 0:
            self._loop.advance(timeout)
        return events

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """``time()`` is virtual seconds from 0; it moves only when the loop would otherwise wait."""

    def __init__(self) -> None:
        super().__init__()
        self._virtual = 0.0
        self._selector = _JumpingSelector(self._selector, self)  # type: ignore[has-type]

    def time(self) -> float:
        return self._virtual

    def advance(self, seconds: float) -> None:
        self._virtual += seconds


def run_virtual(coro: Coroutine[Any, Any, T]) -> tuple[T, float]:
    """Run ``coro`` to its end on a fresh virtual-time loop; (its result, virtual seconds)."""
    loop = VirtualTimeLoop()
    try:
        result = loop.run_until_complete(coro)
        return result, loop.time()
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
