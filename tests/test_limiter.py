"""The rate limiter: the pure bucket model on a FakeClock, its async shell, and whole runs."""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import math
import random
from collections.abc import Callable

import pytest

from engine._bucket import LimiterCore, Permit, _SendOrderSums
from engine.clock import FakeClock
from engine.config import LimitsConfig
from engine.errors import ConfigError, OversizeRequest
from engine.headers import RateLimitSnapshot, format_duration, parse_duration
from engine.limiter import RateLimiter

EMPTY = RateLimitSnapshot()


def limits_of(**limits: object) -> LimitsConfig:
    """Limits as these tests mean them: no in-flight cap unless one is given."""
    limits.setdefault("max_inflight", None)
    return LimitsConfig(**limits)  # type: ignore[arg-type]


def core(clock: FakeClock, **limits: object) -> LimiterCore:
    limits.setdefault("safety_margin", 0.0)
    limits.setdefault("headroom_s", 0.0)
    return LimiterCore(limits_of(**limits), clock)  # type: ignore[arg-type]


def grant(c: LimiterCore, tokens: int) -> Permit:
    """Queue one request and take its permit, which must be granted right away."""
    ticket = c.enqueue(tokens)
    granted = dict(c.poll())
    outcome = granted[ticket]
    assert isinstance(outcome, Permit)
    return outcome


def tokens_level(c: LimiterCore) -> float:
    stats = c.statistics().tokens
    assert stats is not None
    return stats.level


# --- the pure core ----------------------------------------------------------------------------


def test_limits_reject_impossible_values() -> None:
    """Impossible limits raise ConfigError naming the setting."""
    for bad in (
        {"rpm": 0},
        {"tpm": -5},
        {"tpm": math.inf},
        {"max_inflight": 0},
        {"initial_burst_s": 0},
        {"safety_margin": 0.6},
        {"headroom_s": -1},
    ):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            limits_of(**bad)


def test_initial_capacity_is_a_second_of_quota_not_a_minute() -> None:
    """Before any header the bucket holds initial_burst_s of quota, so the burst is bounded."""
    clock = FakeClock()
    c = core(clock, tpm=6000, initial_burst_s=1.0)  # 100 tokens/s
    for ticket in range(5):
        assert c.enqueue(20) == ticket
    assert len(c.poll()) == 5
    c.enqueue(20)
    assert c.poll() == []
    assert c.ready_at() == pytest.approx(0.2)


def test_fifo_big_head_is_served_before_smaller_later_requests() -> None:
    """A big request at the head blocks smaller ones behind it, so it is never starved."""
    clock = FakeClock()
    c = core(clock, tpm=6000)  # 100 tokens/s, capacity 100
    grant(c, 100)
    big = c.enqueue(80)
    smalls = [c.enqueue(10) for _ in range(3)]
    clock.advance(0.5)  # 50 tokens: every small one would fit, the big one not yet
    assert c.poll() == []
    assert c.ready_at() == pytest.approx(0.8)
    clock.advance(0.3)
    assert [ticket for ticket, _ in c.poll()] == [big]
    clock.advance(0.3)
    assert [ticket for ticket, _ in c.poll()] == smalls


def test_level_refills_over_time_up_to_capacity() -> None:
    """The level grows at limit/60 per second and stops at the capacity."""
    clock = FakeClock()
    c = core(clock, tpm=6000)
    grant(c, 100)
    assert tokens_level(c) == pytest.approx(0.0)
    clock.advance(0.25)
    assert tokens_level(c) == pytest.approx(25.0)
    clock.advance(10.0)
    assert tokens_level(c) == pytest.approx(100.0)


def test_safety_margin_keeps_part_of_the_bucket_free() -> None:
    """With a 10% margin a request waits until it fits with a tenth of the bucket to spare."""
    clock = FakeClock()
    c = core(clock, tpm=6000, safety_margin=0.1)
    grant(c, 50)
    c.enqueue(45)
    assert c.poll() == []
    assert c.ready_at() == pytest.approx(0.05)


def test_headroom_keeps_some_seconds_of_refill_free() -> None:
    """headroom_s of refill stays free even when the margin is a smaller share of the bucket."""
    clock = FakeClock()
    c = core(clock, tpm=6000, headroom_s=0.2)  # 20 tokens
    grant(c, 50)
    c.enqueue(40)
    assert c.poll() == []
    assert c.ready_at() == pytest.approx(0.1)


def test_request_above_the_minute_quota_raises_oversize_at_once() -> None:
    """A charge larger than a whole minute's tokens raises OversizeRequest instead of queueing."""
    clock = FakeClock()
    c = core(clock, tpm=6000)
    with pytest.raises(OversizeRequest, match="6001 tokens"):
        c.enqueue(6001)
    assert c.statistics().queued == 0


