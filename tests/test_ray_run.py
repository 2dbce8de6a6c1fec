"""A run sharded over a real local Ray cluster (`m2l run --ray`): its dataset equals the
single-process run's, a shard killed with SIGKILL resumes from its store, the shards together
keep one simulator's rate limit (few 429s, the limit used) and one USD cap (the simulator's own
counters), and the offline commands read the sharded run as one run.

One cluster (2 CPUs) serves the module; each test is one short run of two shards."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from budgets.prices import load_price_table
from engine.app.cli import main
from engine.app.rayrun import execute_sharded
from engine.app.run import execute_run
from engine.config import load_config
from engine.events import ConversationFinished, Event, ShardsUpdate, StepDone
from engine.scheduler import RunStatus
from engine.simulator import SimSettings, run_simulator
from state.export import export_run
from tests.runfixtures import write_config

ray = pytest.importorskip("ray")

# Each test starts two shard processes, which import m2l: seconds on a quiet machine, minutes
# on a loaded one.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.anyio,
    pytest.mark.timeout(400),
    pytest.mark.xdist_group("ray"),  # one worker, one cluster
]

KEY = "sk-test-ray-0123456789"


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def rows(run_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(run_dir / "state.duckdb"), read_only=True) as conn:
        return conn.execute(sql).fetchall()


class Watch:
    """Counts the events the driver relays."""

    def __init__(self, steps_to_wait: int = 0) -> None:
        self.steps = 0
        self.finished = 0
        self._wait = steps_to_wait
        self.reached = asyncio.Event()
        self.shards: ShardsUpdate | None = None
        self.updates: list[ShardsUpdate] = []

    def on_event(self, event: Event) -> None:
        if isinstance(event, StepDone):
            self.steps += 1
            if self.steps >= self._wait:
                self.reached.set()
        elif isinstance(event, ConversationFinished):
            self.finished += 1
        elif isinstance(event, ShardsUpdate):
            self.shards = event
            self.updates.append(event)


def provider_config(folder: Path, base_url: str, *, extra: str = "", evols: int = 6) -> Path:
    """A config whose provider is the test's own simulator (so its counters can be read)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = write_config(folder, evols_per_seed=evols, extra=extra)
    text = path.read_text().replace('kind = "sim"', f'kind = "openai"\nbase_url = "{base_url}"')
    text = text.replace('model = "gpt-4o-mini"', 'model = "gpt-4o-mini"\napi_key_env = "M2L_KEY"')
    path.write_text(text)
    return path


async def test_a_sharded_run_with_a_killed_shard_makes_the_single_process_dataset(
    tmp_path: Path, cluster: None, caplog: pytest.LogCaptureFixture
) -> None:
    """Same plans, same deterministic simulator: two shards make the very dataset one process
    makes, even with one shard's process SIGKILLed mid-run (Ray restarts it and it resumes from
    its own store: every step once, none lost); export, stats and status read it as one run."""
    slow = {"evols_per_seed": 6, "ttft_s": 0.05, "per_token_s": 0.004}
    single = load_config(write_config(_dir(tmp_path / "single"), **slow))  # type: ignore[arg-type]
    sharded = load_config(write_config(_dir(tmp_path / "sharded"), **slow))  # type: ignore[arg-type]
    one = await execute_run(single, env={})
    assert one.result.status is RunStatus.FINISHED

    watch = Watch(steps_to_wait=30)
    killed: list[int] = []

    async def kill_shard_zero() -> None:
        await watch.reached.wait()
        names = [n for n in ray.util.list_named_actors() if n.endswith("/shard-00")]
        assert len(names) == 1, names
        pid = await ray.get_actor(names[0]).pid.remote()
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    killer = asyncio.create_task(kill_shard_zero())
    with caplog.at_level(logging.WARNING, logger="engine.app.rayrun"):
        two = await execute_sharded(sharded, env={}, address=None, shards=2, hooks=watch)
    await killer
    assert killed, "the shard was never killed"
    assert two.result.status is RunStatus.FINISHED, two.result.message
    assert "shard 0: its process died" in caplog.text
    assert two.counts == {"done": 48}
    # The dashboard's last view of the shards: all done, shard 0 restarted once.
    assert watch.shards is not None
    assert watch.shards.finished == watch.shards.total == (24, 24)
    assert watch.shards.restarts == (1, 0)

    conversation = (
        "SELECT conv_id, seed_id, evol_type, turns_planned, followup_types, status, steps_done "
        "FROM conversations ORDER BY conv_id"
    )
    messages = "SELECT conv_id, step, role, kind, content, tokens FROM messages ORDER BY 1, 2"
    for sql in (conversation, messages):
        assert rows(sharded.run_dir, sql) == rows(single.run_dir, sql)
    # Every conversation has each of its steps exactly once, from 0 up, with no gap.
    gaps = rows(
        sharded.run_dir,
        "SELECT c.conv_id FROM conversations c JOIN messages m USING (conv_id) "
        "GROUP BY c.conv_id, c.turns_planned "
        "HAVING count(*) != 2 * c.turns_planned OR max(m.step) != 2 * c.turns_planned - 1",
    )
    assert gaps == []
    # Attempts the kill left open were settled (held at their worst case), none left reserved.
    reserved = "SELECT count(*) FROM requests WHERE status = 'reserved'"
    assert rows(sharded.run_dir, reserved) == [(0,)]
    # Each shard's store holds only its conversations; request ids are unique across shards.
    for k in range(2):
        shard = sharded.run_dir / "shards" / f"{k:02d}"
        assert {c % 2 for (c,) in rows(shard, "SELECT conv_id FROM messages")} == {k}
    ids = [r for (r,) in rows(sharded.run_dir, "SELECT request_id FROM requests")]
    assert len(ids) == len(set(ids)) >= len(rows(single.run_dir, "SELECT * FROM requests"))
    # The offline commands read the merged store as they read any run.
    for fmt in ("release-jsonl", "sharegpt-jsonl"):
        a = export_run(single.run_dir, fmt, output=tmp_path / f"a-{fmt}.jsonl")
        b = export_run(sharded.run_dir, fmt, output=tmp_path / f"b-{fmt}.jsonl")
        assert a.rows == b.rows == 48
        assert a.path.read_bytes() == b.path.read_bytes()
    assert main(["status", str(sharded.run_dir), "--json"]) == 0
    assert main(["stats", str(sharded.run_dir), "--json"]) == 0


