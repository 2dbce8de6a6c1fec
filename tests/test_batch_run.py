"""`m2l run` in batch mode, in process: the embedded simulator's Batch API, a real DuckDB store."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import duckdb
import pytest

from budgets.ledger import spend_from_log
from engine.app.run import execute_run
from engine.config import load_config
from engine.events import BatchUpdate, BudgetUpdate, Event
from engine.scheduler import RunStatus, StopControl
from engine.simulator import run_simulator
from tests.runfixtures import write_config

pytestmark = pytest.mark.anyio

FAST_BATCHES = "[batch]\nquiet_s = 0.05\npoll_min_s = 0.05\npoll_max_s = 0.2\n"


def batch_config(folder: Path, *, sim: str = "", extra: str = "", name: str = "t") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = write_config(
        folder, name=name, evols_per_seed=2, extra=FAST_BATCHES + extra,
        sim="batch_delay_s = 0.2\n" + sim,
    )  # fmt: skip
    path.write_text(path.read_text().replace("grace_s = 5\n", 'grace_s = 5\nmode = "batch"\n'))
    return path


def online_config(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_config(folder, evols_per_seed=2)


def rows(run_dir: Path, sql: str) -> list[tuple[object, ...]]:
    with duckdb.connect(str(run_dir / "state.duckdb"), read_only=True) as conn:
        return conn.execute(sql).fetchall()


def dataset(run_dir: Path) -> list[tuple[object, ...]]:
    return rows(run_dir, "SELECT conv_id, step, role, content FROM messages ORDER BY 1, 2")


class Recorder:
    def __init__(self) -> None:
        self.batches: list[BatchUpdate] = []

    def on_event(self, event: Event) -> None:
        if isinstance(event, BatchUpdate):
            self.batches.append(event)


async def test_a_batch_run_makes_the_online_runs_dataset_at_the_batch_price(
    tmp_path: Path,
) -> None:
    """Same conversations as online, one paid attempt per step, about half the cost."""
    online = load_config(online_config(tmp_path / "online"))
    assert (await execute_run(online, env={})).result.status is RunStatus.FINISHED
    config = load_config(batch_config(tmp_path / "batch"))
    seen = Recorder()
    report = await execute_run(config, env={}, hooks=seen)
    assert report.result.status is RunStatus.FINISHED
    assert report.counts == {"done": 16}
    assert dataset(config.run_dir) == dataset(online.run_dir)
    # One ok attempt per stored step: nothing sent twice, nothing regenerated here.
    paid = rows(
        config.run_dir,
        "SELECT count(*), count(DISTINCT (conv_id, step)) FROM requests WHERE status = 'ok'",
    )
    steps = rows(config.run_dir, "SELECT count(*) FROM messages")[0][0]
    assert paid == [(steps, steps)]
    # Waves: several batches, each collected; a conversation's steps went out in order.
    subs = rows(
        config.run_dir, "SELECT state, batch_status, count(*) FROM batch_submissions GROUP BY ALL"
    )
    assert subs[0][:2] == ("collected", "completed") and len(subs) == 1 and subs[0][2] >= 8
    assert max(e.batches_created for e in seen.batches) == subs[0][2]
    (batch_cost,), (online_cost,) = (
        rows(run, "SELECT sum(cost_usd) FROM requests")[0]
        for run in (config.run_dir, online.run_dir)
    )
    assert isinstance(batch_cost, float) and isinstance(online_cost, float)
    assert 0.4 < batch_cost / online_cost < 0.6
    # Every attempt was reserved at its batch worst case before its batch was created.
    assert rows(config.run_dir, "SELECT count(*) FROM requests WHERE cost_usd > reserved_usd") == [
        (0,)
    ]


async def test_failed_lines_are_sent_again_and_the_dataset_is_unchanged(tmp_path: Path) -> None:
    """Lines answered 500 in the error file go out in a later batch; the result is the same."""
    online = load_config(online_config(tmp_path / "online"))
    await execute_run(online, env={})
    config = load_config(batch_config(tmp_path / "batch", sim="batch_line_failure_rate = 0.3"))
    report = await execute_run(config, env={})
    assert report.result.status is RunStatus.FINISHED
    assert dataset(config.run_dir) == dataset(online.run_dir)
    failed = rows(
        config.run_dir,
        "SELECT error_class, count(*), sum(coalesce(cost_usd, 0)) FROM requests "
        "WHERE status = 'error' GROUP BY 1",
    )
    assert len(failed) == 1 and failed[0][0] == "server_error" and failed[0][1] > 0
    assert failed[0][2] == 0  # a failed line is not billed


async def test_the_tail_finishes_online(tmp_path: Path) -> None:
    """With finish_online_below above the run's size, every step goes online at online prices."""
    config = load_config(batch_config(tmp_path, extra="finish_online_below = 100\n"))
    report = await execute_run(config, env={})
    assert report.result.status is RunStatus.FINISHED
    assert rows(config.run_dir, "SELECT count(*) FROM batch_submissions") == [(0,)]
    online = load_config(online_config(tmp_path / "online"))
    await execute_run(online, env={})
    assert dataset(config.run_dir) == dataset(online.run_dir)