def test_charge_above_assumed_capacity_goes_when_the_bucket_is_full() -> None:
    """Before headers, a charge above the assumed capacity waits for a full bucket, not forever."""
    clock = FakeClock()
    c = core(clock, tpm=6000)
    grant(c, 50)
    c.enqueue(500)
    assert c.poll() == []
    clock.advance(0.5)
    assert len(c.poll()) == 1
    assert tokens_level(c) == pytest.approx(-400.0)


def test_learned_capacity_makes_larger_requests_oversize() -> None:
    """Once headers show a one-second bucket, queued and new requests above it fail at once."""
    clock = FakeClock()
    c = core(clock, tpm=6000)
    first = grant(c, 100)
    queued = c.enqueue(5000)
    per_second = RateLimitSnapshot(limit_tokens=6000, remaining_tokens=0, reset_tokens_s=1.0)
    c.complete(first, snapshot=per_second, used_tokens=None)
    stats = c.statistics().tokens
    assert stats is not None and stats.capacity_learned and stats.capacity == pytest.approx(100)
    [(ticket, outcome)] = c.poll()
    assert ticket == queued and isinstance(outcome, OversizeRequest)
    with pytest.raises(OversizeRequest):
        c.enqueue(150)


def test_capacity_is_learned_from_remaining_plus_reset() -> None:
    """remaining + reset x rate reveals a full minute's bucket, and the level jumps to it."""
    clock = FakeClock()
    c = core(clock, tpm=6000)
    permit = grant(c, 50)
    snap = RateLimitSnapshot(limit_tokens=6000, remaining_tokens=5950, reset_tokens_s=0.5)
    c.complete(permit, snapshot=snap, used_tokens=None)
    stats = c.statistics().tokens
    assert stats is not None
    assert stats.capacity_learned
    assert stats.capacity == pytest.approx(6000)
    assert stats.level == pytest.approx(5950)


def test_more_remaining_raises_the_level_and_less_lowers_it() -> None:
    """The server's remaining is the truth: the local level moves to match it."""
    clock = FakeClock()
    c = core(clock, tpm=6000)
    up = grant(c, 30)  # local level 70
    c.complete(up, snapshot=RateLimitSnapshot(remaining_tokens=90), used_tokens=None)
    assert tokens_level(c) == pytest.approx(90)
    down = grant(c, 30)  # local level 60
    c.complete(down, snapshot=RateLimitSnapshot(remaining_tokens=20), used_tokens=None)
    assert tokens_level(c) == pytest.approx(20)


def test_responses_in_flight_together_do_not_apply_one_correction_twice() -> None:
    """Two replies revealing the same offset move the level once, not twice."""
    clock = FakeClock()
    c = core(clock, tpm=6000)
    first, second = grant(c, 10), grant(c, 10)  # local levels 90 then 80
    # The server had 20 more than we thought, all along.
    c.complete(first, snapshot=RateLimitSnapshot(remaining_tokens=110), used_tokens=None)
    c.complete(second, snapshot=RateLimitSnapshot(remaining_tokens=100), used_tokens=None)
    assert tokens_level(c) == pytest.approx(100)


def test_good_news_ignores_charges_of_earlier_requests_still_in_flight() -> None:
    """A reply that may predate earlier requests' admission does not count them as refill."""
    clock = FakeClock()
    c = core(clock, tpm=60000, initial_burst_s=2.0)  # 1000 tokens/s, capacity 2000
    first = grant(c, 1500)
    clock.advance(0.6)
    second = grant(c, 100)  # local level 1000
    # The first is still on its way, so the server shows 1900: that is no room of ours.
    c.complete(second, snapshot=RateLimitSnapshot(remaining_tokens=1900), used_tokens=None)
    assert tokens_level(c) == pytest.approx(1000)
    # The first one's reply is older news: good news from it cannot raise the level either.
    c.complete(first, snapshot=RateLimitSnapshot(remaining_tokens=1950), used_tokens=None)
    assert tokens_level(c) == pytest.approx(1000)


def test_good_news_beyond_charges_still_in_flight_is_taken_less_them() -> None:
    """A bigger server bucket shows through, minus what earlier requests may still take."""
    clock = FakeClock()
    c = core(clock, tpm=60000, initial_burst_s=2.0)
    grant(c, 1500)
    clock.advance(0.6)
    second = grant(c, 100)  # local level 1000
    snap = RateLimitSnapshot(limit_tokens=60000, remaining_tokens=4400, reset_tokens_s=0.6)
    c.complete(second, snapshot=snap, used_tokens=None)
    assert tokens_level(c) == pytest.approx(4400 - 1500)


