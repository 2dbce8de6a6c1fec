"""Batch mode under SIGKILL: `m2l run` killed with batches in flight on a simulator that lives."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import duckdb
import orjson
import pytest

from state.batchstore import batch_summary
from tests.runfixtures import write_config

pytestmark = pytest.mark.slow

# The simulator the runs talk to: the settings of tests.runfixtures' [sim], served by its own
# process so that batches outlive every killed client, as on the real provider.
SIM = """
import asyncio, sys
from engine.simulator import SimSettings, run_simulator
async def main():
    settings = SimSettings(seed=11, ttft_s=0.0, per_token_s=0.0, jitter=0.0,
                           min_completion_tokens=12, max_completion_tokens=60, hang_s=5.0,
                           batch_delay_s=float(sys.argv[1]))
    async with run_simulator(settings) as sim:
        print(sim.base_url, flush=True)
        await asyncio.Event().wait()
asyncio.run(main())
"""
KEY_ENV = "M2L_BATCH_TEST_KEY"


@pytest.fixture
def sim_url() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SIM, "0.6"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().decode().strip()
    finally:
        proc.kill()
        proc.communicate()


def sim_stats(base_url: str) -> dict[str, object]:
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/stats") as response:
        stats: dict[str, object] = orjson.loads(response.read())
        return stats


def batch_counts(base_url: str) -> dict[str, int]:
    """The simulator's batches by status."""
    counts = sim_stats(base_url)["batches"]
    assert isinstance(counts, dict)
    return counts


def m2l(*args: str, cwd: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env[KEY_ENV] = "sk-batch-test"
    return subprocess.Popen(
        [sys.executable, "-m", "engine.app.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, (out + err).decode("utf-8", "replace")


def rows(run_dir: Path, sql: str) -> list[tuple[object, ...]]:
    with duckdb.connect(str(run_dir / "state.duckdb"), read_only=True) as conn:
        return conn.execute(sql).fetchall()


def open_batches(run_dir: Path) -> int:
    """Batches the killed run left open on the provider (0 before batch mode started)."""
    if not (run_dir / "state.duckdb").exists():
        return 0
    with duckdb.connect(str(run_dir / "state.duckdb"), read_only=True) as conn:
        summary = batch_summary(conn)
    return 0 if summary is None else summary.open_batches


def dataset(run_dir: Path) -> list[tuple[object, ...]]:
    return rows(run_dir, "SELECT conv_id, step, role, content FROM messages ORDER BY 1, 2")


def test_sigkill_with_batches_in_flight_pays_no_step_twice(tmp_path: Path, sim_url: str) -> None:
    """Killed with batches open, its batches cancelled, and resumed, a batch run pays each step
    once and makes the dataset an unbroken online run makes."""
    (tmp_path / "online").mkdir()
    write_config(tmp_path / "online", evols_per_seed=2)
    code, output = finish(m2l("run", "m2l.toml", "--quiet", cwd=tmp_path / "online"))
    assert code == 0, output
    expected = dataset(tmp_path / "online" / "runs" / "t")

    folder = tmp_path / "batch"
    folder.mkdir()
    path = write_config(
        folder,
        evols_per_seed=2,
        extra="[batch]\nquiet_s = 0.1\npoll_min_s = 0.1\npoll_max_s = 0.3\n",
    )
    text = path.read_text().replace("grace_s = 5\n", 'grace_s = 5\nmode = "batch"\n')
    text = text.replace(
        'kind = "sim"', f'kind = "openai"\nbase_url = "{sim_url}"\napi_key_env = "{KEY_ENV}"'
    )
    path.write_text(text)
    rng = random.Random(20261203)
    kills = in_flight = last_open = 0
    for round_ in range(3):
        created = sum(batch_counts(sim_url).values())
        proc = m2l("run", "m2l.toml", "--quiet", cwd=folder)
        # Kill once this process has created a batch (the provider says so), at a random
        # moment after: while it uploads, creates, polls or applies results.
        deadline = time.monotonic() + 60
        while sum(batch_counts(sim_url).values()) <= created and proc.poll() is None:
            assert time.monotonic() < deadline, "no batch was created in 60 s"
            time.sleep(0.05)
        # The last kill comes as soon as the batch exists, so it is surely still open.
        time.sleep(rng.uniform(0.0, 1.0) if round_ < 2 else 0.0)
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        kills += 1
        last_open = open_batches(folder / "runs" / "t")
        in_flight += last_open
    # `--cancel-batches` cancels what the last kill left open; the resume keeps what they
    # finished and sends the rest again.
    code, output = finish(m2l("run", "m2l.toml", "--cancel-batches", cwd=folder))
    assert code == 0, output
    cancelled = [line.split(": ") for line in output.splitlines() if line.startswith("batch_")]
    assert last_open > 0 and 0 < len(cancelled) <= last_open
    assert all(status in ("cancelling", "cancelled", "completed") for _, status in cancelled)
    code, output = finish(m2l("run", "m2l.toml", "--quiet", cwd=folder))
    assert code == 0, output
    assert kills >= 2, "the run finished before it could be killed twice; slow the simulator"
    assert in_flight > 0, "no kill found a batch in flight"
    run_dir = folder / "runs" / "t"
    assert dataset(run_dir) == expected
    paid = rows(
        run_dir,
        "SELECT count(*), count(DISTINCT (conv_id, step)) FROM requests WHERE status = 'ok'",
    )
    assert paid[0][0] == paid[0][1] == len(expected)
    # The provider answered exactly the lines whose replies were used: no step ran twice.
    assert sim_stats(sim_url)["batch_lines_answered"] == len(expected)