async def test_a_batch_that_would_pass_the_cap_is_cut_to_what_fits(tmp_path: Path) -> None:
    """A tiny budget: the run stops at the cap; what was sent fits under it, reservations too."""
    config = load_config(batch_config(tmp_path, extra="[budget]\nusd = 0.001\n"))
    report = await execute_run(config, env={})
    assert report.result.status is RunStatus.BUDGET_EXHAUSTED
    with duckdb.connect(str(config.run_dir / "state.duckdb"), read_only=True) as conn:
        assert 0 < spend_from_log(conn).usd <= 0.001  # outcomes unknown count at worst case
    lines = rows(config.run_dir, "SELECT count(*) FROM batch_lines")[0][0]
    assert isinstance(lines, int) and lines > 0


class BudgetRecorder:
    def __init__(self) -> None:
        self.updates: list[BudgetUpdate] = []

    def on_event(self, event: Event) -> None:
        if isinstance(event, BudgetUpdate):
            self.updates.append(event)


class StopWhenBatched:
    """Requests a stop once a batch is open, as Ctrl-C would."""

    def __init__(self, stop: StopControl) -> None:
        self.stop = stop

    def on_event(self, event: Event) -> None:
        if isinstance(event, BatchUpdate) and event.open_batches and not self.stop.requested:
            self.stop.request("stopped by SIGINT")


@pytest.mark.parametrize("cap", ["", "[budget]\nusd = 1.0\n"], ids=["uncapped", "capped"])
async def test_a_stop_leaves_batches_running_and_a_resume_collects_them(
    tmp_path: Path, cap: str
) -> None:
    """Ctrl-C ends the run at once without cancelling its batches; the next run claims them,
    and its budget counts their real cost once they are in (with or without a ledger)."""
    online = load_config(online_config(tmp_path / "online"))
    await execute_run(online, env={})
    settings = replace(
        load_config(batch_config(tmp_path / "batch", extra=cap)).sim, batch_delay_s=3.0
    )
    async with run_simulator(settings) as sim:
        path = batch_config(tmp_path / "batch", extra=cap)
        path.write_text(
            path.read_text().replace(
                'kind = "sim"', f'kind = "openai"\nbase_url = "{sim.base_url}"\napi_key_env = "K"'
            )
        )
        config = load_config(path)
        stop = StopControl()
        report = await execute_run(
            config, env={"K": "sk-t"}, hooks=StopWhenBatched(stop), stop=stop
        )
        assert report.result.status is RunStatus.INTERRUPTED
        assert set(sim.batches.counts()) <= {"validating", "in_progress", "finalizing", "completed"}
        assert sim.batches.counts().get("cancelling", 0) == 0
        left_open = rows(
            config.run_dir, "SELECT count(*) FROM batch_submissions WHERE state = 'created'"
        )
        assert left_open[0][0] > 0
        # The open batches were slow enough to outlive the stop; the resume need not wait as long
        # for them and for every later turn's batch.
        sim.batches.set_delay(0.2)
        seen = BudgetRecorder()
        report = await execute_run(config, env={"K": "sk-t"}, hooks=seen)
        assert report.result.status is RunStatus.FINISHED
        # The lines it claimed were held at their worst case when it began; once their results
        # are in, the session's ledger counts their real cost, as the request log does.
        with duckdb.connect(str(config.run_dir / "state.duckdb"), read_only=True) as conn:
            logged = spend_from_log(conn)
        assert seen.updates[-1].spent_usd == pytest.approx(logged.usd, abs=1e-9)
        assert dataset(config.run_dir) == dataset(online.run_dir)
        assert (
            sim.batches.lines_answered
            == rows(config.run_dir, "SELECT count(*) FROM requests WHERE status = 'ok'")[0][0]
        )