def test_bad_news_counts_beyond_what_later_requests_could_explain() -> None:
    """Less remaining lowers the level by what no order of admission could explain."""
    clock = FakeClock()
    c = core(clock, tpm=6000)
    first, _second = grant(c, 10), grant(c, 10)  # local levels 90 then 80
    # 40 less than modelled; the second request, if admitted first, explains 10 of it.
    c.complete(first, snapshot=RateLimitSnapshot(remaining_tokens=50), used_tokens=None)
    assert tokens_level(c) == pytest.approx(50)


def test_refill_between_grant_and_send_is_no_room_of_ours() -> None:
    """A request sent late (its reservation made durable first) reaches the server with the
    refill of that wait in its remaining: the model credited that refill itself already."""
    clock = FakeClock()
    c = core(clock, tpm=60000, initial_burst_s=2.0)  # 1000 tokens/s, capacity 2000
    first = grant(c, 1500)
    c.complete(first, snapshot=RateLimitSnapshot(remaining_tokens=500), used_tokens=None)
    late = grant(c, 400)  # local level 100
    clock.advance(0.6)  # local level 700
    c.sent(late)
    # The server admitted it now: 500 + 600 of refill - 400, as the model has it.
    c.complete(late, snapshot=RateLimitSnapshot(remaining_tokens=700), used_tokens=None)
    assert tokens_level(c) == pytest.approx(700)


def test_refill_a_full_server_wasted_while_a_request_waited_to_be_sent_is_taken_back() -> None:
    """Charged at its grant, a request makes the model refill from then; a full server bucket
    refills nothing until the request arrives: the model gives that refill back."""
    clock = FakeClock()
    c = core(clock, tpm=60000, initial_burst_s=2.0)
    late = grant(c, 1500)  # local level 500
    clock.advance(0.4)  # local level 900; the server, full, stays at 2000
    c.sent(late)
    c.complete(late, snapshot=RateLimitSnapshot(remaining_tokens=500), used_tokens=None)
    assert tokens_level(c) == pytest.approx(500)


def test_an_older_reply_is_not_read_after_a_newer_one() -> None:
    """Once a newer reply set the level, an older one cannot move it either way."""
    clock = FakeClock()
    c = core(clock, tpm=6000)
    first, second = grant(c, 10), grant(c, 10)  # local levels 90 then 80
    c.complete(second, snapshot=RateLimitSnapshot(remaining_tokens=60), used_tokens=None)
    assert tokens_level(c) == pytest.approx(60)
    c.complete(first, snapshot=RateLimitSnapshot(remaining_tokens=5), used_tokens=None)
    assert tokens_level(c) == pytest.approx(60)


def test_a_big_learned_bucket_is_spent_at_ten_times_the_rate_not_at_once() -> None:
    """After learning a minute's bucket, grants are spaced at 10x the rate, not sent in a lump."""
    clock = FakeClock()
    c = core(clock, tpm=6000)  # 100 tokens/s
    permit = grant(c, 100)
    snap = RateLimitSnapshot(limit_tokens=6000, remaining_tokens=5900, reset_tokens_s=1.0)
    c.complete(permit, snapshot=snap, used_tokens=None)
    assert tokens_level(c) == pytest.approx(5900)
    for _ in range(20):
        c.enqueue(100)
    granted = 0
    while granted < 20:
        ready = c.ready_at()
        assert ready is not None
        clock.advance(ready - clock.now())
        granted += len(c.poll())
    assert clock.now() == pytest.approx(2.0)  # 2000 tokens at 1000 tokens/s
    assert tokens_level(c) == pytest.approx(5900 - 2000 + 200)


def test_send_order_sums_match_a_plain_sum_through_window_moves() -> None:
    """In-flight charges sent before a request stay exact while the window slides and grows."""
    rng = random.Random(5)
    sums = _SendOrderSums()
    live: dict[int, float] = {}
    for seq in range(6000):
        amount = float(rng.randint(1, 9))
        sums.add(seq, amount)
        live[seq] = amount
        if seq % 3:
            # Most finish soon; seq 7 hangs for the whole run, holding the window open.
            done = rng.choice([s for s in list(live)[-50:] if s != 7])
            sums.remove(done)
            del live[done]
        if seq % 250 == 0:
            probe = rng.randint(0, seq + 1)
            assert sums.before(probe) == pytest.approx(sum(a for s, a in live.items() if s < probe))
    assert sums.total == pytest.approx(sum(live.values()))


def test_limit_header_lower_than_configured_is_adopted() -> None:
    """A configured limit 2x too high gives way to the server's limit-* headers."""
    clock = FakeClock()
    c = core(clock, rpm=600, tpm=60000)
    permit = grant(c, 100)
    snap = RateLimitSnapshot(limit_requests=300, limit_tokens=30000)
    c.complete(permit, snapshot=snap, used_tokens=None)
    stats = c.statistics()
    assert stats.tokens is not None and stats.requests is not None
    assert stats.tokens.limit_per_min == 30000
    assert stats.requests.limit_per_min == 300


