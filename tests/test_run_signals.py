"""Ctrl-C on a real `m2l run` process: once is graceful, twice is immediate, both resumable."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import duckdb
import pytest

from tests.runfixtures import write_config
from tests.test_crash import finish, m2l

pytestmark = pytest.mark.slow


def meta_status(run_dir: Path) -> str:
    with duckdb.connect(str(run_dir / "state.duckdb"), read_only=True) as conn:
        row = conn.execute("SELECT value FROM run_meta WHERE key = 'status'").fetchone()
    assert row is not None
    return str(row[0])


def wait_until_sending(run_dir: Path, limit_s: float = 30.0) -> None:
    """Wait until the run's status file shows requests sent, so a signal lands mid-run."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            status = json.loads((run_dir / "status.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            status = {}
        if status.get("snapshot", {}).get("requests_sent", 0) > 0:
            return
        time.sleep(0.05)
    raise AssertionError("the run never started sending requests")


def test_one_interrupt_finishes_in_flight_and_exits_130(tmp_path: Path) -> None:
    """SIGINT once: in-flight requests finish, state is flushed, exit 130 names the command."""
    # Replies of a few seconds: the run must still be going after `m2l status` below, which can
    # take seconds of its own on a loaded machine; the grace period outlasts any one reply.
    config = write_config(tmp_path, evols_per_seed=2, ttft_s=0.2, per_token_s=0.01)
    config.write_text(config.read_text().replace("grace_s = 5", "grace_s = 60"))
    proc = m2l("run", "m2l.toml", "--quiet", cwd=tmp_path)
    wait_until_sending(tmp_path / "runs" / "t")
    # `m2l status` from another process sees the run going, without touching its store.
    code, output = finish(m2l("status", "runs/t", "--json", cwd=tmp_path))
    assert code == 0, output
    live = json.loads(output)
    assert live["state"] == "running" and live["snapshot"]["total"] == 16
    proc.send_signal(signal.SIGINT)
    code, output = finish(proc)
    assert code == 130, output
    assert "resume with: m2l run m2l.toml" in output
    code, output = finish(m2l("status", "runs/t", "--json", cwd=tmp_path))
    assert code == 0 and json.loads(output)["state"] == "interrupted", output
    run_dir = tmp_path / "runs" / "t"
    assert meta_status(run_dir) == "interrupted"
    with duckdb.connect(str(run_dir / "state.duckdb"), read_only=True) as conn:
        unsettled = conn.execute("SELECT count(*) FROM requests WHERE status = 'reserved'")
        assert unsettled.fetchone() == (0,)  # the grace period let every sent request finish
    code, output = finish(m2l("run", "m2l.toml", "--quiet", cwd=tmp_path))
    assert code == 0, output
    assert meta_status(run_dir) == "finished"


def test_second_interrupt_stops_at_once(tmp_path: Path) -> None:
    """SIGINT twice: requests that hang are abandoned now, not after the grace period."""
    config = write_config(tmp_path, faults="hang = 0.6", ttft_s=0.05)
    text = config.read_text().replace("grace_s = 5", "grace_s = 60")
    config.write_text(text.replace("read_timeout_s = 2.0", "read_timeout_s = 60.0"))
    proc = m2l("run", "m2l.toml", "--quiet", cwd=tmp_path)
    wait_until_sending(tmp_path / "runs" / "t")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert proc.poll() is None, "one interrupt must wait for in-flight requests"
    interrupted_at = time.monotonic()
    proc.send_signal(signal.SIGINT)
    code, output = finish(proc)
    assert time.monotonic() - interrupted_at < 10, "the second interrupt did not stop the run"
    assert code == 130, output
    assert meta_status(tmp_path / "runs" / "t") == "interrupted"
