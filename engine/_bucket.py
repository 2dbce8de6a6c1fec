"""The rate limiter's pure core: a local model of the provider's request and token buckets.

Each bucket has a level that refills at ``limit / 60`` per second up to a capacity; a request is
charged (1 request; prompt + max_tokens tokens) when it is granted, first in, first out, once it
fits with some headroom left. Before any header the capacity is ``initial_burst_s`` of quota.
Headers are the truth: ``limit`` gives the rate (adopted when lower than configured),
``remaining + reset x rate`` the capacity, and ``remaining`` - the server's level right after
admitting that request - is compared with the level stamped when it was charged, carried to when
it was sent (a request waits between the two while its reservation is made durable: the server's
refill over that wait is no news, the model refilled too). Corrections move one shared offset
(replies in flight together never apply the same error twice), and only by what no order of
admission explains, since requests granted together reach the server in any order; a learned
bucket is spent at most 10x the rate so that they mostly do not. A steady drift of the offset is
another process on the key. A 429 refunds its charge, caps the level, pauses everyone and cuts
the rate factor (AIMD).

Time comes from an injected Clock and nothing here awaits, so tests drive it with a FakeClock;
``engine.limiter`` wraps it in futures and one timer. Raises OversizeRequest for a request
that can never fit; the limits are an ``engine.config.LimitsConfig``, checked when it is made.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from engine.clock import Clock
from engine.config import LimitsConfig
from engine.errors import OversizeRequest
from engine.headers import RateLimitSnapshot

__all__ = [
    "REQUESTS",
    "TOKENS",
    "Bucket",
    "BucketStats",
    "LimiterCore",
    "LimiterStats",
    "Permit",
]

REQUESTS = "requests"
TOKENS = "tokens"

# After a 429 the rate factor drops multiplicatively and climbs back additively (AIMD, as TCP
# does): one cut per overload, never below half speed, about ten successes to recover from one.
_DECREASE = 0.8
_FLOOR = 0.5
_INCREASE = 0.02
# A 429 that neither Retry-After nor the remaining headers explain (a limit the server does not
# report) pauses for a backoff that doubles with each overload in a row.
_BACKOFF_BASE_S = 0.5
_BACKOFF_MAX_S = 30.0
# Another process sharing the key drains the server's bucket between our requests; its pace is
# the drift of the server's offset from the model, measured over windows at least this long
# (to ride out noise), followed with this gain, and not measured in a bucket fuller than this.
_DRAIN_WINDOW_S = 2.0
_DRAIN_GAIN = 0.5
_DRAIN_FULLNESS = 0.5
# However much others seem to take, keep refilling at this fraction so the model never freezes.
_MIN_NET_RATE = 0.1
# However much the bucket holds, grants go out at most this many times the rate (after a first
# initial_burst_s of quota): a minute's bucket is still spent in seconds, during which nothing
# is wasted since the server's bucket is below full, but the client can send each request as
# it is granted, so requests reach the server in about the order they were charged.
_PACE = 10.0
# Timers can fire a hair early (loop clock resolution); a head this close to its ready time goes
# now, which spends under a microsecond of quota early instead of arming another timer.
_EPS_S = 1e-6


@dataclass(frozen=True, slots=True)
class Permit:
    """The right to send one request; ``id`` is its send order. Hand it back exactly once."""

    id: int
    tokens: int


@dataclass(frozen=True, slots=True)
class BucketStats:
    """One bucket as the limiter models it right now (per-minute limits, levels in units)."""

    level: float
    capacity: float
    limit_per_min: float
    configured_per_min: float | None
    server_per_min: float | None
    capacity_learned: bool
    others_per_min: float  # estimated use by other processes sharing the key


@dataclass(frozen=True, slots=True)
class LimiterStats:
    """A snapshot for the progress display; ``paused_until`` is clock time, None when running."""

    queued: int
    in_flight: int
    requests: BucketStats | None
    tokens: BucketStats | None
    rate_factor: float
    paused_until: float | None
    granted: int
    rate_limited: int


class _Stamp:
    """What the model believed right after charging one request to one bucket."""

    __slots__ = ("adjust", "amount", "level", "shift", "t")

    def __init__(self, t: float, level: float, shift: float, amount: float) -> None:
        self.t = t  # when it was charged, then when it was sent (``Bucket.sent``)
        self.level = level  # the bucket's level right after this charge, as of ``t``
        self.shift = shift  # the bucket's cumulative header correction at that moment
        self.amount = amount
        # Charges of earlier requests that the server later rejected: the server never held
        # them, so this request's ``remaining`` will not include them either.
        self.adjust = 0.0


class _SendOrderSums:
    """Charges of requests still in flight, summed by send order (a Fenwick tree over a window)."""

    __slots__ = ("_amounts", "_base", "_tree", "total")

    def __init__(self) -> None:
        self.total = 0.0
        self._amounts: dict[int, float] = {}
        self._base = 0
        self._tree = [0.0] * 1025  # 1-based over seqs base .. base + 1023

    def add(self, seq: int, amount: float) -> None:
        if seq - self._base >= len(self._tree) - 1:
            self._rebuild(seq)
        self._amounts[seq] = amount
        self.total += amount
        self._update(seq - self._base + 1, amount)

    def remove(self, seq: int) -> None:
        amount = self._amounts.pop(seq, None)
        if amount is not None:
            self.total -= amount
            self._update(seq - self._base + 1, -amount)

    def before(self, seq: int) -> float:
        """The in-flight charges of requests sent before ``seq``."""
        i, total = min(seq - self._base, len(self._tree) - 1), 0.0
        while i > 0:
            total += self._tree[i]
            i -= i & -i
        return max(0.0, total)

    def _update(self, i: int, amount: float) -> None:
        while i < len(self._tree):
            self._tree[i] += amount
            i += i & -i

    def _rebuild(self, seq: int) -> None:
        # Slide the window to the oldest request in flight; doubling the room keeps the
        # rebuilds rare (amortised O(1) per request) however long one request hangs.
        self._base = min(self._amounts, default=seq)
        size = 1024
        while size < 2 * (seq - self._base + 1):
            size *= 2
        self._tree = [0.0] * (size + 1)
        for s, amount in self._amounts.items():
            self._update(s - self._base + 1, amount)


class _Flight:
    """A granted permit's charges and stamps, kept until its outcome is reported."""

    __slots__ = ("stamps",)

    def __init__(self, stamps: dict[str, _Stamp]) -> None:
        self.stamps = stamps