def test_lower_learned_limit_replays_refill_at_the_new_rate() -> None:
    """Refill credited at the wrong, higher rate since the request was sent is taken back."""
    clock = FakeClock()
    c = core(clock, tpm=12000)  # we think 200 tokens/s
    permit = grant(c, 200)
    clock.advance(0.5)
    snap = RateLimitSnapshot(limit_tokens=6000, remaining_tokens=0, reset_tokens_s=2.0)
    c.complete(permit, snapshot=snap, used_tokens=None)
    assert tokens_level(c) == pytest.approx(50)  # 0.5 s at the real 100 tokens/s


def test_configured_limit_below_the_servers_caps_us_and_ignores_its_spare_room() -> None:
    """A user limit below the server's binds: the server's spare room does not raise the level."""
    clock = FakeClock()
    c = core(clock, tpm=6000)
    permit = grant(c, 50)
    snap = RateLimitSnapshot(limit_tokens=60000, remaining_tokens=59950)
    c.complete(permit, snapshot=snap, used_tokens=None)
    stats = c.statistics().tokens
    assert stats is not None
    assert stats.limit_per_min == 6000 and stats.server_per_min == 60000
    assert stats.level == pytest.approx(50)
    down = grant(c, 10)
    c.complete(down, snapshot=RateLimitSnapshot(remaining_tokens=5), used_tokens=None)
    assert tokens_level(c) == pytest.approx(5)  # someone else's use still lowers it


def test_unconfigured_limiter_probes_with_one_request_then_follows_headers() -> None:
    """With no limits set, one request goes first and its headers create the buckets."""
    clock = FakeClock()
    c = core(clock)
    probe = grant(c, 100)
    c.enqueue(100)
    assert c.poll() == []
    assert c.ready_at() is None
    snap = RateLimitSnapshot(limit_tokens=6000, remaining_tokens=5000, reset_tokens_s=10.0)
    c.complete(probe, snapshot=snap, used_tokens=None)
    stats = c.statistics().tokens
    assert stats is not None
    assert stats.limit_per_min == 6000 and stats.configured_per_min is None
    assert stats.capacity == pytest.approx(6000) and stats.level == pytest.approx(5000)
    assert len(c.poll()) == 1


def test_rejected_request_is_refunded_and_level_set_from_its_headers() -> None:
    """A 429 gives back its charge; its remaining header then sets the level."""
    clock = FakeClock()
    c = core(clock, tpm=6000)
    refunded = grant(c, 40)
    c.rejected(refunded, snapshot=None, retry_after=0.0)
    assert tokens_level(c) == pytest.approx(100)
    told = grant(c, 40)
    c.rejected(told, snapshot=RateLimitSnapshot(remaining_tokens=30), retry_after=0.0)
    assert tokens_level(c) == pytest.approx(30)


def test_refund_of_a_rejected_request_is_not_counted_again_by_later_responses() -> None:
    """A later request's remaining never included the rejected charge; it is not added twice."""
    clock = FakeClock()
    c = core(clock, tpm=6000, initial_burst_s=10.0)  # 100 tokens/s, capacity 1000
    first = grant(c, 400)
    clock.advance(0.6)
    second = grant(c, 200)  # local level 460
    c.rejected(first, snapshot=None, retry_after=0.0)  # refunded: 860
    # The server, which never held the first, stayed full until the second: 1000 - 200.
    c.complete(second, snapshot=RateLimitSnapshot(remaining_tokens=800), used_tokens=None)
    assert tokens_level(c) == pytest.approx(800)


def test_429_caps_the_level_even_when_a_newer_reply_was_read() -> None:
    """A 429's remaining plus the refill since its request was sent bounds the level."""
    clock = FakeClock()
    c = core(clock, tpm=6000)
    first, second = grant(c, 10), grant(c, 10)
    c.complete(second, snapshot=RateLimitSnapshot(remaining_tokens=80), used_tokens=None)
    clock.advance(0.1)
    c.rejected(first, snapshot=RateLimitSnapshot(remaining_tokens=20), retry_after=0.0)
    assert tokens_level(c) == pytest.approx(30)  # 20 then, and at most 10 refilled since


def test_release_refunds_only_requests_the_server_never_admitted_and_only_once() -> None:
    """admitted=False refunds the charge, admitted=True keeps it, a second release is a no-op."""
    clock = FakeClock()
    c = core(clock, tpm=6000)
    kept = grant(c, 40)
    c.release(kept, admitted=True)
    assert tokens_level(c) == pytest.approx(60)
    refused = grant(c, 40)
    c.release(refused, admitted=False)
    c.release(refused, admitted=False)
    c.complete(refused, snapshot=EMPTY, used_tokens=None)
    assert tokens_level(c) == pytest.approx(60)
    assert c.statistics().in_flight == 0