async def test_the_last_conversations_finish_online_after_batches(tmp_path: Path) -> None:
    """finish_online_below = 8 of 16: batches first, then the tail online; the same dataset."""
    online = load_config(online_config(tmp_path / "online"))
    await execute_run(online, env={})
    config = load_config(batch_config(tmp_path / "batch", extra="finish_online_below = 8\n"))
    report = await execute_run(config, env={})
    assert report.result.status is RunStatus.FINISHED
    assert dataset(config.run_dir) == dataset(online.run_dir)
    in_batches, online_steps = rows(
        config.run_dir,
        "SELECT count(*) FILTER (WHERE request_id IN (SELECT request_id FROM batch_lines)), "
        "count(*) FILTER (WHERE request_id NOT IN (SELECT request_id FROM batch_lines)) "
        "FROM requests WHERE status = 'ok'",
    )[0]
    assert isinstance(in_batches, int) and isinstance(online_steps, int)
    assert in_batches > 0 and online_steps > 0


async def test_azure_shape_base_url_and_api_version(tmp_path: Path) -> None:
    """An Azure-style endpoint (/openai, api-version in provider.query) runs in batch mode."""
    settings = load_config(batch_config(tmp_path / "probe")).sim
    async with run_simulator(settings) as sim:
        base = sim.base_url.removesuffix("/v1") + "/openai"
        path = batch_config(tmp_path / "azure")
        path.write_text(
            path.read_text().replace(
                'kind = "sim"',
                f'kind = "openai"\nbase_url = "{base}"\napi_key_env = "K"\n'
                'query = { api-version = "2024-10-21" }',
            )
        )
        config = load_config(path)
        report = await execute_run(config, env={"K": "sk-t"})
        assert report.result.status is RunStatus.FINISHED
        assert report.counts == {"done": 16}
        ok = rows(config.run_dir, "SELECT count(*) FROM requests WHERE status = 'ok'")[0][0]
        assert sim.batches.lines_answered == ok


async def test_an_expired_batch_is_sent_again_and_nothing_is_lost_or_paid_twice(
    tmp_path: Path,
) -> None:
    """The provider expires the run's first batch with part of it answered: a full run in batch
    mode keeps what was answered, sends the expired lines in a later batch and makes the online
    run's dataset, each step paid once."""
    online = load_config(online_config(tmp_path / "online"))
    await execute_run(online, env={})
    # A batch takes 0.2 s and the first one expires at 0.15 s, about two thirds answered.
    sim = "batch_expire_s = 0.15\nbatch_expire_count = 1"
    config = load_config(batch_config(tmp_path / "batch", sim=sim))
    report = await execute_run(config, env={})
    assert report.result.status is RunStatus.FINISHED, report.result.message
    assert dataset(config.run_dir) == dataset(online.run_dir)
    statuses = dict(
        rows(config.run_dir, "SELECT batch_status, count(*) FROM batch_submissions GROUP BY 1")
    )
    assert statuses.get("expired") == 1 and statuses.get("completed", 0) >= 1
    expired = rows(
        config.run_dir,
        "SELECT r.status, r.error_class, count(*), sum(coalesce(r.cost_usd, 0)) "
        "FROM batch_lines l JOIN batch_submissions s USING (sub_id) JOIN requests r "
        "USING (request_id) WHERE s.batch_status = 'expired' GROUP BY ALL ORDER BY 1",
    )
    by_status = {status: (cls, n, cost) for status, cls, n, cost in expired}
    assert by_status["ok"][1] > 0  # answered before it expired: kept, not sent again
    assert by_status["error"][1] > 0 and by_status["error"][2] == 0  # expired: not billed
    paid = rows(
        config.run_dir,
        "SELECT count(*), count(DISTINCT (conv_id, step)) FROM requests WHERE status = 'ok'",
    )
    messages = rows(config.run_dir, "SELECT count(*) FROM messages")[0][0]
    assert paid[0][0] == paid[0][1] == messages
    assert rows(config.run_dir, "SELECT count(*) FROM requests WHERE status = 'reserved'") == [(0,)]
