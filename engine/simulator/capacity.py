"""The simulator's server-capacity model: parallel slots, batch slowdown and a queue.

A self-hosted LLM server (vLLM, SGLang, TGI, llama.cpp) decodes up to ``slots`` requests at once;
each step of a bigger batch takes longer, so every slot decodes slower as more are busy, while
the server's total throughput still grows (it flattens as the batch fills). Requests beyond the
slots wait in a first-come queue; with a bounded queue, one that arrives when it is full is
refused (the shell answers 503, as vLLM's and TGI's routers do when overloaded).

A request's work is its unloaded latency in seconds (what the latency model gives for one busy
slot). With ``b`` slots busy, each progresses at ``1 / (1 + (slowdown - 1) * (b - 1) / (slots -
1))`` seconds of work per second: one slot runs at full speed and a full batch takes
``slowdown`` times as long per request. ``SlotModel`` is pure (time from an injected Clock);
``Slots`` is its async shell: one timer, futures woken when their request finishes.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque

from engine.clock import Clock

__all__ = ["QueueFull", "SlotModel", "Slots"]

# Work left below this is done (float rounding of progress times speed).
_EPS_S = 1e-9


class QueueFull(Exception):
    """Every slot is busy and the queue is at its bound: the request is refused."""


class SlotModel:
    """Slots that share a batch slowdown, and a FIFO queue in front of them."""

    __slots__ = (
        "_clock",
        "_last",
        "_next",
        "_queue",
        "_queue_limit",
        "_running",
        "_slots",
        "_slowdown",
    )

    def __init__(
        self, clock: Clock, *, slots: int, slowdown: float = 1.5, queue_limit: int | None = None
    ) -> None:
        if slots < 1:
            raise ValueError("a server has at least one slot")
        if not (math.isfinite(slowdown) and slowdown >= 1.0):
            raise ValueError("the full-batch slowdown is a factor >= 1")
        if queue_limit is not None and queue_limit < 0:
            raise ValueError("the queue bound cannot be negative")
        self._clock = clock
        self._slots = slots
        self._slowdown = slowdown
        self._queue_limit = queue_limit
        self._running: dict[int, float] = {}  # job -> work left, in unloaded seconds
        self._queue: deque[tuple[int, float]] = deque()
        self._next = 0
        self._last = clock.now()

    @property
    def busy(self) -> int:
        return len(self._running)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def speed(self, busy: int) -> float:
        """Seconds of work each busy slot does per second when ``busy`` slots are busy."""
        if self._slots == 1 or busy <= 1:
            return 1.0
        return 1.0 / (1.0 + (self._slowdown - 1.0) * (busy - 1) / (self._slots - 1))

    def submit(self, work_s: float) -> int:
        """Take a request needing ``work_s`` seconds of work; its job id. Raises QueueFull."""
        self._advance()
        if len(self._running) >= self._slots and (
            self._queue_limit is not None and len(self._queue) >= self._queue_limit
        ):
            raise QueueFull(f"all {self._slots} slots busy and {len(self._queue)} queued")
        job = self._next
        self._next += 1
        self._queue.append((job, max(0.0, work_s)))
        self._start_queued()
        return job

    def cancel(self, job: int) -> None:
        """The client went away: free its slot or its place in the queue (no-op if finished)."""
        self._advance()
        if self._running.pop(job, None) is None:
            self._queue = deque(item for item in self._queue if item[0] != job)
        self._start_queued()

    def poll(self) -> list[int]:
        """The jobs finished by now, in the order they finished; queued ones take their slots."""
        self._advance()
        done = [job for job, left in self._running.items() if left <= _EPS_S]
        for job in done:
            del self._running[job]
        self._start_queued()
        return done

    def next_finish_at(self) -> float | None:
        """Clock time when the next running job finishes; None when none runs."""
        if not self._running:
            return None
        self._advance()
        return self._last + min(self._running.values()) / self.speed(len(self._running))

    def _advance(self) -> None:
        now = self._clock.now()
        elapsed = now - self._last
        self._last = now
        if elapsed <= 0 or not self._running:
            return
        done = elapsed * self.speed(len(self._running))
        for job in self._running:
            self._running[job] -= done

    def _start_queued(self) -> None:
        while self._queue and len(self._running) < self._slots:
            job, work = self._queue.popleft()
            self._running[job] = work


class Slots:
    """The async shell: ``await slots.run(work_s)`` returns once the model finished the request."""

    __slots__ = ("_clock", "_loop", "_model", "_timer", "_waiters")

    def __init__(self, model: SlotModel, clock: Clock) -> None:
        self._model = model
        self._clock = clock
        self._waiters: dict[int, asyncio.Future[None]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def model(self) -> SlotModel:
        return self._model

    async def run(self, work_s: float) -> None:
        """Wait in the queue and a slot until the work is done; raises QueueFull at once."""
        loop = self._loop = asyncio.get_running_loop()
        job = self._model.submit(work_s)
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters[job] = fut
        self._wake()
        try:
            await fut
        finally:
            if self._waiters.pop(job, None) is not None:
                # Cancelled (the client hung up): the server stops working on it.
                self._model.cancel(job)
                self._wake()

    def _on_timer(self) -> None:
        self._timer = None
        self._wake()

    def _wake(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for job in self._model.poll():
            fut = self._waiters.pop(job, None)
            if fut is not None and not fut.done():
                fut.set_result(None)
        at = self._model.next_finish_at()
        if at is not None and self._loop is not None:
            delay = max(0.0, at - self._clock.now())
            self._timer = self._loop.call_at(self._loop.time() + delay, self._on_timer)
