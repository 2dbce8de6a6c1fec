"""The adaptive concurrency limit's pure core, driven on a FakeClock against the slot model."""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field
from statistics import median

import pytest

from engine._adaptive import AdaptiveSettings, ConcurrencyCore, Flight
from engine.clock import FakeClock
from engine.errors import ConfigError
from engine.simulator.capacity import SlotModel


@dataclass
class Outcome:
    replies: int = 0
    latencies: list[float] = field(default_factory=list)
    limits: list[int] = field(default_factory=list)  # the limit at each reply
    allowed: list[int] = field(default_factory=list)  # ...and what it let be in flight
    times: list[float] = field(default_factory=list)  # when each reply came

    @property
    def second_half(self) -> int:
        """Replies in the second half of the run's time: the settled throughput."""
        if not self.times:
            return 0
        middle = (self.times[0] + self.times[-1]) / 2
        return sum(1 for t in self.times if t > middle)


def drive(
    core: ConcurrencyCore,
    clock: FakeClock,
    *,
    slots: int,
    seconds: float,
    slowdown: float = 1.5,
    demand: int = 10_000,
    seed: int = 1,
    turnaround: float = 0.0,
) -> Outcome:
    """A closed loop of ``demand`` senders against a slot server, as long as the core allows;
    a request reaches the server ``turnaround`` seconds after it is sent (the client's and the
    network's part of a slot's cycle, which a server slot spends idle)."""
    rng = random.Random(seed)
    model = SlotModel(clock, slots=slots, slowdown=slowdown)
    flying: dict[int, tuple[Flight, int]] = {}
    transit: list[tuple[float, Flight, int]] = []  # sent, not at the server yet
    out = Outcome()
    end = clock.now() + seconds
    while True:
        while core.can_send() and len(flying) + len(transit) < demand:
            tokens = rng.randint(20, 400)
            transit.append((clock.now() + turnaround, core.send(), tokens))
        while transit and transit[0][0] <= clock.now():
            _, flight, tokens = transit.pop(0)
            flying[model.submit(0.2 + 0.005 * tokens)] = (flight, tokens)
        at = model.next_finish_at()
        if transit:
            at = transit[0][0] if at is None else min(at, transit[0][0])
        assert at is not None
        if at > end:
            for flight, _ in flying.values():
                core.finished(flight)  # the driver stops: what it had in flight is let go
            for _, flight, _ in transit:
                core.finished(flight)
            return out
        clock.advance(max(0.0, at - clock.now()))
        for job in model.poll():
            flight, tokens = flying.pop(job)
            out.latencies.append(clock.now() - flight.t)
            core.succeeded(flight, tokens)
            out.replies += 1
            out.limits.append(core.limit)
            out.allowed.append(core.allowed())
            out.times.append(clock.now())