class Bucket:
    """One server bucket: a level refilling at ``limit / 60`` per second up to ``capacity``."""

    __slots__ = (
        "_anchor_t",
        "_burst_s",
        "_drain_dt",
        "_drain_err",
        "_drain_offset",
        "_floor",
        "_in_flight",
        "_last_seq",
        "_pace",
        "_shift",
        "_t",
        "capacity",
        "configured",
        "drain",
        "learned",
        "level",
        "per_minute",
        "rate",
        "server_limit",
        "share",
        "user_capped",
    )

    def __init__(
        self, *, configured: float | None, server_limit: float | None, burst_s: float, now: float
    ) -> None:
        if configured is None and server_limit is None:
            raise ValueError("a bucket needs a configured or a server-reported limit")
        self.configured = configured
        # The part of the limit this process may use: 1, or a shard's lease (engine.lease).
        self.share = 1.0
        self._set_server_limit(server_limit)
        self.learned = False  # capacity measured from headers rather than assumed
        self._burst_s = burst_s
        self._floor = 0.0  # the largest level the server has shown us: capacity is at least this
        # Before any header, assume a bucket of a second or two of quota: a provider that
        # enforces per second is not tripped, and the first response tells us the truth.
        self.capacity = self._assumed_capacity()
        self.level = self.capacity
        self._pace = self._pace_capacity  # a local bucket that spaces grants out; see _PACE
        self._t = now
        # Sum of header corrections applied so far: a response's error is measured against its
        # stamp moved by the corrections made since, so several in-flight responses re-estimate
        # one offset instead of each adding the same delta.
        self._shift = 0.0
        self._last_seq = -1  # newest permit whose reply was read
        self._in_flight = _SendOrderSums()
        self.drain = 0.0  # units per second others take from the server's bucket (estimated)
        self._drain_err = 0.0
        self._drain_offset: float | None = None
        self._drain_dt = 0.0
        # Send time of the newest reply that corrected the level: the model is pinned there.
        self._anchor_t: float | None = None

    def _set_server_limit(self, limit: float | None) -> None:
        self.server_limit = limit
        known = [v for v in (self.configured, limit) if v is not None]
        # The binding limit is the lower of the configured and the server-reported one; a
        # shard of a sharded run holds its share of it.
        self.per_minute = min(known) * self.share
        self.rate = self.per_minute / 60.0  # refill per second at full speed
        # The user configured less than the server allows: the user's cap binds. A shard reads
        # the server's headers as a user under a lower cap does: room the server shows is the
        # other shards' as much as its own, so only bad news moves its level.
        self.user_capped = self.share < 1.0 or (
            self.configured is not None and limit is not None and self.configured < limit
        )

    def set_share(self, share: float, now: float, factor: float) -> None:
        """Hold ``share`` of the limit from now on (a shard's lease); the level and capacity scale
        with it, except that a larger share gains no level until it refills."""
        self.refill(now, factor)
        old = self.share
        if share == old:
            return
        self.share = share
        self._set_server_limit(self.server_limit)
        ratio = share / old
        self._floor *= ratio
        if self.learned:
            self.capacity = min(self.capacity * ratio, self.per_minute)
        else:
            self.capacity = self._assumed_capacity()
        if ratio < 1.0:
            self.level *= ratio
            self._pace *= ratio
        self.level = min(self.level, self.capacity)
        self._pace = min(self._pace, self._pace_capacity)

    @property
    def max_charge(self) -> float:
        """The largest single charge that can ever be admitted."""
        # Until headers show the capacity, only the minute's quota is a known bound.
        return self.capacity if self.learned else self.per_minute

    def _assumed_capacity(self) -> float:
        return min(self.per_minute, max(self.rate * self._burst_s, self._floor))

    def refill(self, now: float, factor: float) -> None:
        """Move the level forward to ``now`` at ``factor`` times the rate."""
        if now > self._t:
            elapsed, self._t = now - self._t, now
            self.level = min(self.capacity, self.level + elapsed * self.net_rate(factor))
            self._pace = min(self._pace_capacity, self._pace + elapsed * self.rate * _PACE)

    @property
    def _pace_capacity(self) -> float:
        return self.rate * self._burst_s

    def net_rate(self, factor: float) -> float:
        """What refills for us per second: our share of the rate, less what others take."""
        ours = self.rate * factor
        return max(ours - self.drain, ours * _MIN_NET_RATE)

    def headroom(self, limits: LimitsConfig) -> float:
        """What is kept free: safety_margin x capacity, and at least headroom_s of refill."""
        return max(limits.safety_margin * self.capacity, self.rate * limits.headroom_s)

    def wait_s(self, amount: float, headroom: float, factor: float) -> float:
        """Seconds until ``amount`` fits with the headroom kept free."""
        # A charge larger than the assumed capacity (before headers) goes when the bucket is
        # full and leaves it in debt, which keeps the average rate right.
        need = min(amount + headroom, self.capacity)
        wait = max(0.0, need - self.level) / self.net_rate(factor)
        pace_need = min(amount, self._pace_capacity)
        return max(wait, (pace_need - self._pace) / (self.rate * _PACE))

    def charge(self, seq: int, amount: float) -> _Stamp:
        self.level -= amount
        self._pace -= amount
        self._in_flight.add(seq, amount)
        return _Stamp(self._t, self.level, self._shift, amount)

    def sent(self, stamp: _Stamp, now: float, factor: float) -> None:
        """The request charged at ``stamp`` goes to the server only now: stamp it here.

        The server admits a request when it arrives, so its ``remaining`` holds the refill from
        the grant to the send (a durable reservation, a busy loop); compared with the level at
        the grant, that refill reads as room the model lacks, which it already credited itself.
        """
        if now <= stamp.t:
            return
        # The model's own refill meanwhile. (A server whose bucket was full then wasted it, and
        # its ``remaining`` is then bad news: the model credited refill the server never had.)
        refilled = stamp.level + (now - stamp.t) * self.net_rate(factor)
        stamp.level = max(stamp.level, min(self.capacity, refilled))
        stamp.t = now

    def settle(self, seq: int) -> None:
        """Permit ``seq`` has its outcome: it no longer waits to be admitted."""
        self._in_flight.remove(seq)

    def refund(self, amount: float) -> None:
        self.level = min(self.capacity, self.level + amount)

    def learn(
        self, limit: int | None, remaining: int | None, reset_s: float | None, admitted: float
    ) -> None:
        """Adopt the server's limit and capacity from one response's headers."""
        if limit is not None and limit > 0:
            self._set_server_limit(float(limit))
        if remaining is not None:
            # The server held ``remaining`` plus what it just admitted: capacity is no less.
            # (A shard's part of the server's bucket is its share of it.)
            floor = (remaining + admitted) * self.share
            self._floor = max(self._floor, floor)
            if reset_s is not None:
                # OpenAI's reset is the time until the bucket is full again, at the server's rate.
                server_rate = (self.server_limit or self.per_minute / self.share) / 60.0
                self.capacity = max((remaining + reset_s * server_rate) * self.share, floor)
                self.learned = True
        if self.learned:
            self.capacity = min(self.capacity, self.per_minute)
        else:
            self.capacity = self._assumed_capacity()
        self.level = min(self.level, self.capacity)

    def retime(self, old_rate: float, factor: float, at: float | None, later: list[_Stamp]) -> None:
        """The limit changed: replay at the new rate the refill since headers last pinned the level.

        ``at`` is the send time of the response that brought the new limit; ``later`` are the
        stamps of requests still in flight, which the replay moves the same way.
        """
        known = [t for t in (at, self._anchor_t) if t is not None]
        delta = (self.rate - old_rate) * factor
        if not known or delta == 0:
            return
        anchor = max(known)
        # Refill since the anchor was credited at the old rate; without this a limit learned
        # lower (configured 2x too high) leaves seconds of phantom quota that end in 429s.
        self.level = min(self.capacity, self.level + delta * max(0.0, self._t - anchor))
        for stamp in later:
            if stamp.t > anchor:
                stamp.adjust += delta * (stamp.t - anchor)

    def correct(self, seq: int, stamp: _Stamp, remaining: int, *, refunded: bool) -> float:
        """Move the level by what the reply to permit ``seq`` proves; return the move.

        Requests granted together reach the server in any order (a burst waits in the event
        loop or the connection pool, new connections race), so a reply may count requests
        sent after it and miss requests sent before it. Only the newest reply so far is read,
        and only for what no order of admission explains: good news beyond the requests sent
        before it that are still in flight, bad news beyond those sent after it (all still in
        flight, as this is the newest reply). Reading more would be phantom quota (429s) or a
        phantom debt (idle seconds).
        """
        if seq <= self._last_seq:
            return 0.0  # a newer reply was read already
        self._last_seq = seq
        last_t, self._anchor_t = self._anchor_t, stamp.t
        # The server never held a rejected request's charge, so compare without it.
        expected = stamp.level + stamp.adjust + (stamp.amount if refunded else 0.0)
        # How far the server was from the model when it admitted this request, as if it had
        # admitted everything in the order we sent it; ``offset`` is that before any correction.
        error = remaining - (expected + self._shift - stamp.shift)
        offset = error + self._shift
        sent_before = self._in_flight.before(seq)
        sent_after = self._in_flight.total - sent_before
        move = 0.0
        if error > sent_before and not self.user_capped:
            # (Room the server has while we keep under the user's lower limit is not ours.)
            move = error - sent_before
        elif error < -sent_after:
            move = error + sent_after
        if move:
            self.level = min(self.capacity, self.level + move)
            self._shift += move
        if not self.user_capped and last_t is not None and stamp.t > last_t:
            self._estimate_drain(stamp.t - last_t, offset, remaining + stamp.amount)
        return move

    def bound(self, remaining: int, since: float) -> None:
        """The server held only ``remaining`` at some moment after ``since``: cap the level there.

        Whatever the order of admission, the server cannot have gained more since than its
        refill, so this holds for any reply, newest or not; a 429 is such a reply.
        """
        ceiling = remaining + self.rate * max(0.0, self._t - since)
        if self.level > ceiling:
            self._shift += ceiling - self.level
            self.level = ceiling

    def _estimate_drain(self, dt: float, offset: float, server_level: float) -> None:
        # While the offset falls steadily, someone else is spending from the same key: the
        # model's refill is lowered by that pace, so the offset stops falling.
        last, self._drain_offset = self._drain_offset, offset
        if server_level > _DRAIN_FULLNESS * self.capacity:
            # A bucket this full is not being drained; and, capped, it wastes refill, which
            # would look like someone else's use.
            self.drain = 0.0
            self._drain_err = self._drain_dt = 0.0
            return
        if last is None:
            return
        # Summed over a window, reordering noise cancels out (the sum telescopes) and what is
        # left is the drift.
        self._drain_err += offset - last
        self._drain_dt += dt
        if self._drain_dt >= _DRAIN_WINDOW_S:
            step = -self._drain_err / self._drain_dt
            self.drain = min(self.rate, max(0.0, self.drain + _DRAIN_GAIN * step))
            self._drain_err = self._drain_dt = 0.0

    def stats(self) -> BucketStats:
        return BucketStats(
            level=self.level,
            capacity=self.capacity,
            limit_per_min=self.per_minute,
            configured_per_min=self.configured,
            server_per_min=self.server_limit,
            capacity_learned=self.learned,
            others_per_min=self.drain * 60.0,
        )


