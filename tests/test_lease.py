"""The coordinator's leases of a sharded run (engine.lease), and a shard's limiter and ledger
under them, driven by a fake clock: shares never add up past the limit, a finished shard's share
and allowance go to the others, grants stay small and the caps hold in total."""

from __future__ import annotations

import pytest

from budgets.ledger import ZERO, Ledger, Spend
from budgets.prices import to_nano
from engine._bucket import LimiterCore
from engine.clock import FakeClock
from engine.config import BudgetConfig, LimitsConfig
from engine.errors import BudgetExhausted
from engine.headers import RateLimitSnapshot
from engine.lease import DEFAULT_TERM_S, LeaseBook
from state.requestlog import Ticket

CAP = BudgetConfig(usd=1.0)


def usd(x: float) -> Spend:
    return Spend(to_nano(x), 0, 0)


def test_every_unfinished_shard_gets_an_equal_share_from_the_start() -> None:
    """Three shards starting together hold a third of the limits each, never more in total."""
    book = LeaseBook(3, BudgetConfig(), clock=FakeClock())
    shares = [book.start(i, ZERO).share for i in range(3)]
    assert shares == pytest.approx([1 / 3] * 3)
    assert sum(book.stats().shares) <= 1.0 + 1e-12


def test_a_finished_shards_share_goes_to_the_others_at_their_next_renewal() -> None:
    """When shard 0 finishes, shards 1 and 2 each grow to a half."""
    clock = FakeClock()
    book = LeaseBook(3, BudgetConfig(), clock=clock)
    for i in range(3):
        book.start(i, ZERO)
    book.finish(0, ZERO)
    clock.advance(0.5)
    assert book.renew(1, ZERO).share == pytest.approx(0.5)
    assert book.renew(2, ZERO).share == pytest.approx(0.5)
    assert sum(book.stats().shares) <= 1.0 + 1e-12


def test_a_share_grows_only_out_of_what_no_live_lease_holds() -> None:
    """A shard started again while another holds the whole limit waits for its part: the sum
    of live shares stays within the limit at every moment."""
    clock = FakeClock()
    book = LeaseBook(2, BudgetConfig(), clock=clock)
    book.start(0, ZERO)
    book.start(1, ZERO)
    # Shard 1 finishes, shard 0 grows to the whole limit; then shard 1 is started again (a
    # resumed run gives it more work): it gets only what shard 0's live lease leaves free.
    book.finish(1, ZERO)
    assert book.renew(0, ZERO).share == pytest.approx(1.0)
    assert book.start(1, ZERO).share == pytest.approx(0.0)
    assert sum(book.stats().shares) <= 1.0 + 1e-12
    # Shard 0 renews at its half; shard 1 then takes the rest.
    clock.advance(0.5)
    assert book.renew(0, ZERO).share == pytest.approx(0.5)
    assert book.renew(1, ZERO).share == pytest.approx(0.5)


def test_a_dead_shards_lease_lapses_after_its_term() -> None:
    """A shard that stops renewing holds nothing once its term is over (it keeps its claim)."""
    clock = FakeClock()
    book = LeaseBook(2, BudgetConfig(), clock=clock)
    book.start(0, ZERO)
    book.start(1, ZERO)
    clock.advance(DEFAULT_TERM_S + 0.01)
    book.renew(0, ZERO)
    assert book.stats().shares == pytest.approx((0.5, 0.0))