def test_unused_tokens_are_refunded_only_when_the_provider_counts_usage() -> None:
    """refund_unused gives back charge - used; the default (OpenAI) keeps the full charge."""
    for refund_unused, expected in ((True, 80.0), (False, 50.0)):
        clock = FakeClock()
        c = core(clock, tpm=6000, refund_unused=refund_unused)
        permit = grant(c, 50)
        c.complete(permit, snapshot=EMPTY, used_tokens=20)
        assert tokens_level(c) == pytest.approx(expected)


def test_max_inflight_caps_concurrency_until_a_permit_is_released() -> None:
    """max_inflight holds the queue while its slots are taken; freeing one lets the next go."""
    clock = FakeClock()
    c = core(clock, max_inflight=2)
    first, _second = grant(c, 1), grant(c, 1)
    c.enqueue(1)
    assert c.poll() == []
    assert c.ready_at() is None
    c.complete(first, snapshot=EMPTY, used_tokens=None)
    assert len(c.poll()) == 1
    assert c.statistics().in_flight == 2


def test_429_pauses_everyone_until_retry_after() -> None:
    """After a 429 with Retry-After nothing is granted until that time, then dispatch resumes."""
    clock = FakeClock()
    c = core(clock, rpm=6000, tpm=600000)
    c.rejected(grant(c, 10), snapshot=None, retry_after=2.0)
    assert c.statistics().paused_until == pytest.approx(2.0)
    c.enqueue(10)
    assert c.ready_at() == pytest.approx(2.0)
    clock.advance(1.9)
    assert c.poll() == []
    clock.advance(0.1)
    assert len(c.poll()) == 1
    assert c.statistics().paused_until is None


def test_429_without_retry_after_pauses_until_the_named_reset_allows_it() -> None:
    """Without Retry-After the pause lasts until the remaining header shows room for it."""
    clock = FakeClock()
    c = core(clock, tpm=60000)  # 1000 tokens/s
    snap = RateLimitSnapshot(remaining_tokens=0, reset_tokens_s=30.0)
    c.rejected(grant(c, 500), snapshot=snap, retry_after=None)
    assert c.statistics().paused_until == pytest.approx(0.5)


def test_unexplained_429_pauses_for_a_backoff_that_doubles() -> None:
    """A 429 with no headers at all pauses 0.5 s, and the next overload twice as long."""
    clock = FakeClock()
    c = core(clock, rpm=6000)
    c.rejected(grant(c, 1), snapshot=None, retry_after=None)
    assert c.statistics().paused_until == pytest.approx(0.5)
    clock.advance(0.5)
    c.rejected(grant(c, 1), snapshot=None, retry_after=None)
    assert c.statistics().paused_until == pytest.approx(1.5)


def test_rate_factor_cuts_once_per_overload_and_recovers_additively() -> None:
    """The first 429 of an overload slows the pace by 0.8, and later successes climb back."""
    clock = FakeClock()
    c = core(clock, rpm=60000)
    before = [grant(c, 1) for _ in range(3)]
    c.rejected(before[0], snapshot=None, retry_after=0.0)
    c.rejected(before[1], snapshot=None, retry_after=0.0)  # same overload: no second cut
    assert c.statistics().rate_factor == pytest.approx(0.8)
    c.complete(before[2], snapshot=EMPTY, used_tokens=None)  # sent at the old pace: no credit
    assert c.statistics().rate_factor == pytest.approx(0.8)
    for _ in range(5):
        c.complete(grant(c, 1), snapshot=EMPTY, used_tokens=None)
    assert c.statistics().rate_factor == pytest.approx(0.9)
    for _ in range(10):
        c.complete(grant(c, 1), snapshot=EMPTY, used_tokens=None)
    assert c.statistics().rate_factor == pytest.approx(1.0)


def test_rate_factor_never_drops_below_half_speed() -> None:
    """Overload after overload, the rate factor stops at 0.5."""
    clock = FakeClock()
    c = core(clock, rpm=60000)
    for _ in range(6):
        c.rejected(grant(c, 1), snapshot=None, retry_after=0.0)
    assert c.statistics().rate_factor == pytest.approx(0.5)


def test_reduced_rate_factor_slows_the_refill() -> None:
    """At a rate factor of 0.8 the bucket refills at 80% of the limit."""
    clock = FakeClock()
    c = core(clock, tpm=6000)
    c.rejected(grant(c, 100), snapshot=RateLimitSnapshot(remaining_tokens=0), retry_after=0.0)
    clock.advance(0.5)
    assert tokens_level(c) == pytest.approx(40)


