"""The adaptive concurrency limit's pure core: how many requests may be at the server at once.

Self-hosted servers (vLLM, SGLang, TGI, llama.cpp) send no rate-limit headers; their capacity is
a number of parallel slots, and the throughput of a batching server flattens as the batch grows.
Past the slots, extra requests only wait in the server's queue: latency grows in proportion and
throughput does not. The core finds the knee by hill climbing on measured latency (the idea of
TCP Vegas and of gradient limiters in service meshes, judged on the marginal gain):

- Latency is measured per window of replies sent at one limit, as the median of seconds per
  output token (plus a fixed overhead), so long and short replies compare; or per reply,
  once the replies of a run show that their length explains next to none of their latency's
  spread within a window (a server answering in a fixed time, where seconds per token would
  differ twentyfold between short and long replies and bury a queue in noise).
- Throughput at a limit is ``in flight / latency`` (Little's law). A step to a higher limit is
  kept when it raises throughput by at least half as much as it raised concurrency, and the
  median stays within ``tolerance`` of the unloaded floor; otherwise the limit goes back.
- Slow start doubles the limit per step, judged on the replies to the first half of its
  window (about one round trip a step). The first reply alone moves 1 to 2 (the first reply
  at two, unqueued on any server, is the floor's second sample); the step from 2 to 4 waits
  for four replies unless the first two both came back at the floor's pace, since on one
  slot the second waited. A failed step from one request is the knee, never a near miss.
  From 16 up, a doubling that scaled nearly perfectly (gain >= 0.8) is followed by a
  quadrupling (a big server's batch is far from full) while the quadrupled window's first
  half still fits in ``max_samples``. A quadrupling that fails goes back and doubles; a
  doubling whose gain thins below 0.75, or whose latency passes the middle of the tolerated
  band, ends slow start at the new limit.
- Afterwards probes step by a quarter and are judged on a whole window of at least eight
  replies (its first replies, the ones that got a slot first, hide the queue a few added
  requests make). A probe that scales nearly perfectly with latency in the lower half of the
  band resumes slow start. A step (of a fifth or more) that gained next to nothing, or
  whose latency shows a queue, found the knee: the next probe waits 128 replies'
  worth of windows (32 against one slot, 4 against 64), doubling after each rejection (a
  probe queues requests at the server, which latency pays for); a near miss is tried again
  after 1, 2, 4... windows.
- Once slow start is over, ``headroom`` more requests (an eighth of the last accepted limit,
  rounded down, and at least one) are let go beyond the limit: they wait at the server, so a
  slot does not sit idle while m2l turns a reply around and sends the next request (TCP
  Vegas keeps one to three packets queued for the same reason). Against one slot that is one
  request waiting, as a fixed cap of 2: its latency doubles, within the timeout guard below,
  for the turnaround's share of throughput. Windows and probes measure with it in flight.
- 503s (overloaded) or timeouts of requests sent since the last cut halve the limit once they
  are more than stray faults; a median that drifts past the tolerance (scaled by the headroom's
  share, whose queue is there by design; a server shared with others) cuts toward it, first
  back to the limit before the last kept step.

Latency is counted from the send to the reply as the client sees it, less the client's own
delay: ``loop_lag`` probes (how late a timer ran on the client's event loop) keep a moving
average, and a reply is taken to have waited that long for the loop after the server
answered, and through every stall (lateness past the average) while it was in flight; a
sample that discount alone puts below the floor is held at the floor. Without it a CPU-bound
or starved client reads its own lag, which grows with the requests in flight, as the
server's queue.

Independently of the limit, the timeout guard keeps a request from being sent into a queue it
cannot get through in time: with the server's throughput X (replies per second while busy), the
n-th request in flight waits about n / X, so at most ``X * timeout * margin`` (rounded to the
nearest) are sent at once.
X counts replies per busy second from the first request on, up to now (so it sinks while a
reply is overdue); before the first reply at most two go out, which one slot answering in
half the timeout gets through. It also applies to a fixed ``max_inflight``.

Time comes from an injected Clock and nothing here awaits, so tests drive it with a FakeClock;
``engine.concurrency`` is its async shell. Raises ConfigError for impossible settings.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from statistics import median

from engine.clock import Clock
from engine.errors import ConfigError

__all__ = ["AdaptiveSettings", "ConcurrencyCore", "ConcurrencyStats", "Flight"]


@dataclass(frozen=True, slots=True)
class AdaptiveSettings:
    """Tuning of the adaptive limit; the defaults suit LLM servers. Raises ConfigError."""

    initial: int = 1  # start where latency is the unloaded floor by definition
    max_limit: int = 1024
    min_samples: int = 4  # replies per window at small limits...
    slow_start_samples: int = 2  # ...and per slow-start step, judged on its first half
    max_samples: int = 32  # ...and at most this many at large ones
    # A probe is kept when its throughput gain is at least this fraction of its concurrency gain.
    min_efficiency: float = 0.5
    # Window median latency above this multiple of the unloaded floor is queueing, not batching.
    tolerance: float = 1.8
    overload_factor: float = 0.5  # limit kept after a 503 or a timeout
    # Share of the settled limit let go beyond it (rounded down) to queue at the server and
    # hide m2l's turnaround between a reply and the next request; 0 turns it off.
    headroom: float = 0.125
    max_probe_wait: int = 128  # windows between probes, at most, after repeated rejections
    timeout_margin: float = 0.5  # fraction of the read timeout a request may spend queued
    # Output tokens a reply's fixed cost (prefill, network) is worth when normalising latency.
    token_overhead: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.initial <= self.max_limit:
            raise ConfigError(
                f"adaptive concurrency: initial={self.initial} must be in 1..max_limit"
            )
        if not 1 <= self.min_samples <= self.max_samples:
            raise ConfigError("adaptive concurrency: need 1 <= min_samples <= max_samples")
        if not 1 <= self.slow_start_samples <= self.max_samples:
            raise ConfigError("adaptive concurrency: need 1 <= slow_start_samples <= max_samples")
        if not 0.0 <= self.headroom <= 1.0:
            raise ConfigError("adaptive concurrency: headroom must be in [0, 1]")
        if not 0.0 < self.min_efficiency < 1.0:
            raise ConfigError("adaptive concurrency: min_efficiency must be in (0, 1)")
        if not self.tolerance > 1.0:
            raise ConfigError("adaptive concurrency: tolerance must be above 1")
        if not 0.0 < self.overload_factor < 1.0:
            raise ConfigError("adaptive concurrency: overload_factor must be in (0, 1)")
        if not 0.0 < self.timeout_margin <= 1.0:
            raise ConfigError("adaptive concurrency: timeout_margin must be in (0, 1]")
        if self.max_probe_wait < 1 or self.token_overhead < 0:
            raise ConfigError("adaptive concurrency: max_probe_wait >= 1, token_overhead >= 0")


@dataclass(frozen=True, slots=True)
class Flight:
    """One request at the server: its send order, send time and the limit epoch it went in,
    and the loop's stalls counted until then (see ConcurrencyCore.loop_lag)."""

    seq: int
    t: float
    epoch: int
    stalls: float = 0.0


