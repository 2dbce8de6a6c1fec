"""selfhosted.py's workload on a virtual clock: the concurrency core against the slot model.

The same core (``engine._adaptive``) and the same capacity model (``engine.simulator.capacity``)
as the real-time bench, driven event by event on a FakeClock, so the figures show the
controller alone: no machine load, no Python turnaround other than the one set here. A
request reaches the server ``turnaround`` seconds after it is sent (the client's and the
network's part of a slot's cycle, during which that slot would sit idle), and one in flight
longer than the read timeout is cut, counted and sent again, as the client does.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from engine._adaptive import ConcurrencyCore, Flight
from engine.clock import FakeClock
from engine.simulator.capacity import SlotModel

__all__ = ["VirtualRun", "drive_virtual", "percentile"]


@dataclass
class VirtualRun:
    replies: int = 0
    seconds: float = 0.0
    timeouts: int = 0
    latencies: list[float] = field(default_factory=list, repr=False)
    limit_end: int = 0

    @property
    def per_s(self) -> float:
        return self.replies / self.seconds if self.seconds else 0.0


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by rank, as the real-time bench takes it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def drive_virtual(
    make_core: Callable[[FakeClock], ConcurrencyCore],
    *,
    slots: int,
    seconds: float,
    seed: int,
    callers: int = 512,
    turnaround: float = 0.02,
    timeout_s: float = 20.0,
    slowdown: float = 1.5,
    ttft_s: float = 0.05,
    per_token_s: float = 0.002,
    jitter: float = 0.1,
    tokens: tuple[int, int] = (20, 200),
) -> VirtualRun:
    """``callers`` closed-loop senders for ``seconds`` of virtual time; replies as the bench's
    simulator makes them (``ttft_s + per_token_s * tokens``, jittered, at one busy slot)."""
    rng = random.Random(seed)
    clock = FakeClock()
    core = make_core(clock)
    model = SlotModel(clock, slots=slots, slowdown=slowdown)
    out = VirtualRun(seconds=seconds)
    transit: list[tuple[float, int]] = []  # (arrival at the server, seq), in send order
    live: dict[int, tuple[Flight, int, float]] = {}  # seq -> flight, tokens, work
    jobs: dict[int, int] = {}  # server job -> seq
    at_server: dict[int, int] = {}  # seq -> server job
    deadlines: list[tuple[float, int]] = []
    end = seconds
    while True:
        while core.can_send() and len(live) < callers:
            flight = core.send()
            n = rng.randint(*tokens)
            work = (ttft_s + per_token_s * n) * (1.0 + jitter * (2.0 * rng.random() - 1.0))
            live[flight.seq] = (flight, n, work)
            transit.append((clock.now() + turnaround, flight.seq))
            heapq.heappush(deadlines, (clock.now() + timeout_s, flight.seq))
        while deadlines and deadlines[0][1] not in live:
            heapq.heappop(deadlines)
        candidates = [t for t in (model.next_finish_at(),) if t is not None]
        if transit:
            candidates.append(transit[0][0])
        if deadlines:
            candidates.append(deadlines[0][0])
        at = min(candidates)
        if at > end:
            out.limit_end = core.limit
            return out
        clock.advance(max(0.0, at - clock.now()))
        now = clock.now()
        while transit and transit[0][0] <= now:
            _, seq = transit.pop(0)
            if seq in live:
                job = model.submit(live[seq][2])
                jobs[job], at_server[seq] = seq, job
        for job in model.poll():
            seq = jobs.pop(job)
            del at_server[seq]
            flight, n, _ = live.pop(seq)
            out.latencies.append(now - flight.t)
            out.replies += 1
            core.succeeded(flight, n)
        while deadlines and deadlines[0][0] <= now:
            _, seq = heapq.heappop(deadlines)
            if seq not in live:
                continue
            flight, _, _ = live.pop(seq)
            job = at_server.pop(seq, -1)
            if job >= 0:
                jobs.pop(job, None)
                model.cancel(job)  # the client hung up: the server drops it
            transit = [item for item in transit if item[1] != seq]
            out.timeouts += 1
            core.overloaded(flight)