def test_statistics_is_a_frozen_snapshot() -> None:
    """statistics() reports queue, slots, levels, factor and pause, and cannot be changed."""
    clock = FakeClock()
    c = core(clock, rpm=600, tpm=6000, max_inflight=4)
    grant(c, 60)
    c.enqueue(60)
    stats = c.statistics()
    assert (stats.queued, stats.in_flight, stats.granted, stats.rate_limited) == (1, 1, 1, 0)
    assert stats.tokens is not None and stats.tokens.level == pytest.approx(40)
    assert stats.requests is not None and stats.requests.capacity == pytest.approx(10)
    assert stats.rate_factor == 1.0 and stats.paused_until is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.queued = 0  # type: ignore[misc]


def test_cancelled_ticket_leaves_the_queue() -> None:
    """A cancelled ticket is skipped: the one behind it becomes the head."""
    clock = FakeClock()
    c = core(clock, tpm=6000)
    grant(c, 100)
    big, small = c.enqueue(90), c.enqueue(10)
    c.cancel(big)
    assert c.statistics().queued == 1
    assert c.ready_at() == pytest.approx(0.1)
    clock.advance(0.1)
    assert [ticket for ticket, _ in c.poll()] == [small]


# --- whole runs against a simulated provider, on a FakeClock -----------------------------------


class _Server:
    """An OpenAI-like key: request and token buckets that start full, headers on every reply."""

    def __init__(self, rpm: int, tpm: int, bucket_s: float, others_tps: float = 0.0) -> None:
        self.limit = {"requests": rpm, "tokens": tpm}
        self.rate = {k: v / 60.0 for k, v in self.limit.items()}
        self.capacity = {k: v * bucket_s for k, v in self.rate.items()}
        self.level = dict(self.capacity)
        self.others_tps = others_tps  # another process on the same key
        self.t = 0.0
        self.admitted = {"requests": 0.0, "tokens": 0.0}
        self.rejected = 0

    def _refill(self, now: float) -> None:
        for k in self.level:
            self.level[k] = min(self.capacity[k], self.level[k] + (now - self.t) * self.rate[k])
        self.level["tokens"] -= (now - self.t) * self.others_tps
        self.t = now

    def _snapshot(self) -> RateLimitSnapshot:
        def reset(k: str) -> float | None:
            to_full = (self.capacity[k] - max(0.0, self.level[k])) / self.rate[k]
            return parse_duration(format_duration(to_full))  # rounded as on the wire

        return RateLimitSnapshot(
            limit_requests=self.limit["requests"],
            limit_tokens=self.limit["tokens"],
            remaining_requests=max(0, math.floor(self.level["requests"])),
            remaining_tokens=max(0, math.floor(self.level["tokens"])),
            reset_requests_s=reset("requests"),
            reset_tokens_s=reset("tokens"),
        )

    def admit(self, now: float, tokens: int) -> tuple[bool, RateLimitSnapshot, float]:
        self._refill(now)
        if self.level["requests"] >= 1 and self.level["tokens"] >= tokens:
            self.level["requests"] -= 1
            self.level["tokens"] -= tokens
            self.admitted["requests"] += 1
            self.admitted["tokens"] += tokens
            return True, self._snapshot(), 0.0
        self.rejected += 1
        wait = max(
            (1 - self.level["requests"]) / self.rate["requests"],
            (tokens - self.level["tokens"]) / self.rate["tokens"],
        )
        return False, self._snapshot(), wait

    def utilisation(self, duration: float) -> float:
        """Share of the binding limit used, counting the full bucket the run started with."""
        return max(
            self.admitted[k] / (self.capacity[k] + self.rate[k] * duration) for k in self.rate
        )


@dataclasses.dataclass(order=True)
class _Event:
    """A request reaching the server (``reply`` None) or its reply reaching the limiter."""

    time: float
    order: int
    permit: Permit = dataclasses.field(compare=False)
    # The headers and, for a 429, the Retry-After.
    reply: tuple[RateLimitSnapshot, float | None] | None = dataclasses.field(
        compare=False, default=None
    )
    # False: the request still waits to be sent (``_run``'s batch_s), not yet on its way.
    sent: bool = dataclasses.field(compare=False, default=True)