def settled(out: Outcome) -> list[int]:
    """The limits of the second half of the run."""
    return out.limits[len(out.limits) // 2 :]


@pytest.mark.parametrize("slots", [1, 8, 64])
def test_finds_the_slot_count_and_the_best_fixed_throughput(slots: int) -> None:
    """Against 1, 8 and 64 slots the limit settles at the slots (probes aside), and throughput
    is within 5% of the best fixed limit's."""
    clock = FakeClock()
    out = drive(ConcurrencyCore(clock), clock, slots=slots, seconds=400)
    limits = settled(out)
    mode = max(set(limits), key=limits.count)
    assert slots <= mode <= slots + max(1, slots // 8)
    assert limits.count(mode) / len(limits) > 0.8  # probes above it are brief
    best = max(
        drive(ConcurrencyCore(c := FakeClock(), fixed=n), c, slots=slots, seconds=400).replies
        for n in (slots, slots + 1, 2 * slots)
    )
    assert out.replies >= 0.95 * best


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_slow_start_reaches_64_slots_in_five_steps(seed: int) -> None:
    """From one request to 64 slots: the first reply moves the limit to 2, doublings to 16,
    each judged on its first replies, then (the batch still scaling nearly perfectly) one
    quadrupling; within about seven unloaded round trips (1.25 s each here)."""
    clock = FakeClock()
    out = drive(ConcurrencyCore(clock), clock, slots=64, seconds=60, seed=seed)
    reached = next(t for t, limit in zip(out.times, out.limits, strict=True) if limit >= 64)
    assert reached <= 9.0
    before = sorted({limit for limit in out.limits if limit < 64})
    assert before == [2, 4, 8, 16]  # the limit after each reply: the first already left 1


def land(core: ConcurrencyCore, clock: FakeClock, latencies: list[float]) -> None:
    """Sends one request per latency at once, then lands them in that order, each that many
    seconds after the send (a reply of 0 tokens: the sample is latency / token_overhead)."""
    flights = [core.send() for _ in latencies]
    start = clock.now()
    for flight, latency in sorted(zip(flights, latencies, strict=True), key=lambda p: p[1]):
        clock.advance(max(0.0, start + latency - clock.now()))
        core.succeeded(flight, 0)


def test_the_first_reply_leaves_one_and_the_first_at_two_joins_the_floor() -> None:
    """One reply at one request is enough to double (a big server idles meanwhile); the
    first reply at two, unqueued on any server, is the floor's second sample: the lower of
    the two is the floor."""
    clock = FakeClock()
    core = ConcurrencyCore(clock)
    land(core, clock, [1.0])
    assert core.limit == 2
    assert core.statistics().floor_s_per_token == pytest.approx(1.0 / 32)
    first, second = core.send(), core.send()
    clock.advance(0.8)
    core.succeeded(first, 0)
    assert core.statistics().floor_s_per_token == pytest.approx(0.8 / 32)
    clock.advance(0.1)
    core.succeeded(second, 0)  # both at about the floor: the pair shows two slots
    assert core.limit == 4


def test_a_step_from_one_request_that_fails_waits_long_before_the_next() -> None:
    """Against one slot the step from 1 to 2 gains little: even when its window looks like a
    near miss (efficiency just above the knee's, latency within the tolerance) it is taken
    as the knee, so no probe puts a third request in the slot's queue soon after."""
    clock = FakeClock()
    core = ConcurrencyCore(clock)
    land(core, clock, [1.0])
    assert core.limit == 2
    # Four replies at two in flight, median 1.45 s against 1 s alone: efficiency 0.38,
    # ratio 1.45 (the old rule called that a near miss and probed again after one window).
    land(core, clock, [1.0, 1.9])
    land(core, clock, [1.4, 1.5])
    assert core.limit == 1
    assert core.allowed() == 2  # one waits at the server, as fixed 2
    for _ in range(24):  # 48 replies at the settled limit: no probe yet
        land(core, clock, [1.0, 2.0])
        assert core.allowed() == 2


def test_no_quadrupling_from_a_window_too_big_to_judge_the_queue() -> None:
    """A quadrupling is judged on the first half of its window; from 32 up that half is
    capped at 32 replies, which the requests that got a slot at once would fill, hiding the
    queue behind them: from there slow start only doubles."""
    clock = FakeClock()
    out = drive(ConcurrencyCore(clock), clock, slots=1024, slowdown=1.0, seconds=40)
    steps = sorted(set(out.limits))
    assert 64 in steps and 128 in steps  # 16 -> 64 quadrupled, then 64 -> 128 doubled
    assert all(b <= 2 * a for a, b in itertools.pairwise(steps) if a >= 32)


def test_slow_start_ends_when_latency_passes_the_middle_of_the_band() -> None:
    """A doubling that still scaled well (efficiency 0.76) but whose latency is 1.42x the
    floor, past the middle of the tolerated band (1.4x), is near the knee: slow start ends
    there instead of doubling into a queue."""
    clock = FakeClock()
    core = ConcurrencyCore(clock)
    land(core, clock, [1.0])
    land(core, clock, [1.0, 1.0])
    land(core, clock, [1.25] * 4)  # limit 4: efficiency 0.6, judged on its first two
    assert core.limit == 8
    assert core.statistics().slow_start
    land(core, clock, [1.42] * 8)
    assert not core.statistics().slow_start
    assert core.limit == 10  # probes step by a quarter from here


def test_a_quadrupling_past_the_slots_comes_back_to_them() -> None:
    """Against 48 slots the step from 16 goes to 64, past them; the queue it builds shows in
    latency and the limit settles at the slots."""
    clock = FakeClock()
    out = drive(ConcurrencyCore(clock), clock, slots=48, seconds=200)
    assert 64 in out.limits and max(out.limits) <= 128
    limits = settled(out)
    mode = max(set(limits), key=limits.count)
    assert 48 <= mode <= 48 + 48 // 8
    assert limits.count(mode) / len(limits) > 0.8


@pytest.mark.parametrize("slots", [8, 64])
def test_headroom_hides_the_turnaround_between_a_reply_and_the_next_request(slots: int) -> None:
    """When a request reaches the server 50 ms after a slot freed up, a limit of exactly the
    slots leaves them idle that long; once settled, an eighth more are let go to wait at the
    server, and settled throughput is within 5% of the best fixed limit's, above the slots
    too."""
    clock = FakeClock()
    core = ConcurrencyCore(clock)
    settled = drive(core, clock, slots=slots, seconds=200, turnaround=0.05).second_half
    assert core.allowed() == core.limit + core.limit // 8
    best = max(
        drive(ConcurrencyCore(c := FakeClock(), fixed=n), c, slots=slots, seconds=200,
              turnaround=0.05).second_half
        for n in (slots, slots + slots // 4, slots + slots // 2)
    )  # fmt: skip
    assert settled >= 0.95 * best


@pytest.mark.parametrize("turnaround", [0.0, 0.05])
def test_one_request_waits_behind_a_single_slot_and_no_more(turnaround: float) -> None:
    """Against one slot the limit settles at 1 with one more request waiting at the server
    (so the slot never idles while m2l turns a reply around): throughput is fixed 2's, and
    latency too (p99 and median within a few per cent, probes included), not a flood of
    queued requests."""
    clock = FakeClock()
    core = ConcurrencyCore(clock)
    out = drive(core, clock, slots=1, seconds=600, turnaround=turnaround)
    assert core.limit == 1
    assert core.allowed() == 2
    pair = drive(ConcurrencyCore(c := FakeClock(), fixed=2), c, slots=1, seconds=600,
                 turnaround=turnaround)  # fmt: skip
    assert out.replies >= 0.99 * pair.replies

    def p99(latencies: list[float]) -> float:
        return sorted(latencies)[int(0.99 * len(latencies))]

    assert p99(out.latencies) <= 1.15 * p99(pair.latencies)
    assert median(out.latencies) <= 1.1 * median(pair.latencies)
    assert max(out.allowed) <= 4


def test_probes_above_a_found_knee_are_rare() -> None:
    """Once a doubling gained nothing, the next probe waits 128 replies (32 windows against one
    slot) and each rejected one doubles the wait: against one slot for 10 minutes (about 500
    replies), at most three probes (each queues a request or two more at the server)."""
    clock = FakeClock()
    out = drive(ConcurrencyCore(clock), clock, slots=1, seconds=600, turnaround=0.05)
    probes = sum(1 for a, b in zip(out.limits, out.limits[1:], strict=False) if b > a)
    assert 1 <= probes <= 4  # the slow-start step to 2, then the probes


def test_does_not_grow_past_the_demand() -> None:
    """With only 3 requests wanting to go, the limit stops growing near 3, not at the maximum."""
    clock = FakeClock()
    out = drive(ConcurrencyCore(clock), clock, slots=64, seconds=200, demand=3)
    assert max(out.limits) <= 8


def test_overload_halves_once_per_cut() -> None:
    """Repeated 503s or timeouts halve the limit; others sent before that cut do not cut
    again."""
    clock = FakeClock()
    core = ConcurrencyCore(clock, settings=AdaptiveSettings(initial=16))
    flights = [core.send() for _ in range(16)]
    core.overloaded(flights[0])
    assert core.limit == 16  # one could be a stray fault
    core.overloaded(flights[1])
    assert core.limit == 8
    for flight in flights[2:8]:
        core.overloaded(flight)
    assert core.limit == 8
    later = [core.send() for _ in range(2)]
    for flight in later:
        core.overloaded(flight)
    assert core.limit == 4
    assert core.statistics().overloads == 2
    assert not core.statistics().slow_start


def test_stray_faults_do_not_cut_the_limit() -> None:
    """A 503 now and then among many good replies (0.5%, as a provider has) leaves the limit
    where the latency puts it."""
    clock = FakeClock()
    core = ConcurrencyCore(clock)
    drive(core, clock, slots=64, seconds=100)
    grown = core.limit
    for i in range(2000):
        flight = core.send()
        clock.advance(0.01)
        if i % 200 == 0:
            core.overloaded(flight)
        else:
            core.succeeded(flight, 100)
    assert core.statistics().overloads == 0
    assert core.limit >= grown * 0.75


def test_latency_drift_past_the_tolerance_cuts_the_limit() -> None:
    """When the server gets three times slower at the same limit (shared with others), the
    limit comes down; when it recovers, the limit grows back."""
    clock = FakeClock()
    core = ConcurrencyCore(clock)
    drive(core, clock, slots=16, seconds=200)
    before = core.limit
    assert before >= 14
    # Another tenant takes most of the server: 4 slots left for us.
    drive(core, clock, slots=4, seconds=200, seed=2)
    assert core.limit <= 6
    drive(core, clock, slots=16, seconds=400, seed=3)
    assert core.limit >= 14


def test_fixed_limit_never_moves() -> None:
    """A number for max_inflight is a fixed cap: no signal changes it."""
    clock = FakeClock()
    core = ConcurrencyCore(clock, fixed=5)
    flights = [core.send() for _ in range(5)]
    assert not core.can_send()
    core.overloaded(flights[0])
    clock.advance(10)
    core.succeeded(flights[1], 100)
    assert core.limit == 5
    assert core.can_send()


def serve_one_slot(
    core: ConcurrencyCore, clock: FakeClock, work_s: float, replies: int
) -> list[float]:
    """Sends whatever the core allows to one slot taking ``work_s`` per request until
    ``replies`` came back; each reply's latency."""
    model = SlotModel(clock, slots=1)
    flying: dict[int, Flight] = {}
    latencies: list[float] = []
    while len(latencies) < replies:
        while core.can_send():
            flying[model.submit(work_s)] = core.send()
        at = model.next_finish_at()
        assert at is not None
        clock.advance(at - clock.now())
        for job in model.poll():
            flight = flying.pop(job)
            latencies.append(clock.now() - flight.t)
            core.succeeded(flight, 100)
    return latencies


def test_timeout_guard_caps_a_fixed_limit_by_throughput() -> None:
    """With 256 allowed against one 2-second slot and a 120 s timeout, at most
    0.5 replies/s x 120 s x 0.5 = 30 are sent at once once the server was measured."""
    clock = FakeClock()
    core = ConcurrencyCore(clock, fixed=256, timeout_s=120)
    assert core.allowed() == 2  # nothing measured yet: enough to measure, not 256
    latencies = serve_one_slot(core, clock, 2.0, 60)
    assert core.statistics().throughput_per_s == pytest.approx(0.5)
    assert core.allowed() == 30
    assert max(latencies) <= 62.0  # the last in the server's queue waits about 60 s of the 120


def test_timeout_guard_learns_a_very_slow_server_from_its_first_reply() -> None:
    """One slot taking 45 s a reply, a fixed cap of 256 and a 120 s timeout: two go out
    before anything is known, the first reply (45 s) shows that only one fits after that, and
    no request waits past the timeout (eight sent at once would have taken 360 s)."""
    clock = FakeClock()
    core = ConcurrencyCore(clock, fixed=256, timeout_s=120)
    latencies = serve_one_slot(core, clock, 45.0, 6)
    assert latencies[:2] == [pytest.approx(45.0), pytest.approx(90.0)]
    assert all(latency == pytest.approx(45.0) for latency in latencies[2:])
    assert core.allowed() == 1
    assert core.statistics().throughput_per_s == pytest.approx(1 / 45)


def test_timeout_guard_opens_after_one_reply_of_a_fast_server() -> None:
    """A 64-slot server answering in 0.3 s: one reply measures it well enough to let the
    fixed cap's 256 go (3.3 replies/s x 120 s x 0.5 = 200 at once, then more)."""
    clock = FakeClock()
    core = ConcurrencyCore(clock, fixed=256, timeout_s=120)
    first, second = core.send(), core.send()
    assert not core.can_send()
    clock.advance(0.3)
    core.succeeded(first, 100)
    assert core.allowed() == 200
    core.succeeded(second, 100)
    assert core.allowed() == 256


def test_timeout_guard_shrinks_while_a_reply_is_overdue() -> None:
    """Replies per second count up to now: when the server stops answering, the estimate
    sinks and fewer requests are let go (a reply landing is what frees a slot)."""
    clock = FakeClock()
    core = ConcurrencyCore(clock, fixed=256, timeout_s=120)
    serve_one_slot(core, clock, 1.0, 20)  # 1 reply/s: 60 allowed
    assert core.allowed() == 60
    stuck = core.send()
    clock.advance(40.0)  # 20 replies in 60 busy seconds now
    assert core.allowed() == 20
    core.finished(stuck)


def test_throughput_ignores_idle_time() -> None:
    """Replies per second count only time with something in flight: idle gaps do not make
    the server look slow."""
    clock = FakeClock()
    core = ConcurrencyCore(clock, fixed=1, timeout_s=100)
    for _ in range(10):
        flight = core.send()
        clock.advance(1.0)
        core.succeeded(flight, 10)
        clock.advance(50.0)  # nobody wanted to send
    assert core.statistics().throughput_per_s == pytest.approx(1.0)


def test_settings_and_misuse_are_checked() -> None:
    """Impossible settings are config errors; a reply for a request never sent is a bug."""
    with pytest.raises(ConfigError, match="initial"):
        AdaptiveSettings(initial=0)
    with pytest.raises(ConfigError, match="tolerance"):
        AdaptiveSettings(tolerance=1.0)
    with pytest.raises(ConfigError, match="slow_start_samples"):
        AdaptiveSettings(slow_start_samples=0)
    with pytest.raises(ConfigError, match="headroom"):
        AdaptiveSettings(headroom=-0.1)
    with pytest.raises(ConfigError, match="max_inflight"):
        ConcurrencyCore(FakeClock(), fixed=0)
    core = ConcurrencyCore(FakeClock())
    with pytest.raises(RuntimeError):
        core.finished(Flight(0, 0.0, 0))


def test_timeout_guard_does_not_hold_auto_at_one_request_for_good() -> None:
    """Against one slot, with the client's own turnaround twice a reply's time (a starved
    process) and a 12 s timeout: at one request in flight the measured rate is the whole
    cycle's, 12 s x 0.5 of it is 1.6 requests; rounded down that would hold auto at one
    for good, so the slot idles two thirds of the time. Rounded to the nearest, one more
    waits at the server (the rate measured then lets more, and auto's limit says 1 + 1),
    and no request times out."""
    clock = FakeClock()
    core = ConcurrencyCore(clock, timeout_s=12.0)
    out = drive(core, clock, slots=1, seconds=600, turnaround=2.5)
    guard = core.statistics().guard
    assert guard is not None and guard >= 2
    assert core.allowed() >= 2
    assert max(out.latencies) < 12.0
    alone = drive(ConcurrencyCore(c := FakeClock(), fixed=1), c, slots=1, seconds=600,
                  turnaround=2.5)  # fmt: skip
    assert out.replies >= 1.5 * alone.replies


def drive_fast_server(
    core: ConcurrencyCore,
    clock: FakeClock,
    *,
    seconds: float,
    client_s: float = 0.0,
    probes: bool = True,
    seed: int = 1,
) -> Outcome:
    """An unlimited server answering in 20 ms whatever the reply's length (a cache, a proxy,
    a simulator), for as many requests as the core allows. The client's one event loop runs
    everything in the order it became due and spends ``client_s`` on each reply, so with many
    in flight replies wait for it; with ``probes`` a lateness probe is due every 20 ms and
    reports how late the loop got to it."""
    rng = random.Random(seed)
    out = Outcome()
    end = clock.now() + seconds
    due: list[tuple[float, int, str, Flight | None, int]] = []  # (due, order, what, flight, n)
    order = 0

    def push(at: float, what: str, flight: Flight | None = None, tokens: int = 0) -> None:
        nonlocal order
        order += 1
        heapq.heappush(due, (at, order, what, flight, tokens))

    def submit(flight: Flight) -> None:
        latency = 0.02 * (1.0 + 0.1 * (2.0 * rng.random() - 1.0))
        push(clock.now() + latency, "reply", core.sent(flight), rng.randint(20, 400))

    def refill() -> None:
        while core.can_send():
            submit(core.send())

    if probes:
        push(clock.now() + 0.02, "probe")
    refill()
    while due and clock.now() < end:
        at, _, what, flight, tokens = heapq.heappop(due)
        clock.advance(max(0.0, at - clock.now()))  # the loop gets to it now, or later if busy
        if what == "probe":
            core.loop_lag(clock.now() - at)
            push(clock.now() + 0.02, "probe")
        else:
            assert flight is not None
            clock.advance(client_s)
            out.latencies.append(clock.now() - flight.t)
            core.succeeded(flight, tokens)
            out.replies += 1
            out.limits.append(core.limit)
            out.allowed.append(core.allowed())
            out.times.append(clock.now())
            refill()
    return out


def test_a_server_whose_latency_ignores_the_reply_length_is_judged_per_reply() -> None:
    """An unlimited server answering every request in 20 ms: seconds per token would differ
    twentyfold between replies of 20 and 400 tokens and read as queueing; judged per reply
    the latency stays at the floor and the limit grows past a hundred."""
    clock = FakeClock()
    core = ConcurrencyCore(clock)
    out = drive_fast_server(core, clock, seconds=30)
    assert max(settled(out)) >= 128
    assert median(out.latencies) <= 0.025


def test_the_clients_own_lag_is_not_taken_for_a_server_queue() -> None:
    """The same server with a client that spends 1 ms of its loop on each reply: past 20 in
    flight replies wait for the loop (latency grows with the limit, as a queue would make it),
    but the loop's lateness, probed, is taken out: the limit is not held where the client's
    own lag starts, and throughput is the loop's (1,000 replies a second). Without the
    probes the lag reads as the server's queue and holds the limit at 30."""
    clock = FakeClock()
    core = ConcurrencyCore(clock)
    out = drive_fast_server(core, clock, seconds=30, client_s=0.001)
    assert median(settled(out)) >= 48
    assert out.second_half >= 0.95 * 1000 * 15
    blind = drive_fast_server(
        ConcurrencyCore(c := FakeClock()), c, seconds=30, client_s=0.001, probes=False
    )
    assert median(settled(blind)) <= 32