@dataclass(frozen=True, slots=True)
class ConcurrencyStats:
    """A snapshot for displays; ``allowed`` is the limit plus its headroom, capped by the
    timeout guard (``guard``, None until measured)."""

    adaptive: bool
    limit: int
    allowed: int
    in_flight: int
    guard: int | None
    floor_s_per_token: float | None
    throughput_per_s: float | None
    slow_start: bool
    overloads: int
    loop_lag_s: float = 0.0  # the client's event loop lateness (moving average)


# Overload answers cut the limit only when they are this share of a window's outcomes (and at
# least two): a server that is full answers many of them, a stray 503 or hang is one.
_OVERLOAD_SHARE = 0.05
# A doubling whose efficiency falls below this ends slow start: the batch is nearly full.
_SLOW_START_EXIT = 0.75
# ...judged only from this limit up: below it a window is a few replies, and noise rules.
_SLOW_START_MIN = 8
# A kept doubling from this limit up with at least this efficiency is followed by a quadrupling.
_FAST_FROM = 16
_FAST_GAIN = 0.8
# The step from 1 to 2 is judged on two replies when both took at most this multiple of the floor.
_PAIR_TOLERANCE = 1.15
# A rejected step of at least _BIG_STEP times the requests in flight whose efficiency is below
# _KNEE_EFF (or whose latency shows a queue) found the knee: the next probe waits at least
# _EXIT_REPLIES replies' worth of windows. Smaller steps measure efficiency too roughly to tell.
_KNEE_EFF = 0.4
_BIG_STEP = 1.2
_EXIT_REPLIES = 128
_PROBE_SAMPLES = 8  # replies a probe after slow start is judged on, at least
_MIN_HEADROOM = 1  # requests let wait at the server beyond the settled limit, at least
# Requests in flight before the first reply has measured the server, under the timeout guard.
_GUARD_START = 2
_GUARD_RING = 64  # successes the server's throughput is measured over
# A reply waits for the event loop about this many times a timer's lateness after the server
# answered (the socket read, then the task's wake-up: measured 1.3-4x, about 2, against a 20 ms
# server with 1-64 requests in flight and 0-3 ms of client CPU per reply). The low end: a lag
# taken out that the reply did not wait would hide that much of a server queue.
_LAG_STEPS = 1.0
_LAG_WEIGHT = 0.1  # weight of each lateness probe in the loop lag's moving average
# Units latency is compared in: seconds per output token (token_overhead added), or per reply.
_PER_TOKEN, _PER_REPLY = 0, 1
# Per reply once replies of windows of two or more, at least _UNIT_SAMPLES of them, show the
# reply's length explaining less than _UNIT_R2 of their latency's spread within a window.
_UNIT_SAMPLES = 8
_UNIT_R2 = 0.1


