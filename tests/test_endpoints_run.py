"""Several endpoints in one run, against real simulators on loopback, each with its own key
and limits: they share the load within their own limits, one that fails for good is taken out,
and a run with none left stops early."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import duckdb
import pytest
from rich.console import Console

from engine.app.run import execute_run
from engine.config import load_config
from engine.events import EndpointOut, Event
from engine.progress.dashboard import Dashboard
from engine.progress.store import read_store
from engine.scheduler import RunStatus
from engine.simulator import SimSettings, Simulator, run_simulator
from state.stats import compute_stats
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
    east = fast(require_api_key=KEYS["M2L_KEY_EAST"], rpm=1200, bucket_seconds=1.0)
    west = fast(require_api_key=KEYS["M2L_KEY_WEST"], rpm=2400, bucket_seconds=1.0)
    async with simulators(east, west) as (a, b):
        path = endpoints_config(
            tmp_path,
            [
                ("east", a.base_url, "M2L_KEY_EAST", "limits = { rpm = 1200 }"),
                ("west", b.base_url, "M2L_KEY_WEST", "limits = { rpm = 2400 }"),
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
    # Per-endpoint figures: the store's (m2l status), the dashboard's and the statistics'.
    snapshot = read_store(config.run_dir / "state.duckdb")
    figures = {e.name: e for e in snapshot.endpoints}
    assert set(figures) == {"east", "west"}
    for name in figures:
        assert figures[name].ok == log[name][1] and figures[name].model == "gpt-4o-mini"
        assert figures[name].out is None
    assert snapshot.rpm_limit == 3600  # the endpoints' limits, summed
    console = Console(width=100, record=True, color_system=None)
    console.print(Dashboard(snapshot))
    drawn = console.export_text()
    assert "endpoints" in drawn and "east" in drawn and "west" in drawn
    with duckdb.connect(str(config.run_dir / "state.duckdb"), read_only=True) as conn:
        stats = compute_stats(conn, run="t")
    spent = {b.key: b.spend.ok for b in stats.by_endpoint}
    assert spent == {f"{n} · gpt-4o-mini": log[n][1] for n in ("east", "west")}


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
    # `m2l status` says which endpoint was taken out and why.
    figures = {e.name: e for e in read_store(config.run_dir / "state.duckdb").endpoints}
    assert figures["east"].out is None
    assert figures["west"].out is not None and "401" in figures["west"].out


@pytest.mark.slow
async def test_every_endpoint_failing_stops_the_run_early(tmp_path: Path) -> None:
    """Both keys rejected: `m2l run` stops at once with exit 1 and one message naming each
    endpoint, its entry and why it is out (never a key)."""
    async with simulators(fast(require_api_key="sk-x-1"), fast(require_api_key="sk-x-2")) as (
        a,
        b,
    ):
        path = endpoints_config(
            tmp_path,
            [("east", a.base_url, "M2L_KEY_EAST"), ("west", b.base_url, "M2L_KEY_WEST")],
        )
        env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"} | KEYS
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "engine.app.cli", "run", str(path), "--quiet",
            cwd=tmp_path, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), timeout=100)
        attempts = a.stats()["requests"] + b.stats()["requests"]  # type: ignore[operator]
    message = (out + err).decode()
    assert proc.returncode == 1, message
    assert "every endpoint is out" in message
    assert "east (providers[0])" in message and "west (providers[1])" in message
    assert "401" in message and "M2L_KEY_EAST" in message and "M2L_KEY_WEST" in message
    assert "Traceback" not in message
    assert all(key not in message for key in KEYS.values())
    # Stopped early: a handful of tries, not one per conversation.
    assert attempts < 40
    figures = {e.name: e for e in read_store(tmp_path / "runs" / "t" / "state.duckdb").endpoints}
    assert set(figures) == {"east", "west"} and all(e.out for e in figures.values())


def made_by(run_dir: Path) -> dict[tuple[int, int], tuple[str, str]]:
    """(endpoint, model) of the attempt whose reply each stored step kept (its last answer)."""
    with duckdb.connect(str(run_dir / "state.duckdb"), read_only=True) as conn:
        rows = conn.execute(
            """SELECT m.conv_id, m.step, arg_max(r.endpoint, r.request_id),
                arg_max(r.model, r.request_id)
            FROM messages m JOIN requests r
                ON r.conv_id = m.conv_id AND r.step = m.step AND r.status = 'ok'
            GROUP BY ALL"""
        ).fetchall()
    return {(int(c), int(s)): (str(e), str(m)) for c, s, e, m in rows}


@pytest.mark.slow
async def test_resume_after_sigkill_keeps_the_endpoint_each_step_was_made_by(
    tmp_path: Path,
) -> None:
    """`m2l run` over two endpoints, killed with SIGKILL mid-run, then resumed: every step
    stored before the kill still names the endpoint and model that made it, and every step
    after the resume names one too."""
    east = fast(require_api_key=KEYS["M2L_KEY_EAST"], ttft_s=0.02)
    west = fast(require_api_key=KEYS["M2L_KEY_WEST"], ttft_s=0.02)
    async with simulators(east, west) as (a, b):
        path = endpoints_config(
            tmp_path,
            [("east", a.base_url, "M2L_KEY_EAST"), ("west", b.base_url, "M2L_KEY_WEST")],
            evols_per_seed=2,
        )
        env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"} | KEYS
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "engine.app.cli", "run", str(path), "--quiet",
            cwd=tmp_path, env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        answered = 0
        for _ in range(1200):  # until both endpoints have answered a good part of the run
            east_n, west_n = (int(s.stats()["admitted"]) for s in (a, b))  # type: ignore[call-overload]
            answered = east_n + west_n
            if (min(east_n, west_n) >= 5 and answered >= 20) or proc.returncode is not None:
                break
            await asyncio.sleep(0.05)
        assert proc.returncode is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        config = load_config(path)
        before = made_by(config.run_dir)
        report = await execute_run(config, env=KEYS)
    assert report.result.status is RunStatus.FINISHED, report.result.message
    assert {endpoint for endpoint, _ in before.values()} == {"east", "west"}
    after = made_by(config.run_dir)
    assert len(after) > len(before)
    assert {k: after[k] for k in before} == before
    assert {model for _, model in after.values()} == {"gpt-4o-mini"}
    with duckdb.connect(str(config.run_dir / "state.duckdb"), read_only=True) as conn:
        unrecorded = conn.execute("SELECT count(*) FROM requests WHERE endpoint IS NULL").fetchone()
        steps = conn.execute("SELECT count(*) FROM messages").fetchone()
    assert unrecorded == (0,) and steps is not None and steps[0] == len(after)


async def test_entries_without_keys_are_simulators_of_their_own(tmp_path: Path) -> None:
    """No key set anywhere: each entry is an embedded simulator of its own, and both serve."""
    path = endpoints_config(
        tmp_path,
        [
            ("one", "http://127.0.0.1:9/v1", "M2L_KEY_ONE"),
            ("two", "http://127.0.0.1:9/v1", "M2L_KEY_TWO"),
        ],
        evols_per_seed=1,
    )
    path.write_text(path.read_text().replace('kind = "openai"', 'kind = "auto"'))
    config = load_config(path)
    report = await execute_run(config, env={})
    assert report.result.status is RunStatus.FINISHED, report.result.message
    log = by_endpoint(config.run_dir)
    assert set(log) == {"one", "two"} and all(ok > 0 for _, ok, _ in log.values())
