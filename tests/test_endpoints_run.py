"""Several endpoints in one run, against real simulators on loopback, each with its own key
and limits: they share the load within their own limits, one that fails for good is taken out,
and a run with none left stops early."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import duckdb
import pytest

from engine.app.run import execute_run
from engine.config import load_config
from engine.events import EndpointOut, Event
from engine.scheduler import RunStatus
from engine.simulator import SimSettings, Simulator, run_simulator
from tests.runfixtures import write_config

pytestmark = pytest.mark.anyio

KEYS = {"M2L_KEY_EAST": "sk-east-" + "Ea5" * 10, "M2L_KEY_WEST": "sk-west-" + "We5" * 10}


def endpoints_config(
    folder: Path,
    entries: Sequence[tuple[str, str, str] | tuple[str, str, str, str]],
    *,
    evols_per_seed: int = 2,
) -> Path:
    """The run fixture's config with ``[[providers]]`` entries ``(name, base_url, key env)``
    (and TOML lines of their own) in place of its ``[provider]``."""
    path = write_config(folder, evols_per_seed=evols_per_seed)
    text = path.read_text()
    provider = '[provider]\nkind = "sim"\nmodel = "gpt-4o-mini"\nread_timeout_s = 2.0\n'
    assert provider in text
    blocks = "".join(
        f'[[providers]]\nname = "{name}"\nkind = "openai"\nbase_url = "{url}"\n'
        f'api_key_env = "{env}"\nmodel = "gpt-4o-mini"\nread_timeout_s = 2.0\n{"".join(extra)}\n'
        for name, url, env, *extra in entries
    )
    path.write_text(text.replace(provider, blocks))
    return path


@contextlib.asynccontextmanager
async def simulators(*settings: SimSettings) -> AsyncIterator[list[Simulator]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(run_simulator(s)) for s in settings]


def fast(**kw: object) -> SimSettings:
    base: dict[str, object] = {"ttft_s": 0.0, "per_token_s": 0.0, "jitter": 0.0, "seed": 11}
    base.update(kw)
    return SimSettings(**base)  # type: ignore[arg-type]


class Events:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def on_event(self, event: Event) -> None:
        self.events.append(event)


def by_endpoint(run_dir: Path) -> dict[str | None, tuple[int, int, set[str]]]:
    """(attempts, answered, models) per endpoint, from the run's request log."""
    with duckdb.connect(str(run_dir / "state.duckdb"), read_only=True) as conn:
        rows = conn.execute(
            "SELECT endpoint, count(*), count(*) FILTER (WHERE status = 'ok'), list(DISTINCT "
            "model) FROM requests GROUP BY 1"
        ).fetchall()
    return {e: (int(n), int(ok), set(models)) for e, n, ok, models in rows}


async def test_two_endpoints_share_the_load_each_within_its_own_limits(tmp_path: Path) -> None:
    """Two keys with their own limits: both serve, neither answers 429 more than a stray time,
    and every attempt records the endpoint and model that made it."""
    east = fast(require_api_key=KEYS["M2L_KEY_EAST"], rpm=600, bucket_seconds=2.0)
    west = fast(require_api_key=KEYS["M2L_KEY_WEST"], rpm=1200, bucket_seconds=2.0)
    async with simulators(east, west) as (a, b):
        path = endpoints_config(
            tmp_path,
            [
                ("east", a.base_url, "M2L_KEY_EAST", "limits = { rpm = 600 }"),
                ("west", b.base_url, "M2L_KEY_WEST", "limits = { rpm = 1200 }"),
            ],
        )
        config = load_config(path)
        report = await execute_run(config, env=KEYS)
        served = {"east": a.stats(), "west": b.stats()}
    assert report.result.status is RunStatus.FINISHED, report.result.message
    log = by_endpoint(config.run_dir)
    assert set(log) == {"east", "west"}
    for name, stats in served.items():
        attempts, answered, models = log[name]
        assert answered > 0 and models == {"gpt-4o-mini"}
        rate_limited = sum(stats["rate_limited"].values())  # type: ignore[attr-defined]
        # Each endpoint is paced by its own limiter: at most a stray 429 while it learns.
        assert rate_limited <= max(1, attempts // 100), (name, stats)
        assert stats["admitted"] == answered, (name, stats)


async def test_an_endpoint_with_a_rejected_key_is_taken_out_and_the_run_finishes(
    tmp_path: Path,
) -> None:
    """A 401 on one key takes that endpoint out with a message; the other finishes the run."""
    good = fast(require_api_key=KEYS["M2L_KEY_EAST"])
    bad = fast(require_api_key="sk-another-key-altogether-000")
    recorder = Events()
    async with simulators(good, bad) as (a, b):
        path = endpoints_config(
            tmp_path,
            [("east", a.base_url, "M2L_KEY_EAST"), ("west", b.base_url, "M2L_KEY_WEST")],
        )
        config = load_config(path)
        report = await execute_run(config, env=KEYS, hooks=recorder)
    assert report.result.status is RunStatus.FINISHED, report.result.message
    assert report.counts.get("done", 0) + report.counts.get("filtered", 0) == sum(
        report.counts.values()
    )
    outs = [e for e in recorder.events if isinstance(e, EndpointOut)]
    assert [e.endpoint for e in outs] == ["west"]
    assert "401" in outs[0].message and "M2L_KEY_WEST" in outs[0].message
    assert KEYS["M2L_KEY_WEST"] not in outs[0].message
    log = by_endpoint(config.run_dir)
    assert log["west"][1] == 0 and log["east"][1] > 0


async def test_every_endpoint_failing_stops_the_run_early(tmp_path: Path) -> None:
    """Both keys rejected: the run stops at once, failed, naming each endpoint and why."""
    recorder = Events()
    async with simulators(fast(require_api_key="sk-x-1"), fast(require_api_key="sk-x-2")) as (
        a,
        b,
    ):
        path = endpoints_config(
            tmp_path,
            [("east", a.base_url, "M2L_KEY_EAST"), ("west", b.base_url, "M2L_KEY_WEST")],
        )
        config = load_config(path)
        report = await execute_run(config, env=KEYS, hooks=recorder)
        attempts = a.stats()["requests"] + b.stats()["requests"]  # type: ignore[operator]
    assert report.result.status is RunStatus.FAILED
    message = report.result.message
    assert "every endpoint is out" in message and "east" in message and "west" in message
    assert "M2L_KEY_EAST" in message and "M2L_KEY_WEST" in message
    assert all(key not in message for key in KEYS.values())
    # Stopped early: a handful of tries, not one per conversation.
    assert attempts < 40
    assert {e.endpoint for e in recorder.events if isinstance(e, EndpointOut)} == {"east", "west"}