class ConcurrencyCore:
    """Decides how many requests may be in flight; ``fixed`` pins the limit (no adaptation)."""

    __slots__ = (
        "_backoff",
        "_base_cap",
        "_base_limit",
        "_base_r",
        "_busy_cum",
        "_busy_since",
        "_clock",
        "_cut_seq",
        "_epoch",
        "_fixed",
        "_floor",
        "_gain",
        "_in_flight",
        "_lag",
        "_limit",
        "_next_seq",
        "_overloads",
        "_peak",
        "_pooled",
        "_provisional",
        "_ring",
        "_samples",
        "_settings",
        "_skip",
        "_slow_start",
        "_slow_windows",
        "_stalls",
        "_strikes",
        "_sxx",
        "_sxy",
        "_syy",
        "_timeout_s",
        "_undo",
        "_unit",
        "_wait",
    )

    def __init__(
        self,
        clock: Clock,
        *,
        fixed: int | None = None,
        timeout_s: float | None = None,
        settings: AdaptiveSettings | None = None,
    ) -> None:
        if fixed is not None and fixed < 1:
            raise ConfigError(f"limits.max_inflight must be at least 1, got {fixed}")
        if timeout_s is not None and not timeout_s > 0:
            raise ConfigError(f"the read timeout must be positive, got {timeout_s}")
        self._clock = clock
        self._settings = s = settings or AdaptiveSettings()
        self._fixed = fixed
        self._timeout_s = timeout_s
        self._limit = fixed if fixed is not None else s.initial
        self._slow_start = fixed is None
        self._base_limit = self._limit  # the last limit whose window was accepted
        # Latency is judged per output token (``token_overhead`` added) or per reply, whichever
        # the server's latency follows (see _judge_unit); both are kept, so a switch is exact.
        self._unit = _PER_TOKEN
        self._base_r: list[float | None] = [None, None]  # the base window's median, per unit
        self._base_cap = self._limit  # requests allowed in flight when _base_r was measured
        self._floor: list[float | None] = [None, None]  # the lowest window median: unloaded
        # Within-window sums that tell whether latency follows the reply's length (see _pool).
        self._sxx = self._sxy = self._syy = 0.0
        self._pooled = 0
        self._undo = 0  # the base limit before the last kept step up (0: none to undo)
        self._provisional = fixed is None  # the floor is one reply's yet (see succeeded)
        self._gain = 0.0  # the efficiency of the last step up that was kept
        self._epoch = 0
        self._samples: list[tuple[float, float, int]] = []  # (s per token, s per reply, tokens)
        self._peak = 0  # most requests in flight at once during this epoch
        self._skip = False  # the next window still waits behind requests of a higher limit
        self._wait = 0  # windows still to hold before the next probe
        self._backoff = 1  # the wait after the next rejected probe
        self._next_seq = 0
        self._cut_seq = 0  # overloads of requests sent before this were already answered
        self._overloads = 0
        self._strikes = 0  # overload answers in this window, not yet acted on
        self._slow_windows = 0  # windows in a row slower than the tolerance at the base limit
        self._in_flight = 0
        self._lag = 0.0  # the event loop's lateness, a moving average of loop_lag probes
        self._stalls = 0.0  # lateness beyond that average, summed over all probes
        self._busy_cum = 0.0  # seconds with at least one request in flight, before _busy_since
        self._busy_since = 0.0
        # Busy time at each success, after the start's zero: the k-th success after the first
        # send measures the server from its first reply on (k replies in so many busy seconds).
        self._ring: deque[float] = deque([0.0], maxlen=_GUARD_RING + 1)

    # --- admission --------------------------------------------------------------------------

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def allowed(self) -> int:
        """How many may be in flight now: the limit and its headroom, or less when the timeout
        guard says so."""
        cap = self._cap()
        guard = self._guard()
        return cap if guard is None else min(cap, guard)

    def can_send(self) -> bool:
        return self._in_flight < self.allowed()

    def send(self) -> Flight:
        """Record a request going out now (the caller checked ``can_send``)."""
        now = self._clock.now()
        if self._in_flight == 0:
            self._busy_since = now
        self._in_flight += 1
        self._peak = max(self._peak, self._in_flight)
        flight = Flight(self._next_seq, now, self._epoch, self._stalls)
        self._next_seq += 1
        return flight

    def sent(self, flight: Flight) -> Flight:
        """The request left for the server now (it may have waited for the rate limiter, or
        for the request log, since it took its slot): latency is counted from here, so those
        waits are not queueing."""
        return Flight(flight.seq, self._clock.now(), flight.epoch, self._stalls)

    # --- outcomes ---------------------------------------------------------------------------

    def succeeded(self, flight: Flight, completion_tokens: int) -> None:
        """A reply came back: a latency sample for the window of the epoch it was sent in."""
        now = self._land()
        self._ring.append(self._busy_time(now))
        if self._fixed is not None or flight.epoch != self._epoch:
            return  # sent at another limit: it says nothing about this one
        tokens = max(0, completion_tokens) + self._settings.token_overhead
        raw = max(0.0, now - flight.t)
        # The time from send to reply includes the client's own delay: each of the few loop
        # steps a request takes after the server answered waits for the callbacks ahead of it
        # (a CPU-bound client, or one the machine starves). That grows with the requests in
        # flight just as a server queue does, and read as one it held auto at a few requests
        # against an unlimited server. It is taken out, as _LAG_STEPS times the loop's
        # measured lateness; but a sample the discount alone puts below the floor is held at
        # the floor, so an overestimate of the lag can hide a queue, never lower the floor.
        lag = _LAG_STEPS * self._lag + (self._stalls - flight.stalls)
        server = max(0.0, raw - lag)
        sample = [server / tokens, server]
        for unit, floor in enumerate(self._floor):
            if floor is None or sample[unit] < floor:
                # Only the raw latency may set or lower the floor (nothing to hold it at yet,
                # or the discount took it below): an overestimated lag must not make every
                # later sample look queued.
                raw_sample = raw / (tokens if unit == _PER_TOKEN else 1)
                sample[unit] = raw_sample if floor is None else min(raw_sample, floor)
        self._samples.append((sample[0], sample[1], tokens))
        s = self._settings
        if self._provisional and self._slow_start and self._limit == 2:
            # Two went out at once when the first reply came back: whichever comes first did
            # not queue, even behind a single slot. The floor is the lower of the two samples
            # (the lower the floor, the sooner latency reads as a queue: the safe side).
            self._provisional = False
            for unit, floor in enumerate(self._floor):
                if floor is not None:
                    self._floor[unit] = self._base_r[unit] = min(floor, sample[unit])
        if self._slow_start:
            # A slow-start step is judged on the replies to the first half of its window,
            # which went out at once, so that each doubling takes about one round trip; on as
            # few as slow_start_samples. Except the step from one to two: on a single slot its
            # replies are one alone and one queued behind it, and two replies of different
            # lengths can look unqueued.
            least = s.slow_start_samples
            if self._limit == 1:
                # The first reply alone sets the floor and moves on (at 64 slots every round
                # trip at one request idles the rest); the first reply at two, unqueued on
                # any server, is the floor's second sample.
                least = 1
            elif self._limit == 2 and not self._unqueued_pair():
                least = s.min_samples
            need = min(max(least, self._limit // 2), s.max_samples)
        elif self._limit > self._base_limit:
            # A probe from a settled limit adds a few requests to many: the first half of its
            # replies (the ones that got a slot first) hides the queue they add.
            need = min(max(self._cap(), _PROBE_SAMPLES), s.max_samples)
        else:
            need = min(max(self._limit, s.min_samples), s.max_samples)
        if len(self._samples) >= need:
            self._close_window()

    def overloaded(self, flight: Flight) -> None:
        """The server said it is overloaded (503) or the request timed out: cut the limit once
        such answers are more than a stray fault (two, and 5% of this window's outcomes)."""
        self._land()
        if self._fixed is not None or flight.seq < self._cut_seq:
            return  # sent before the last cut: the cut already answered this overload
        self._strikes += 1
        if self._strikes < 2 or self._strikes < _OVERLOAD_SHARE * (
            self._strikes + len(self._samples)
        ):
            return
        self._overloads += 1
        self._slow_start = False
        self._backoff = min(2 * self._backoff, self._settings.max_probe_wait)
        self._wait = self._backoff
        self._cut_seq = self._next_seq
        cut = max(1, math.floor(self._limit * self._settings.overload_factor))
        self._base_limit, self._base_r = cut, [None, None]
        self._set(cut)

    def finished(self, flight: Flight) -> None:
        """Any other outcome (an error, a 429, cancelled): the slot is free, nothing learned."""
        self._land()

    def loop_lag(self, late_s: float) -> None:
        """A probe of the client's own delay: how late a timer callback ran on the event loop
        that sends the requests (a busy or starved loop runs every callback late). Its steady
        part is a moving average; lateness beyond it is a stall (a long callback, the GIL held
        by another thread, the process descheduled), counted whole against the requests in
        flight during it, whose replies it held up if they came back meanwhile."""
        late = max(0.0, late_s)
        self._stalls += max(0.0, late - self._lag)
        self._lag += _LAG_WEIGHT * (late - self._lag)

    def statistics(self) -> ConcurrencyStats:
        return ConcurrencyStats(
            adaptive=self._fixed is None,
            limit=self._limit,
            allowed=self.allowed(),
            in_flight=self._in_flight,
            guard=self._guard(),
            floor_s_per_token=self._floor[_PER_TOKEN],
            throughput_per_s=self._throughput(),
            slow_start=self._slow_start,
            overloads=self._overloads,
            loop_lag_s=self._lag,
        )

    # --- internals --------------------------------------------------------------------------

    def _land(self) -> float:
        now = self._clock.now()
        if self._in_flight <= 0:
            raise RuntimeError("a request landed that was never sent")
        self._in_flight -= 1
        if self._in_flight == 0:
            self._busy_cum += now - self._busy_since
        return now

    def _busy_time(self, now: float) -> float:
        if self._in_flight > 0:
            return self._busy_cum + (now - self._busy_since)
        return self._busy_cum

    def _throughput(self) -> float | None:
        """Successes per busy second over the recent ones, counted up to now, so the estimate
        falls while the server keeps a reply waiting; None before the first success."""
        if len(self._ring) < 2:
            return None
        span = self._busy_time(self._clock.now()) - self._ring[0]
        return (len(self._ring) - 1) / span if span > 0 else None

    def _cap(self) -> int:
        """Requests allowed in flight now: the limit and its headroom. The headroom is the
        base limit's, so that a probe measures one more limit and not a new headroom too (at
        7 -> 8 on 8 slots that would queue one and sink the probe). Slow start has none, so
        that its steps measure the server alone."""
        if self._fixed is not None or self._slow_start:
            return self._limit
        return self._limit + self._headroom(self._base_limit)

    def _headroom(self, base: int) -> int:
        share = self._settings.headroom
        return max(_MIN_HEADROOM, math.floor(base * share)) if share > 0.0 else 0

    def _guard(self) -> int | None:
        if self._timeout_s is None:
            return None
        rate = self._throughput()
        if rate is None:
            # Nothing measured yet: a fixed cap of hundreds would all go into the queue of a
            # server that may take one at a time, tens of seconds each. Two are safe whenever
            # one reply fits in the timeout; the first reply then sizes the guard.
            return _GUARD_START
        # Rounded to the nearest, not down: the rate was measured at the concurrency the
        # guard allowed, so at one in flight it also counts m2l's own turnaround, and rounding
        # down would hold a server that answers in a third of the timeout at one request for
        # good. The last in line still finishes within two thirds of the timeout.
        return max(1, math.floor(rate * self._timeout_s * self._settings.timeout_margin + 0.5))

    def _set(self, limit: int) -> None:
        """Move to ``limit`` and start a new window there."""
        limit = max(1, min(limit, self._settings.max_limit))
        # Going down, the first replies at the new limit still queue behind ones sent at the
        # old: that window is not measured (it would look like queueing at the new limit).
        self._skip = limit < self._in_flight
        self._limit = limit
        self._epoch += 1
        self._strikes = 0
        self._samples = []
        self._peak = self._in_flight

    def _unqueued_pair(self) -> bool:
        """Whether the first two replies at a limit of two both came back about as fast as
        the floor: on one slot the second waited for the first, and shows it unless the first
        was many times shorter."""
        unit = self._unit
        floor = self._floor[unit]
        return (
            floor is not None
            and len(self._samples) >= 2
            and max(x[unit] for x in self._samples[:2]) <= _PAIR_TOLERANCE * floor
        )

    def _pool(self, window: list[tuple[float, float, int]]) -> None:
        """Add a window's replies to the evidence of whether latency follows their length,
        and judge by it which unit latency is compared in.

        Within one window the load is the same for every reply, so how much of the spread of
        their latencies (relative to the window's mean) the reply's length explains is the
        server's own: most of it for a model decoding token by token, next to none for a
        server that answers in a fixed time (a cache, a simulator, a proxy in front of a
        batch), where seconds per token would differ fivefold between replies of 20 and 400
        tokens and bury any queue in noise.
        """
        if len(window) < 2:
            return
        mean_l = sum(x[1] for x in window) / len(window)
        mean_n = sum(x[2] for x in window) / len(window)
        if mean_l <= 0.0:
            return
        for _, latency, tokens in window:
            dl, dn = latency / mean_l - 1.0, tokens - mean_n
            self._sxx += dn * dn
            self._sxy += dn * dl
            self._syy += dl * dl
        self._pooled += len(window)
        if self._pooled < _UNIT_SAMPLES or self._sxx <= 0.0 or self._syy <= 0.0:
            return
        explained = self._sxy * self._sxy / (self._sxx * self._syy)
        self._unit = _PER_TOKEN if explained >= _UNIT_R2 else _PER_REPLY

    def _efficiency(self, r: float, cap: int, unit: int) -> float:
        """Throughput gained per concurrency gained since the base: Little's law on the
        requests actually in flight at each limit (1 = perfect scaling, 0 = pure queueing)."""
        base_r = self._base_r[unit]
        assert base_r is not None
        scale = cap / self._base_cap
        return (scale * base_r / r - 1.0) / (scale - 1.0)

    def _close_window(self) -> None:
        rs: list[float] = [median(x[0] for x in self._samples), median(x[1] for x in self._samples)]
        self._pool(self._samples)
        cap = self._cap()
        # Was the limit reached? Below it, the window measured the demand, not the server.
        binding = self._peak >= cap
        self._samples = []
        self._strikes = 0
        self._peak = self._in_flight
        if self._skip:
            self._skip = False
            return
        for unit, floor in enumerate(self._floor):
            if floor is None or rs[unit] < floor or (cap == 1 and binding):
                # At one request in flight nothing queues behind us: that median is the floor
                # now (it also lets the floor rise again after the server got slower for good).
                self._floor[unit] = rs[unit]
        unit = self._unit
        r, floor_now = rs[unit], self._floor[unit]
        assert floor_now is not None
        ratio = r / floor_now if floor_now > 0.0 else 1.0  # (a fake clock's instant replies)
        s = self._settings
        if self._limit > self._base_limit:
            if not binding:
                return  # not enough demand to judge the probe: keep measuring
            efficiency = self._efficiency(r, cap, unit)
            # A step of a few per cent measures efficiency too roughly to call a knee by it,
            # or to resume doubling.
            big = cap >= _BIG_STEP * self._base_cap
            if efficiency >= s.min_efficiency and ratio <= s.tolerance:
                # Only a slow-start doubling's gain may lead to a quadrupling: two in a row, or
                # one right after a probe, would stake many times the limit on one window.
                doubling = self._slow_start and self._limit == 2 * self._base_limit
                self._gain = efficiency if doubling else 0.0
                self._undo = self._base_limit
                self._base_limit, self._base_r, self._backoff = self._limit, [rs[0], rs[1]], 1
                self._base_cap = cap
                near_floor = ratio <= (1.0 + s.tolerance) / 2.0
                if self._limit >= _SLOW_START_MIN and (
                    efficiency < _SLOW_START_EXIT or not near_floor
                ):
                    # Gains are thinning, or latency is past the middle of the tolerated band:
                    # the knee is near, and another doubling would queue as many requests at
                    # the server as are in flight now.
                    self._slow_start = False
                elif (
                    efficiency >= _FAST_GAIN
                    and self._limit >= _SLOW_START_MIN
                    and big
                    and near_floor
                ):
                    # A probe that scaled nearly perfectly with latency still near the floor
                    # is far below the knee (slow start ended early on a noisy window, or the
                    # server grew): double again. Near the knee latency is well above the
                    # floor, and one window's median against another's can look perfect.
                    self._slow_start = True
                self._probe()
            elif self._slow_start and self._limit > 2 * self._base_limit:
                # A quadrupling overshot: back to its base, doubling from there.
                self._gain = 0.0
                self._set(self._base_limit)
                self._probe()
            else:
                # A step that gained next to nothing found the knee: wait long before the next
                # probe (each queues requests at the server); a near miss (noise, or a knee
                # just above) is tried again sooner, backing off by doubling.
                self._slow_start = False
                if (efficiency < _KNEE_EFF and big) or ratio > s.tolerance or self._base_cap == 1:
                    base = self._base_limit
                    window = min(max(base + self._headroom(base), s.min_samples), s.max_samples)
                    windows = -(-_EXIT_REPLIES // window)
                    self._backoff = max(self._backoff, min(windows, s.max_probe_wait))
                self._wait = self._backoff
                self._backoff = min(2 * self._backoff, s.max_probe_wait)
                self._set(self._base_limit)
            return
        if binding:
            self._base_r, self._base_cap = [rs[0], rs[1]], cap
        slow = binding and ratio > s.tolerance * cap / self._limit and self._limit > 1
        self._slow_windows = self._slow_windows + 1 if slow else 0
        if self._slow_windows >= 2:
            # Slower than the floor allows, twice in a row, at a limit that was fine: the server
            # is shared or got slower (one slow window can be a pause of our own process). Cut
            # toward the middle of the tolerated band, by a quarter at most; but first back to
            # the limit before the last kept step, since a probe kept on a lucky window is the
            # likelier cause (below it the batch slowdown, not a queue, is most of the ratio,
            # so the formula would cut past the slots).
            self._slow_windows = 0
            self._slow_start = False
            target = (1.0 + s.tolerance) / 2.0
            cut = max(1, math.floor(self._limit * max(0.75, target / ratio)))
            if cut < self._undo < self._limit:
                cut = self._undo
            self._undo = 0
            self._base_limit, self._base_r = cut, [None, None]
            self._set(cut)
        elif self._wait > 0:
            self._wait -= 1
        elif binding and self._base_r[unit] is not None:
            self._probe()

    def _probe(self) -> None:
        if self._limit >= self._settings.max_limit:
            return
        if self._slow_start:
            # Quadruple while the last step scaled nearly perfectly (a big server's batch is
            # far from full), double otherwise; never from below 4, where a step too far
            # queues more replies than a short run has.
            fast = (
                self._limit >= _FAST_FROM
                and 2 * self._limit <= self._settings.max_samples
                and self._gain >= _FAST_GAIN
            )
            step = self._limit * (3 if fast else 1)
        else:
            step = max(1, self._limit // 4)
        self._set(self._limit + step)