def _run(
    limits: LimitsConfig,
    server: _Server,
    uplink: tuple[float, float] = (0.002, 0.002),
    latency: tuple[float, float] = (1.0, 3.0),
    batch_s: float | None = None,
) -> tuple[float, float, int]:
    """Keep the limiter saturated for 3 minutes; return utilisation, 429 share, requests sent.

    ``uplink`` bounds the random delay to the server: a wide one reorders requests on the way.
    ``latency`` bounds the time a reply takes once admitted. ``batch_s``: a granted request
    waits for the next multiple of it before it is sent (reservations made durable in one
    commit, as a loaded writer thread does), and the limiter is told when it goes.
    """
    duration = 180.0
    rng = random.Random(7)
    clock = FakeClock()
    c = LimiterCore(limits, clock)
    events: list[_Event] = []
    order = sent = queued = 0
    while True:
        for _ in range(100 - queued):
            c.enqueue(rng.randint(300, 1700))
        queued = 100
        for _, outcome in c.poll():
            assert isinstance(outcome, Permit)
            queued -= 1
            sent += 1
            order += 1
            if batch_s is None:
                heapq.heappush(events, _Event(clock.now() + rng.uniform(*uplink), order, outcome))
            else:
                at = math.floor(clock.now() / batch_s + 1) * batch_s
                heapq.heappush(events, _Event(at, order, outcome, sent=False))
        ready = c.ready_at()
        nxt = min(events[0].time if events else math.inf, math.inf if ready is None else ready)
        assert nxt < math.inf, "nothing in flight and nothing will ever be granted"
        if nxt >= duration:
            break
        clock.advance(max(0.0, nxt - clock.now()))
        while events and events[0].time <= clock.now():
            event = heapq.heappop(events)
            if not event.sent:
                c.sent(event.permit)
                order += 1
                at = clock.now() + rng.uniform(*uplink)
                heapq.heappush(events, _Event(at, order, event.permit))
                continue
            if event.reply is None:
                ok, snap, wait = server.admit(clock.now(), event.permit.tokens)
                took = rng.uniform(*latency) if ok else 0.005  # 429s come back at once
                order += 1
                reply = (snap, None if ok else wait)
                heapq.heappush(events, _Event(clock.now() + took, order, event.permit, reply))
                continue
            snap, retry_after = event.reply
            if retry_after is None:
                c.complete(event.permit, snapshot=snap, used_tokens=None)
            else:
                c.rejected(event.permit, snapshot=snap, retry_after=retry_after)
                c.enqueue(event.permit.tokens)  # the dispatcher queues it again
                queued += 1
    server._refill(duration)
    return server.utilisation(duration), server.rejected / sent, sent


FAST, SLOW = (1.0, 3.0), (5.0, 15.0)  # reply latencies
# Delays on the way to the server: wider ones reorder requests more.
ORDERED, REORDERED, SHUFFLED = (0.002, 0.002), (0.001, 0.3), (0.001, 0.5)


@pytest.mark.parametrize(
    ("limits", "server", "uplink", "latency"),
    [
        pytest.param(
            limits_of(rpm=10000, tpm=600000),
            lambda: _Server(10000, 600000, 60),
            ORDERED,
            FAST,
            id="minute-bucket",
        ),
        pytest.param(
            limits_of(rpm=10000, tpm=600000),
            lambda: _Server(10000, 600000, 60),
            REORDERED,
            SLOW,
            id="minute-bucket-reordered-slow",
        ),
        pytest.param(
            limits_of(rpm=600, tpm=6000000),
            lambda: _Server(600, 6000000, 60),
            ORDERED,
            FAST,
            id="rpm-binding",
        ),
        pytest.param(
            limits_of(rpm=10000, tpm=600000),
            lambda: _Server(10000, 600000, 1),
            ORDERED,
            FAST,
            id="per-second",
        ),
        pytest.param(
            limits_of(rpm=10000, tpm=600000),
            lambda: _Server(10000, 600000, 1),
            SHUFFLED,
            SLOW,
            id="per-second-shuffled-slow",
        ),
        pytest.param(
            limits_of(rpm=20000, tpm=1200000),
            lambda: _Server(10000, 600000, 60),
            REORDERED,
            FAST,
            id="configured-2x-too-high",
        ),
        pytest.param(
            limits_of(), lambda: _Server(10000, 600000, 60), ORDERED, FAST, id="nothing-configured"
        ),
    ],
)
def test_saturated_run_fills_the_limit_without_tripping_it(
    limits: LimitsConfig,
    server: Callable[[], _Server],
    uplink: tuple[float, float],
    latency: tuple[float, float],
) -> None:
    """A 3-minute saturated run uses >= 98% of the binding limit with <= 0.5% 429s."""
    utilisation, share_429, sent = _run(limits, server(), uplink, latency)
    assert sent > 1500
    assert utilisation >= 0.98
    assert share_429 <= 0.005


def test_requests_sent_in_batches_long_after_their_grant_do_not_trip_the_limit() -> None:
    """Requests that wait up to a second for their reservation's commit reach the server with
    that wait's refill in their headers; read as room, it ended in 429s (bench L at load 13)."""
    utilisation, share_429, sent = _run(
        limits_of(rpm=1200, tpm=300000), _Server(1200, 300000, 60), latency=(0.3, 1.2), batch_s=1.0
    )
    assert sent > 1000
    assert utilisation >= 0.98
    assert share_429 <= 0.005