def _kinds(
    snapshot: RateLimitSnapshot,
) -> tuple[tuple[str, int | None, int | None, float | None], ...]:
    return (
        (
            REQUESTS,
            snapshot.limit_requests,
            snapshot.remaining_requests,
            snapshot.reset_requests_s,
        ),
        (TOKENS, snapshot.limit_tokens, snapshot.remaining_tokens, snapshot.reset_tokens_s),
    )


class LimiterCore:
    """FIFO admission against the modelled buckets, a 429 pause and a rate factor; no asyncio.

    ``enqueue`` raises OversizeRequest for a request larger than the token bucket.
    """

    __slots__ = (
        "_buckets",
        "_clock",
        "_cut_seq",
        "_factor",
        "_flights",
        "_limits",
        "_next_seq",
        "_next_ticket",
        "_paused_until",
        "_probing",
        "_queue",
        "_rate_limited",
        "_share",
        "_strikes",
        "_tickets",
    )

    def __init__(self, limits: LimitsConfig, clock: Clock) -> None:
        self._limits = limits
        self._clock = clock
        now = clock.now()
        self._buckets: dict[str, Bucket] = {}
        for kind, configured in ((REQUESTS, limits.rpm), (TOKENS, limits.tpm)):
            if configured is not None:
                self._buckets[kind] = Bucket(
                    configured=configured,
                    server_limit=None,
                    burst_s=limits.initial_burst_s,
                    now=now,
                )
        # FIFO of ticket ids; a cancelled ticket leaves ``_tickets`` and is skipped at the head.
        self._queue: deque[int] = deque()
        self._tickets: dict[int, int] = {}
        self._next_ticket = 0
        self._flights: dict[int, _Flight] = {}
        self._next_seq = 0
        self._factor = 1.0
        self._paused_until = -math.inf
        # 429s of permits granted before ``_cut_seq`` come from the overload already answered.
        self._cut_seq = 0
        self._strikes = 0  # overloads in a row (reset by a success sent after the last cut)
        self._rate_limited = 0
        self._share = 1.0
        # With no limit configured, nothing is known until a response's headers arrive: send
        # one request first rather than an unbounded burst (a server with no headers is then
        # taken to have no limit).
        self._probing = not self._buckets and limits.fixed_inflight is None

    @property
    def limits(self) -> LimitsConfig:
        return self._limits

    # --- queue ------------------------------------------------------------------------------

    def enqueue(self, tokens: int) -> int:
        """Queue a request charging ``tokens``; return its ticket. Raises OversizeRequest."""
        if tokens < 0:
            raise ValueError(f"a request charges a non-negative number of tokens, got {tokens}")
        self._check_size(tokens)
        ticket = self._next_ticket
        self._next_ticket += 1
        self._tickets[ticket] = tokens
        self._queue.append(ticket)
        return ticket

    def cancel(self, ticket: int) -> None:
        """Forget a queued ticket (a no-op once it was granted)."""
        self._tickets.pop(ticket, None)

    def poll(self) -> list[tuple[int, Permit | OversizeRequest]]:
        """Grant every ticket whose turn has come, in order; fail ones that can never fit."""
        now = self._refill()
        out: list[tuple[int, Permit | OversizeRequest]] = []
        while (ticket := self._head()) is not None:
            tokens = self._tickets[ticket]
            try:
                # Capacity may have been learned smaller since this ticket was queued.
                self._check_size(tokens)
            except OversizeRequest as exc:
                self._pop_head()
                out.append((ticket, exc))
                continue
            if self._wait_s(tokens, now) > _EPS_S:
                break  # FIFO: the head blocks everyone behind it, so it is never starved
            self._pop_head()
            out.append((ticket, self._grant(tokens)))
        return out

    def ready_at(self) -> float | None:
        """Clock time when the head can go; None if the queue is empty or all slots are taken."""
        now = self._refill()
        ticket = self._head()
        if ticket is None:
            return None
        wait = self._wait_s(self._tickets[ticket], now)
        return None if math.isinf(wait) else now + wait

    def set_share(self, share: float) -> None:
        """Use ``share`` (0 < share <= 1) of every limit from now on: a shard's lease of a run
        whose limits are shared (engine.lease); raises ValueError out of that range."""
        if not 0.0 < share <= 1.0:
            raise ValueError(f"a share of the limits is in (0, 1], got {share}")
        self._share = share
        now = self._clock.now()
        for bucket in self._buckets.values():
            bucket.set_share(share, now, self._factor)

    # --- outcomes ---------------------------------------------------------------------------

    def sent(self, permit: Permit) -> None:
        """The granted request goes to the server now (a no-op once it was handed back)."""
        flight = self._flights.get(permit.id)
        if flight is None:
            return
        now = self._refill()
        for kind, stamp in flight.stamps.items():
            self._buckets[kind].sent(stamp, now, self._factor)

    def complete(
        self, permit: Permit, *, snapshot: RateLimitSnapshot, used_tokens: int | None
    ) -> None:
        """A success: learn from its headers, refund unused tokens if the provider does."""
        flight = self._take(permit)
        if flight is None:
            return
        self._refill()
        tokens = self._buckets.get(TOKENS)
        if (
            self._limits.refund_unused
            and used_tokens is not None
            and tokens is not None
            and TOKENS in flight.stamps
        ):
            tokens.refund(permit.tokens - used_tokens)
        self._probing = False
        self._observe(permit, flight, snapshot, admitted=True)
        if permit.id >= self._cut_seq:
            # Only requests sent after the last cut prove the reduced pace is safe.
            self._factor = min(1.0, self._factor + _INCREASE)
            self._strikes = 0

    def rejected(
        self, permit: Permit, *, snapshot: RateLimitSnapshot | None, retry_after: float | None
    ) -> None:
        """A 429: refund it, take the server's levels, pause everyone and slow down."""
        flight = self._take(permit)
        if flight is None:
            return
        now = self._refill()
        self._rate_limited += 1
        self._probing = False
        self._refund_unadmitted(permit.id, flight)
        if snapshot is not None:
            self._observe(permit, flight, snapshot, admitted=False)
        if permit.id >= self._cut_seq:
            # The first 429 of an overload cuts once; the others were sent at the old pace.
            self._factor = max(_FLOOR, self._factor * _DECREASE)
            self._strikes += 1
            self._cut_seq = self._next_seq
        pause = self._pause_s(permit, snapshot, retry_after)
        self._paused_until = max(self._paused_until, now + pause)

    def release(self, permit: Permit, *, admitted: bool) -> None:
        """Any other outcome; ``admitted=False`` (never reached the server) refunds the charge."""
        flight = self._take(permit)
        if flight is None or admitted:
            return
        self._refill()
        self._refund_unadmitted(permit.id, flight)

    def statistics(self) -> LimiterStats:
        now = self._refill()
        requests = self._buckets.get(REQUESTS)
        tokens = self._buckets.get(TOKENS)
        return LimiterStats(
            queued=len(self._tickets),
            in_flight=len(self._flights),
            requests=requests.stats() if requests is not None else None,
            tokens=tokens.stats() if tokens is not None else None,
            rate_factor=self._factor,
            paused_until=self._paused_until if self._paused_until > now else None,
            granted=self._next_seq,
            rate_limited=self._rate_limited,
        )

    # --- internals --------------------------------------------------------------------------

    def _refill(self) -> float:
        now = self._clock.now()
        for bucket in self._buckets.values():
            bucket.refill(now, self._factor)
        return now

    def _head(self) -> int | None:
        while self._queue and self._queue[0] not in self._tickets:
            self._queue.popleft()
        return self._queue[0] if self._queue else None

    def _pop_head(self) -> None:
        del self._tickets[self._queue.popleft()]

    def _check_size(self, tokens: int) -> None:
        bucket = self._buckets.get(TOKENS)
        if bucket is not None and tokens > bucket.max_charge:
            raise OversizeRequest(
                f"this request charges {tokens} tokens (prompt + max_tokens) but the token "
                f"bucket holds at most {math.floor(bucket.max_charge)}; lower max_tokens or "
                "shorten the conversation"
            )

    def _wait_s(self, tokens: int, now: float) -> float:
        limit = self._limits.fixed_inflight
        if limit is not None and len(self._flights) >= limit:
            return math.inf
        if self._probing and self._flights:
            return math.inf
        wait = max(0.0, self._paused_until - now)
        for kind, bucket in self._buckets.items():
            amount = 1 if kind == REQUESTS else tokens
            headroom = bucket.headroom(self._limits)
            wait = max(wait, bucket.wait_s(amount, headroom, self._factor))
        return wait

    def _grant(self, tokens: int) -> Permit:
        seq = self._next_seq
        self._next_seq += 1
        stamps = {
            kind: bucket.charge(seq, 1 if kind == REQUESTS else tokens)
            for kind, bucket in self._buckets.items()
        }
        self._flights[seq] = _Flight(stamps)
        return Permit(id=seq, tokens=tokens)

    def _take(self, permit: Permit) -> _Flight | None:
        """Close a permit's flight; None when it was already handed back."""
        flight = self._flights.pop(permit.id, None)
        if flight is not None:
            for kind in flight.stamps:
                self._buckets[kind].settle(permit.id)
        return flight

    def _refund_unadmitted(self, seq: int, flight: _Flight) -> None:
        for kind, stamp in flight.stamps.items():
            self._buckets[kind].refund(stamp.amount)
        # Requests sent after this one were stamped with its charge in the level; the server's
        # answers to them will not include it, so their stamps must not either.
        for later_seq, later in self._flights.items():
            if later_seq > seq:
                for kind, stamp in later.stamps.items():
                    own = flight.stamps.get(kind)
                    if own is not None:
                        stamp.adjust += own.amount

    def _observe(
        self, permit: Permit, flight: _Flight, snapshot: RateLimitSnapshot, *, admitted: bool
    ) -> None:
        now = self._clock.now()
        for kind, limit, remaining, reset_s in _kinds(snapshot):
            amount = 1.0 if kind == REQUESTS else float(permit.tokens)
            charged = amount if admitted else 0.0
            bucket = self._buckets.get(kind)
            if bucket is None:
                if limit is None or limit <= 0:
                    continue  # nothing configured and nothing reported: this kind is unlimited
                # The server reports a limit nobody configured: model it from now on.
                bucket = Bucket(
                    configured=None,
                    server_limit=float(limit),
                    burst_s=self._limits.initial_burst_s,
                    now=now,
                )
                bucket.set_share(self._share, now, self._factor)
                bucket.learn(limit, remaining, reset_s, charged)
                if remaining is not None:
                    bucket.level = min(bucket.capacity, float(remaining) * self._share)
                self._buckets[kind] = bucket
                continue
            old_rate = bucket.rate
            bucket.learn(limit, remaining, reset_s, charged)
            stamp = flight.stamps.get(kind)
            if bucket.rate != old_rate:
                later = [s for f in self._flights.values() if (s := f.stamps.get(kind)) is not None]
                bucket.retime(old_rate, self._factor, stamp.t if stamp else None, later)
            if remaining is not None and stamp is not None:
                bucket.correct(permit.id, stamp, remaining, refunded=not admitted)
                if not admitted:
                    bucket.bound(remaining, stamp.t)

    def _pause_s(
        self, permit: Permit, snapshot: RateLimitSnapshot | None, retry_after: float | None
    ) -> float:
        if retry_after is not None:
            return retry_after
        wait = 0.0
        if snapshot is not None:
            # The reset headers name when the bucket is full; only the part of that needed
            # for this request to fit is worth waiting for.
            for kind, _limit, remaining, reset_s in _kinds(snapshot):
                bucket = self._buckets.get(kind)
                if bucket is None or remaining is None:
                    continue
                amount = 1.0 if kind == REQUESTS else float(permit.tokens)
                need = min(amount + bucket.headroom(self._limits), bucket.capacity) - remaining
                if need > 0:
                    kind_wait = need / bucket.rate
                    if reset_s is not None:
                        kind_wait = min(kind_wait, reset_s)
                    wait = max(wait, kind_wait)
        if wait > 0:
            return wait
        return min(_BACKOFF_MAX_S, _BACKOFF_BASE_S * 2.0 ** min(max(self._strikes - 1, 0), 30))
