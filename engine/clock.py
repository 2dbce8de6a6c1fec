"""Clocks: the engine reads time through one of these so pure logic can be tested without sleeps."""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Clock", "FakeClock", "MonotonicClock"]


class Clock(Protocol):
    """A source of monotonic seconds."""

    def now(self) -> float: ...


class MonotonicClock:
    """The real clock: ``time.monotonic``, which is also what asyncio's loop.time() uses."""

    __slots__ = ()

    def now(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock that only moves when a test says so."""

    __slots__ = ("_t",)

    def __init__(self, start: float = 0.0) -> None:
        self._t = start

    def now(self) -> float:
        return self._t

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._t += seconds