@pytest.mark.parametrize("uplink", [ORDERED, REORDERED], ids=["ordered", "reordered"])
def test_another_process_on_the_key_is_learned_and_avoided(uplink: tuple[float, float]) -> None:
    """A process taking 30% of the tokens shows in the headers: our share fills, no 429 storm."""
    srv = _Server(10000, 600000, 60, others_tps=3000)
    utilisation, share_429, _ = _run(limits_of(rpm=10000, tpm=600000), srv, uplink)
    # What was ours: the initial bucket plus 70% of the refill, out of bucket + full refill.
    ours = (600000 + 7000 * 180) / (600000 + 10000 * 180)
    assert utilisation >= 0.98 * ours
    # Requests reordered on the way hide part of the other process's use for a while.
    assert share_429 <= (0.005 if uplink == ORDERED else 0.01)


# --- the async shell --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_acquire_returns_at_once_when_there_is_room() -> None:
    """With room in both buckets acquire hands out a permit holding an in-flight slot."""
    limiter = RateLimiter(limits_of(rpm=6000, tpm=600000))
    permit = await limiter.acquire(10)
    assert permit.tokens == 10
    assert limiter.statistics().in_flight == 1
    limiter.complete(permit, snapshot=EMPTY, used_tokens=None)
    limiter.complete(permit, snapshot=EMPTY, used_tokens=None)  # a second hand-back: no-op
    assert limiter.statistics().in_flight == 0


@pytest.mark.anyio
async def test_waiters_are_woken_by_the_timer_in_arrival_order() -> None:
    """Waiters of different sizes are granted first in, first out as tokens refill."""
    limiter = RateLimiter(limits_of(tpm=60000, initial_burst_s=0.01, safety_margin=0.0))
    await limiter.acquire(10)  # empties the 10-token bucket; refill is 1 token per ms
    order: list[str] = []

    async def take(name: str, tokens: int) -> None:
        await limiter.acquire(tokens)
        order.append(name)

    tasks = [
        asyncio.create_task(take(name, tokens))
        for name, tokens in (("big", 8), ("small-1", 1), ("small-2", 1))
    ]
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)
    assert order == ["big", "small-1", "small-2"]


@pytest.mark.anyio
async def test_cancelled_head_waiter_does_not_block_the_queue() -> None:
    """Cancelling the waiting head lets the waiter behind it through."""
    limiter = RateLimiter(limits_of(tpm=600, safety_margin=0.0))  # 10 tokens/s, capacity 10
    await limiter.acquire(10)
    head = asyncio.create_task(limiter.acquire(10))  # would wait a whole second
    behind = asyncio.create_task(limiter.acquire(1))  # 0.1 s once it is the head
    await asyncio.sleep(0)
    assert limiter.statistics().queued == 2
    head.cancel()
    permit = await asyncio.wait_for(behind, timeout=10)
    assert permit.tokens == 1
    assert head.cancelled()
    assert limiter.statistics().queued == 0


@pytest.mark.anyio
async def test_permit_granted_to_a_cancelled_task_is_returned() -> None:
    """A task cancelled after its permit was granted but before it resumed gives the slot back."""
    limiter = RateLimiter(limits_of(max_inflight=1))
    first = await limiter.acquire(1)
    waiter = asyncio.create_task(limiter.acquire(1))
    await asyncio.sleep(0)
    limiter.release(first, admitted=True)  # grants the waiter's future synchronously
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert limiter.statistics().in_flight == 0
    again = await asyncio.wait_for(limiter.acquire(1), timeout=10)
    assert again.tokens == 1


@pytest.mark.anyio
async def test_max_inflight_holds_acquire_until_release() -> None:
    """With every slot taken acquire waits; releasing a permit lets it through."""
    limiter = RateLimiter(limits_of(max_inflight=1))
    first = await limiter.acquire(1)
    waiter = asyncio.create_task(limiter.acquire(1))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    limiter.release(first, admitted=False)
    second = await asyncio.wait_for(waiter, timeout=10)
    assert second.id == first.id + 1


@pytest.mark.anyio
async def test_oversize_request_raises_at_once() -> None:
    """A request larger than the token bucket raises OversizeRequest instead of hanging."""
    limiter = RateLimiter(limits_of(tpm=600))
    with pytest.raises(OversizeRequest):
        await limiter.acquire(601)
    assert limiter.statistics().queued == 0


@pytest.mark.anyio
async def test_rejected_pauses_dispatch_then_resumes_slower() -> None:
    """After a 429 the limiter reports a pause and a lower rate, then grants again."""
    limiter = RateLimiter(limits_of(rpm=60000))
    permit = await limiter.acquire(1)
    limiter.rejected(permit, snapshot=None, retry_after=0.02)
    stats = limiter.statistics()
    assert stats.paused_until is not None
    assert stats.rate_factor == pytest.approx(0.8)
    assert stats.rate_limited == 1
    again = await asyncio.wait_for(limiter.acquire(1), timeout=10)
    assert again.id == permit.id + 1
