"""``m2l requests`` SIGKILLed at random moments, then resumed: every line once, in order."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

from engine.simsettings import FaultRates, SimSettings
from engine.simulator import run_simulator

pytestmark = pytest.mark.slow

LINES = 300
OPTIONS = ("--config", "job.toml", "--progress", "plain", "--progress-interval", "0.5")
# Transport faults, so that lines are retried across the kill.
SIM = SimSettings(ttft_s=0.02, per_token_s=0.0005, faults=FaultRates(server_error=0.05, reset=0.03))
CONFIG = """\
[limits]
max_inflight = 32
[retry]
base_delay_s = 0.01
max_delay_s = 0.05
"""


@contextlib.contextmanager
def simulator(settings: SimSettings) -> Iterator[str]:
    """A simulator serving on its own thread (one for every process of the test); its URL."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        async with run_simulator(settings) as sim:
            box["url"], box["stop"] = sim.base_url, asyncio.Event()
            box["loop"] = asyncio.get_running_loop()
            ready.set()
            await box["stop"].wait()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    assert ready.wait(60), "the simulator did not start"
    try:
        yield str(box["url"])
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(30)


def m2l(folder: Path, url: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine.app.cli",
            "requests",
            "in.jsonl",
            "out.jsonl",
            *OPTIONS,
            "--base-url",
            url,
        ],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_sigkill_mid_run_then_resume_gives_each_line_once_in_order(tmp_path: Path) -> None:
    """Killed while it writes results and run again, the job ends with one result line per
    input line, in input order, each a whole JSON line, and the store agrees."""
    with (tmp_path / "in.jsonl").open("wb") as f:
        for i in range(LINES):
            body = {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": f"Write a sentence about {i}."}],
                "max_tokens": 40,
                "metadata": {"i": i},
            }
            f.write(orjson.dumps(body) + b"\n")
    (tmp_path / "job.toml").write_text(CONFIG)
    out = tmp_path / "out.jsonl"
    with simulator(SIM) as url:
        proc = m2l(tmp_path, url)
        # Wait until results are being written, then kill at a random moment after that.
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if out.exists() and out.stat().st_size > 0:
                break
            time.sleep(0.02)
        time.sleep(random.Random(20261203).uniform(0.05, 0.2))
        assert proc.poll() is None, "the job finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        written = len(out.read_bytes().splitlines())
        assert 0 < written < LINES
        proc = m2l(tmp_path, url)
        _, stderr = proc.communicate(timeout=180)
        assert proc.returncode == 0, stderr.decode()
    lines = out.read_bytes().splitlines()
    assert len(lines) == LINES
    got = [orjson.loads(line) for line in lines]
    assert [r["line"] for r in got] == list(range(1, LINES + 1))
    assert [r["metadata"]["i"] for r in got] == list(range(LINES))
    assert all(r["response"] is not None or r["error"] is not None for r in got)
    with duckdb.connect(str(tmp_path / "out.jsonl.m2l" / "state.duckdb"), read_only=True) as conn:
        stored = conn.execute("SELECT count(*), count(DISTINCT line) FROM request_lines").fetchone()
    assert stored == (LINES, LINES)