def test_grants_are_small_and_never_pass_the_cap_in_total() -> None:
    """Shards spending as fast as they are granted: each grant is a small part of the cap, the
    allowances never add up past it, and at the end they have been granted nearly all of it."""
    clock = FakeClock()
    book = LeaseBook(2, CAP, clock=clock)
    committed = [ZERO, ZERO]
    leases = [book.start(i, ZERO) for i in range(2)]
    assert all(lease.allowance.nano <= to_nano(1.0) // 8 for lease in leases)
    for _ in range(200):
        for i in range(2):
            lease = book.renew(i, committed[i])
            # The shard commits all it was allowed.
            committed[i] = Spend(lease.allowance.nano, 0, 0)
            assert book.stats().allocated.nano <= to_nano(1.0)
        clock.advance(0.1)
    assert sum(c.nano for c in committed) >= to_nano(1.0) * 0.999
    assert book.renew(0, committed[0]).exhausted


def test_a_finished_shard_gives_back_what_it_did_not_commit() -> None:
    """Shard 0 finishes having used little: the rest of its allowance can go to shard 1."""
    book = LeaseBook(2, CAP, clock=FakeClock())
    book.start(0, ZERO)
    book.start(1, ZERO)
    book.finish(0, usd(0.01))
    lease = book.renew(1, ZERO, need=usd(0.95))
    assert lease.allowance.nano == to_nano(0.95)
    assert book.stats().left.nano == to_nano(1.0) - to_nano(0.95) - to_nano(0.01)


def test_a_restarted_shards_allowance_covers_what_its_log_holds() -> None:
    """After a kill the shard's log (worst cases of open attempts) is the truth: a new
    coordinator counts it as allocated, so the others get only what is left."""
    book = LeaseBook(2, CAP, clock=FakeClock())
    book.start(0, usd(0.7))
    lease = book.start(1, ZERO)
    assert book.stats().allocated.nano <= to_nano(1.0)
    assert lease.outlook.nano <= to_nano(0.3)


def test_uncapped_quantities_are_not_leased() -> None:
    """With no cap the allowance stays zero and the lease never says exhausted."""
    book = LeaseBook(2, BudgetConfig(), clock=FakeClock())
    lease = book.start(0, usd(5.0))
    assert lease.allowance == ZERO
    assert not lease.exhausted


def test_a_shard_number_out_of_range_is_refused() -> None:
    """A shard the run does not have is an error, not a silent new claim."""
    book = LeaseBook(2, BudgetConfig(), clock=FakeClock())
    with pytest.raises(ValueError, match="shard 2"):
        book.start(2, ZERO)


def test_a_ledger_under_a_lease_reserves_within_its_allowance() -> None:
    """The shard's ledger refuses a reservation past its allowance, though the cap has room;
    a larger allowance lets it through."""
    ledger = Ledger(CAP)
    ledger.set_lease(usd(0.01), usd(0.5))
    ledger.reserve(Ticket(1, 0.006, 10))
    with pytest.raises(BudgetExhausted):
        ledger.reserve(Ticket(2, 0.006, 10))
    # Admission plans against the outlook, not the allowance.
    assert ledger.shortfall(usd(0.4), count_reserved=False) is None
    assert ledger.shortfall(usd(0.6), count_reserved=False) is not None
    ledger.set_lease(usd(0.02), usd(0.5))
    ledger.reserve(Ticket(2, 0.006, 10))


def _limits(rpm: int) -> LimitsConfig:
    return LimitsConfig(rpm=rpm, tpm=None, initial_burst_s=1.0)


def _saturate(cores: list[LimiterCore], clock: FakeClock, seconds: float) -> int:
    """Requests granted to saturated limiters side by side (each completed at once)."""
    granted = 0
    for _ in range(round(seconds / 0.01)):
        for core in cores:
            core.enqueue(10)  # twice the limit's pace: always a request waiting
            core.enqueue(10)
            for _ticket, permit in core.poll():
                assert not isinstance(permit, Exception)
                core.complete(permit, snapshot=RateLimitSnapshot(), used_tokens=None)
                granted += 1
        clock.advance(0.01)
    return granted


def test_two_shards_together_are_paced_at_the_whole_limit() -> None:
    """Two limiters at half share each grant together what one limiter grants alone."""
    clock = FakeClock()
    one = _saturate([LimiterCore(_limits(6000), clock)], clock, 10.0)
    clock = FakeClock()
    halves = [LimiterCore(_limits(6000), clock), LimiterCore(_limits(6000), clock)]
    for core in halves:
        core.set_share(0.5)
    both = _saturate(halves, clock, 10.0)
    assert one == pytest.approx(100 * 10, rel=0.1)  # 100/s for 10 s, and a 1 s burst
    assert both == pytest.approx(one, rel=0.02)


def test_a_shard_reads_the_servers_room_as_not_its_own() -> None:
    """Headers showing a full server bucket do not lift a half-share shard's level: the room
    is the other shard's too."""
    clock = FakeClock()
    core = LimiterCore(_limits(6000), clock)
    core.set_share(0.5)
    granted = 0
    for _ in range(300):
        core.enqueue(10)
        for _ticket, permit in core.poll():
            assert not isinstance(permit, Exception)
            core.complete(
                permit,
                snapshot=RateLimitSnapshot(
                    limit_requests=6000, remaining_requests=5999, reset_requests_s=0.01
                ),
                used_tokens=None,
            )
            granted += 1
        clock.advance(0.01)
    # 3 s at 50 requests/s plus a burst of at most its share of the learned bucket.
    assert granted <= 3 * 50 + 3000 * 0.5 * 0.01 * 60 + 60
    assert core.statistics().requests is not None
    assert core.statistics().requests.limit_per_min == pytest.approx(3000)
