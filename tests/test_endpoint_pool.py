"""The endpoint pool on virtual time: one line, first come first served across endpoints; each
endpoint paced by its own limiter and gate; shares by weight; one taken out, then none left;
and the dispatcher sending a request elsewhere when its endpoint fails for good."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from engine.chat import ChatRequest, ChatResult, Delivery, Message, Usage
from engine.concurrency import ConcurrencyGate
from engine.config import LimitsConfig, RetryConfig
from engine.dispatcher import Dispatcher
from engine.endpoints import Endpoint, EndpointPool, Lease, preference
from engine.errors import AuthenticationFailed, FatalRunError, ModelNotFound, OversizeRequest
from engine.events import EndpointOut, Event
from engine.headers import RateLimitSnapshot
from engine.health import RunHealth
from engine.limiter import RateLimiter
from tests.virtualtime import run_virtual


class LoopClock:
    """The running loop's (virtual) time, so limiters and the loop's timers agree."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()


class Reply:
    """A completer that answers at once, or raises ``error`` on every request."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.calls = 0

    async def complete(
        self, request: ChatRequest, *, delivery: Delivery | None = None
    ) -> ChatResult:
        self.calls += 1
        await asyncio.sleep(0.01)
        if self.error is not None:
            raise self.error
        return ChatResult("fine", "stop", Usage(10, 5), "m", RateLimitSnapshot(), 0.01)


def endpoint(name: str, *, rpm: float | None = None, tpm: float | None = None, slots: int = 64,
             weight: float = 1.0, client: Reply | None = None) -> Endpoint:  # fmt: skip
    clock = LoopClock()
    limits = LimitsConfig(rpm=rpm, tpm=tpm, max_inflight=slots, initial_burst_s=1.0,
                          safety_margin=0.0, headroom_s=0.0)  # fmt: skip
    return Endpoint(
        name,
        "gpt-4o-mini",
        client or Reply(),
        RateLimiter(limits, clock=clock),
        ConcurrencyGate(fixed=slots, clock=clock),
        RunHealth(RetryConfig(), systematic_window=0),
        weight=weight,
    )


def hand_back(pool: EndpointPool, lease: Lease) -> None:
    lease.land(completion_tokens=5)
    lease.endpoint.limiter.complete(lease.permit, snapshot=RateLimitSnapshot(), used_tokens=15)
    pool.landed()


def test_preference_is_least_load_for_weight_then_order() -> None:
    """Endpoints that can all take a request share by weight; ties keep the configured order."""
    assert preference([(0, 1.0), (0, 1.0)]) == [0, 1]
    assert preference([(3, 1.0), (3, 2.0)]) == [1, 0]
    assert preference([(1, 1.0), (3, 2.0)]) == [0, 1]


def test_weights_share_requests_that_all_endpoints_could_take() -> None:
    """With room everywhere, leases split in proportion to the weights (1 : 2)."""

    async def main() -> Counter[str]:
        pool = EndpointPool([endpoint("a"), endpoint("b", weight=2.0)], clock=LoopClock())
        leases = [await pool.acquire(10) for _ in range(30)]
        return Counter(lease.endpoint.name for lease in leases)

    counts, _ = run_virtual(main())
    assert counts == {"a": 10, "b": 20}


def test_requests_go_first_come_first_served_to_whichever_endpoint_frees_first() -> None:
    """One slot each: the third request waits, and takes the first slot that comes back; the
    fourth, queued behind it, never passes it."""

    async def main() -> list[str]:
        pool = EndpointPool([endpoint("a", slots=1), endpoint("b", slots=1)], clock=LoopClock())
        first, second = await pool.acquire(10), await pool.acquire(10)
        order: list[str] = []

        async def wait(label: str) -> Lease:
            lease = await pool.acquire(10)
            order.append(f"{label}@{lease.endpoint.name}")
            return lease

        third = asyncio.create_task(wait("third"))
        await asyncio.sleep(0)
        fourth = asyncio.create_task(wait("fourth"))
        await asyncio.sleep(1.0)
        assert order == [] and pool.queued == 0  # waiting for slots, not for a rate limit
        hand_back(pool, second)  # b frees first
        await asyncio.sleep(0)
        hand_back(pool, first)
        await asyncio.gather(third, fourth)
        return order

    order, _ = run_virtual(main())
    assert order == ["third@b", "fourth@a"]


def test_each_endpoint_is_paced_by_its_own_rate_limit() -> None:
    """At 60 and 120 requests a minute, ten seconds of demand get about 10 and 20 leases, and
    neither endpoint is granted faster than its own rate."""

    async def main() -> tuple[Counter[str], float]:
        pool = EndpointPool([endpoint("a", rpm=60), endpoint("b", rpm=120)], clock=LoopClock())
        loop = asyncio.get_running_loop()
        counts: Counter[str] = Counter()

        async def one() -> None:
            lease = await pool.acquire(10)
            counts[lease.endpoint.name] += 1
            hand_back(pool, lease)

        start = loop.time()
        await asyncio.gather(*(one() for _ in range(33)))
        return counts, loop.time() - start

    (counts, elapsed), _ = run_virtual(main())
    # Each starts with initial_burst_s (1 s) of quota, then refills at its own rate.
    assert counts["a"] <= 1 + elapsed * 1.0 + 1e-6
    assert counts["b"] <= 2 + elapsed * 2.0 + 1e-6
    assert 9.0 <= elapsed <= 11.0, elapsed  # both limits used together: 3 a second
    assert counts["b"] > counts["a"] > 0


def test_a_request_too_large_for_one_endpoint_goes_to_another() -> None:
    """The token bucket of a small endpoint cannot hold it; a bigger one takes it; none can:
    OversizeRequest."""

    async def main() -> tuple[str, type[BaseException] | None]:
        pool = EndpointPool(
            [endpoint("small", tpm=600), endpoint("big", tpm=60_000)], clock=LoopClock()
        )
        lease = await pool.acquire(5_000)
        try:
            await pool.acquire(200_000)
        except OversizeRequest as exc:
            return lease.endpoint.name, type(exc)
        return lease.endpoint.name, None

    (name, raised), _ = run_virtual(main())
    assert (name, raised) == ("big", OversizeRequest)


def test_waiters_fail_when_the_last_endpoint_is_taken_out() -> None:
    """Taking one endpoint out leaves the run going; taking the last out fails every waiter
    with one error that names each endpoint and why it is out."""

    async def main() -> tuple[FatalRunError | None, str]:
        a, b = endpoint("a", slots=1), endpoint("b", slots=1)
        pool = EndpointPool([a, b], clock=LoopClock())
        await pool.acquire(10), await pool.acquire(10)
        waiter = asyncio.create_task(pool.acquire(10))
        await asyncio.sleep(0)
        first = pool.take_out(a, AuthenticationFailed("401 on a's key"))
        last = pool.take_out(b, ModelNotFound("deployment b is gone"))
        with pytest.raises(FatalRunError) as raised:
            await waiter
        assert raised.value is last
        return first, str(last)

    (first, message), _ = run_virtual(main())
    assert first is None
    assert "every endpoint is out" in message
    assert "a: 401 on a's key" in message and "b: deployment b is gone" in message


def request() -> ChatRequest:
    return ChatRequest((Message("user", "hi", 5),), max_tokens=20, key="1:0")


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def on_event(self, event: Event) -> None:
        self.events.append(event)


def test_the_dispatcher_sends_elsewhere_when_an_endpoint_fails_for_good() -> None:
    """A 401 on one endpoint takes it out (one EndpointOut event) and the reply comes from the
    other; later requests go only to the one left."""

    async def main() -> tuple[list[str], int, int, list[Event]]:
        bad, good = Reply(AuthenticationFailed("rejected key (401)")), Reply()
        recorder = Recorder()
        pool = EndpointPool(
            [endpoint("bad", client=bad, weight=10.0), endpoint("good", client=good)],
            clock=LoopClock(),
            hooks=recorder,
        )
        dispatcher = Dispatcher.over(pool, hooks=recorder)
        replies = [await dispatcher.complete(request()) for _ in range(5)]
        return [r.content for r in replies], bad.calls, good.calls, recorder.events

    (contents, bad_calls, good_calls, events), _ = run_virtual(main())
    assert contents == ["fine"] * 5
    assert (bad_calls, good_calls) == (1, 5)
    outs = [e for e in events if isinstance(e, EndpointOut)]
    assert [(e.endpoint, e.left) for e in outs] == [("bad", 1)]


def test_the_dispatcher_stops_when_no_endpoint_is_left() -> None:
    """Every endpoint fails for good: the request raises one FatalRunError naming them all."""

    async def main() -> str:
        pool = EndpointPool(
            [
                endpoint("a", client=Reply(AuthenticationFailed("a: 401"))),
                endpoint("b", client=Reply(ModelNotFound("b: 404"))),
            ],
            clock=LoopClock(),
        )
        with pytest.raises(FatalRunError) as raised:
            await Dispatcher.over(pool).complete(request())
        return str(raised.value)

    message, _ = run_virtual(main())
    assert "every endpoint is out" in message and "a: 401" in message and "b: 404" in message
