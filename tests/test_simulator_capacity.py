"""The simulator's server-capacity model: slots, batch slowdown, a queue, 503 when it is full."""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
import orjson
import pytest

from engine.app.sim import add_sim_parser, settings_from_args
from engine.clock import FakeClock
from engine.errors import ConfigError
from engine.simulator import SimSettings, run_simulator
from engine.simulator.capacity import QueueFull, SlotModel


def finish_all(model: SlotModel, clock: FakeClock) -> dict[int, float]:
    """Run the model's own event times until every job finished; job -> finish time."""
    done: dict[int, float] = {}
    while (at := model.next_finish_at()) is not None:
        clock.advance(max(0.0, at - clock.now()))
        for job in model.poll():
            done[job] = clock.now()
    return done


def test_one_slot_serves_in_arrival_order() -> None:
    """With one slot, requests queue: each finishes one service time after the one before."""
    clock = FakeClock()
    model = SlotModel(clock, slots=1)
    jobs = [model.submit(2.0) for _ in range(3)]
    assert (model.busy, model.queued) == (1, 2)
    done = finish_all(model, clock)
    assert [done[j] for j in jobs] == pytest.approx([2.0, 4.0, 6.0])


def test_a_full_batch_is_slower_per_request_but_faster_in_total() -> None:
    """8 slots, slowdown 1.5: 8 requests of 1 s take 1.5 s together (5.3x one slot's rate)."""
    clock = FakeClock()
    model = SlotModel(clock, slots=8, slowdown=1.5)
    for _ in range(8):
        model.submit(1.0)
    done = finish_all(model, clock)
    assert list(done.values()) == pytest.approx([1.5] * 8)
    assert model.speed(1) == 1.0
    assert model.speed(8) == pytest.approx(1 / 1.5)
    assert model.speed(1) > model.speed(4) > model.speed(8)


def test_speed_changes_as_slots_free_up() -> None:
    """A short job finishing speeds the long one up: its work is integrated piecewise."""
    clock = FakeClock()
    model = SlotModel(clock, slots=2, slowdown=2.0)
    short, long = model.submit(1.0), model.submit(3.0)
    done = finish_all(model, clock)
    # Both run at half speed until the short one is done at t=2 (the long one has 2 s left),
    # then the long one runs alone at full speed.
    assert done[short] == pytest.approx(2.0)
    assert done[long] == pytest.approx(4.0)


def test_queue_bound_refuses_and_cancel_frees_a_slot() -> None:
    """A full queue refuses new work; a cancelled job gives its slot to the next in line."""
    clock = FakeClock()
    model = SlotModel(clock, slots=1, queue_limit=1)
    first, second = model.submit(5.0), model.submit(1.0)
    with pytest.raises(QueueFull):
        model.submit(1.0)
    clock.advance(1.0)
    model.cancel(first)
    assert (model.busy, model.queued) == (1, 0)
    done = finish_all(model, clock)
    assert done == {second: pytest.approx(2.0)}


def test_capacity_settings_are_validated() -> None:
    """Impossible capacity settings are config errors naming the field."""
    for bad, name in (
        ({"slots": 0}, "slots"),
        ({"batch_slowdown": 0.5}, "batch_slowdown"),
        ({"queue_limit": -1}, "queue_limit"),
    ):
        with pytest.raises(ConfigError, match=name):
            SimSettings(**bad)  # type: ignore[arg-type]


async def _timed_post(session: aiohttp.ClientSession, url: str, i: int) -> tuple[int, float]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    body = {"model": "m", "messages": [{"role": "user", "content": f"q{i}"}], "max_tokens": 30}
    async with session.post(url, data=orjson.dumps(body)) as response:
        await response.read()
        return response.status, loop.time() - start


@pytest.mark.anyio
async def test_server_queues_behind_its_slots_and_answers_503_when_full() -> None:
    """Over HTTP: one slot makes the second request wait for the first; a full queue gets 503."""
    settings = SimSettings(ttft_s=0.15, per_token_s=0.0, jitter=0.0, slots=1, queue_limit=1)
    async with run_simulator(settings) as sim, aiohttp.ClientSession() as session:
        url = sim.base_url + "/chat/completions"
        results = await asyncio.gather(*(_timed_post(session, url, i) for i in range(3)))
        stats = sim.stats()
    statuses = sorted(status for status, _ in results)
    assert statuses == [200, 200, 503]
    served = sorted(t for status, t in results if status == 200)
    assert served[1] >= 2 * 0.15 - 0.01  # waited a whole service time in the queue
    assert stats["slots"] == {"slots": 1, "busy": 0, "queued": 0, "queue_full": 1}


def test_m2l_sim_takes_the_capacity_model() -> None:
    """`m2l sim --slots 4 --batch-slowdown 2 --queue-limit 8` sets the capacity model; without
    --slots the simulator has no slot limit; a wrong value is a config error."""
    parser = argparse.ArgumentParser()
    add_sim_parser(parser.add_subparsers())
    args = parser.parse_args(["sim", "--slots", "4", "--batch-slowdown", "2", "--queue-limit", "8"])
    settings = settings_from_args(args, {})
    assert (settings.slots, settings.batch_slowdown, settings.queue_limit) == (4, 2.0, 8)
    assert settings_from_args(parser.parse_args(["sim"]), {}).slots is None
    with pytest.raises(ConfigError, match="slots"):
        settings_from_args(parser.parse_args(["sim", "--slots", "0"]), {})