async def test_the_shards_together_keep_one_rate_limit(tmp_path: Path, cluster: None) -> None:
    """Against one simulator with a 600 rpm limit (a three-second bucket), two shards together
    get at most 0.5% 429s, and while both have work their leases hold the whole limit between
    them (how much of it they used is bench/ray_scaling.py's to measure, not a test's: on a loaded
    machine a shard starved of CPU leaves its share idle)."""
    rpm = 600
    # A bucket of a few seconds, as providers have: a shard held up by a loaded machine for a
    # moment catches up from it, as one process does.
    settings = SimSettings(rpm=rpm, bucket_seconds=3.0, ttft_s=0.01, per_token_s=0.0005, seed=11)
    async with run_simulator(settings) as sim:
        path = provider_config(tmp_path, sim.base_url, extra=f"[limits]\nrpm = {rpm}", evols=3)
        # Every conversation active at once: the limit, not the conversations, binds.
        path.write_text(path.read_text().replace("max_active = 16", "max_active = 48"))
        config = load_config(path)
        watch = Watch()
        report = await execute_sharded(
            config, env={"M2L_KEY": KEY}, address=None, shards=2, hooks=watch
        )
        stats = sim.stats()
    assert report.result.status is RunStatus.FINISHED, report.result.message
    rate_limited = stats["rate_limited"]
    assert isinstance(rate_limited, dict)
    sent = int(stats["requests"])  # type: ignore[arg-type]
    assert (rate_limited["requests"] + rate_limited["tokens"]) / sent <= 0.005
    both_busy = [
        update
        for update in watch.updates
        if all(done < total for done, total in zip(update.finished, update.total, strict=True))
        and all(update.share_pct)
    ]
    assert both_busy, watch.updates
    # Each holds its part of the one limit (percent, rounded): together all of it, never more.
    assert all(99 <= sum(update.share_pct) <= 100 for update in both_busy), both_busy


async def test_a_usd_cap_holds_across_shards(tmp_path: Path, cluster: None) -> None:
    """Two shards under one $0.004 cap stop at it: the spend the simulator's own token
    counters price is within the cap, and most of the cap was used."""
    cap = 0.004
    async with run_simulator(SimSettings(ttft_s=0.0, per_token_s=0.0, seed=11)) as sim:
        config = load_config(
            provider_config(tmp_path, sim.base_url, extra=f"[budget]\nusd = {cap}")
        )
        report = await execute_sharded(
            config, env={"M2L_KEY": KEY}, address=None, shards=2, forward_events=False
        )
        used = sim.stats()["tokens_used"]
    assert report.result.status is RunStatus.BUDGET_EXHAUSTED, report.result.message
    price = load_price_table().lookup("gpt-4o-mini")
    assert price is not None and isinstance(used, dict)
    cached = int(used["cached"])
    spent = (
        (int(used["prompt"]) - cached) * price.input_usd_per_mtok
        + cached * price.cached_input_usd_per_mtok
        + int(used["completion"]) * price.output_usd_per_mtok
    ) / 1e6
    assert cap / 2 <= spent <= cap
    assert report.counts.get("pending", 0) > 0


def test_without_ray_a_sharded_run_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With Ray missing, `m2l run --ray` is one line naming the extra, exit 2, no traceback."""
    path = write_config(tmp_path)
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # import ray raises ImportError
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(path), "--ray", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'm2l[ray]'" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def _dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
