"""m2l status: a finished run's store, a live run's status file, stale and dead writers."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from rich.console import Console

from engine.app.status import add_status_parser, show_status
from engine.progress import (
    ProgressSnapshot,
    StatusFile,
    StatusFileWriter,
    judge_status_file,
    pid_alive,
    read_run_status,
    read_status_file,
    store_snapshot,
)
from state.schema import SCHEMA_VERSION

SCHEMA = [
    "CREATE TABLE run_meta(key VARCHAR PRIMARY KEY, value VARCHAR)",
    """CREATE TABLE conversations(conv_id BIGINT PRIMARY KEY, seed_id BIGINT, evol_type VARCHAR,
        turns_planned SMALLINT, followup_types VARCHAR[], language VARCHAR,
        language_code VARCHAR, task VARCHAR, status VARCHAR, steps_done SMALLINT,
        regenerations SMALLINT, error VARCHAR, filter_reason VARCHAR, created_at TIMESTAMP,
        finished_at TIMESTAMP)""",
    """CREATE TABLE requests(request_id BIGINT PRIMARY KEY, conv_id BIGINT, step SMALLINT,
        attempt SMALLINT, status VARCHAR, error_class VARCHAR, error VARCHAR,
        prompt_tokens INTEGER, max_tokens INTEGER, completion_tokens INTEGER,
        cached_tokens INTEGER, latency_ms DOUBLE, reserved_usd DOUBLE, cost_usd DOUBLE,
        model VARCHAR, sent_at TIMESTAMP, finished_at TIMESTAMP)""",
]
CONFIG = {"run": {"name": "demo"}, "limits": {"rpm": 10.0, "tpm": 1000.0}, "budget": {"usd": 2.0}}
# (language, status, error, filter_reason)
CONVERSATIONS = [
    ("Hindi", "done", None, None),
    ("Hindi", "done", None, None),
    ("Hindi", "failed", "context_length_exceeded", None),
    ("Swahili", "done", None, None),
    ("Swahili", "filtered", None, "repetition"),
    ("Swahili", "pending", None, None),
]
# (conv_id, step, attempt, status, error_class, error, prompt, max_tokens, completion, cost,
#  reserved, second sent, second finished)
REQUESTS = [
    (1, 0, 0, "ok", None, None, 100, 100, 50, 0.10, 0.0, 0, 10),
    (
        1,
        1,
        0,
        "error",
        "server_error",
        "503 Service Unavailable",
        100,
        100,
        None,
        None,
        0.0,
        10,
        20,
    ),
    (1, 1, 1, "ok", None, None, 100, 100, 60, 0.10, 0.0, 20, 30),
    (2, 0, 0, "error", "rate_limited", "429 Too Many Requests", 100, 100, None, None, 0.0, 30, 35),
    (2, 0, 1, "ok", None, None, 100, 100, 40, 0.10, 0.0, 40, 50),
    (
        3,
        0,
        0,
        "error",
        "context_length_exceeded",
        "prompt too long",
        100,
        100,
        None,
        None,
        0.0,
        50,
        55,
    ),
    (4, 0, 0, "ok", None, None, 100, 100, 70, 0.10, 0.0, 60, 70),
    (5, 0, 0, "ok", None, None, 100, 100, 30, 0.10, 0.0, 70, 80),
    (6, 0, 0, "reserved", None, None, 100, 100, None, None, 0.05, 90, None),
]


def make_store(run_dir: Path, *, status: str = "finished") -> Path:
    """A store with the engine's schema: 6 conversations, 9 requests over 90 seconds."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "state.duckdb"
    con = duckdb.connect(str(path))
    for ddl in SCHEMA:
        con.execute(ddl)
    meta = {
        "schema_version": str(SCHEMA_VERSION),
        "m2l_version": "0.1.0",
        "created_at": "2025-01-01T00:00:00+00:00",
        "config_json": json.dumps(CONFIG),
        "config_hash": "abc",
        "status": status,
    }
    con.executemany("INSERT INTO run_meta VALUES (?, ?)", list(meta.items()))
    for conv_id, (language, conv_status, error, reason) in enumerate(CONVERSATIONS, start=1):
        con.execute(
            """INSERT INTO conversations VALUES (?, ?, 'deepen', 3, ['CLARIFICATION'], ?, 'xx',
            'qa', ?, 2, 0, ?, ?, TIMESTAMP '2025-01-01 00:00:00', NULL)""",
            [conv_id, conv_id, language, conv_status, error, reason],
        )
    for request_id, r in enumerate(REQUESTS, start=1):
        conv, step, attempt, st, cls, err, prompt, max_t, comp, cost, reserved, sent, done = r
        con.execute(
            """INSERT INTO requests VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 1000, ?, ?, 'gpt',
            TIMESTAMP '2025-01-01 00:00:00' + to_seconds(?),
            TIMESTAMP '2025-01-01 00:00:00' + to_seconds(?))""",
            [
                request_id,
                conv,
                step,
                attempt,
                st,
                cls,
                err,
                prompt,
                max_t,
                comp,
                reserved,
                cost,
                sent,
                done,
            ],
        )
    con.close()
    return path


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A live process whose pid a status file can name; the test may kill it."""
    proc = subprocess.Popen(["sleep", "30"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def write_status(run_dir: Path, *, pid: int, age_s: float = 0.0, state: str = "running") -> None:
    snapshot = ProgressSnapshot(run="demo", state=state, total=6, done=2, active=3, rpm=12.0)
    StatusFileWriter(run_dir, pid=pid, wall=lambda: time.time() - age_s).write(snapshot)


def status_text(run_dir: Path, width: int = 100) -> tuple[int, str]:
    console = Console(record=True, width=width, file=io.StringIO())
    code = show_status(run_dir, as_json=False, console=console, errors=io.StringIO())
    return code, console.export_text()


def flat(text: str) -> str:
    """Text with its line wrapping undone, for phrases a narrow console may break."""
    return " ".join(text.split())


def test_a_finished_run_is_read_from_its_store(tmp_path: Path) -> None:
    """After the run, the store gives its state and figures, and the export command."""
    make_store(tmp_path / "demo")
    code, text = status_text(tmp_path / "demo")
    assert code == 0
    assert "finished — every conversation reached a final state" in flat(text)
    assert "figures from state.duckdb (read-only)" in flat(text)
    assert "context_length_exceeded 1" in text and "repetition 1" in text
    assert f"m2l export {tmp_path / 'demo'} --format release-parquet" in text


def test_the_store_figures_match_its_rows(tmp_path: Path) -> None:
    """Counts, retries, 429s, failed steps, tokens, money and utilisation come from the rows."""
    con = duckdb.connect(str(make_store(tmp_path)), read_only=True)
    s = store_snapshot(con)
    con.close()
    assert (s.run, s.state, s.total, s.done, s.failed, s.filtered) == (
        "demo",
        "finished",
        6,
        3,
        1,
        1,
    )
    assert s.pending == 1
    assert s.failed_by_reason == (("context_length_exceeded", 1),)
    assert s.filtered_by_reason == (("repetition", 1),)
    # One transient error was retried; the 429 only waited; one step gave up.
    assert (s.requests_sent, s.requests_ok, s.retries, s.requests_failed) == (9, 5, 1, 1)
    assert s.rate_limit_hits == 1 and dict(s.errors_by_class).get("rate_limited") is None
    assert (s.last_error_class, s.last_error) == ("context_length_exceeded", "prompt too long")
    assert (s.tokens_in, s.tokens_out) == (500, 250)
    assert s.spent_usd == pytest.approx(0.5) and s.reserved_usd == pytest.approx(0.05)
    assert s.cap_usd == 2.0 and s.elapsed_s == 80.0
    # 9 requests charged 200 tokens each in 80 s: 6.75 rpm of 10, 1350 tpm of 1000.
    assert s.binding_limit == "tpm" and s.mean_utilisation == pytest.approx(1.35)
    hindi, swahili = sorted(s.languages, key=lambda lang: lang.language)
    assert (hindi.finished, hindi.total, swahili.finished, swahili.total) == (3, 3, 2, 3)
    assert s.languages[0].language == "Swahili"  # the one with work left is slowest


def test_status_json_is_one_object(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`m2l status RUN_DIR --json` through argparse prints the state and the snapshot."""
    make_store(tmp_path, status="budget_exhausted")
    parser = argparse.ArgumentParser(prog="m2l")
    add_status_parser(parser.add_subparsers())
    args = parser.parse_args(["status", str(tmp_path), "--json"])
    assert args.func(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["state"] == "budget_exhausted" and "budget cap" in data["note"]
    assert data["snapshot"]["done"] == 3 and data["snapshot"]["spent_usd"] == pytest.approx(0.5)


def test_a_live_writer_means_running_and_a_dead_one_interrupted(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    """Running needs a fresh heartbeat from a live pid; once the pid is gone, interrupted."""
    write_status(tmp_path, pid=sleeper.pid)
    status = read_run_status(tmp_path)
    assert status.state == "running" and f"pid {sleeper.pid}" in status.note
    assert status.source.startswith("status.json") and status.snapshot.done == 2
    code, text = status_text(tmp_path)
    assert code == 0 and "running" in text and "2/6" in text  # the dashboard, drawn once
    sleeper.kill()
    sleeper.wait()
    status = read_run_status(tmp_path)
    assert status.state == "interrupted"
    assert "the process is gone" in status.note and "run the same command to resume" in status.note


@pytest.mark.parametrize("state", ["starting", "stopping"])
def test_a_live_writer_starting_or_stopping_is_reported_so(
    tmp_path: Path, sleeper: subprocess.Popen[bytes], state: str
) -> None:
    """A live process loading seeds or in its Ctrl-C grace period is shown as such, not as
    running (a user who pressed Ctrl-C sees it was heard); a dead one is interrupted."""
    write_status(tmp_path, pid=sleeper.pid, state=state)
    status = read_run_status(tmp_path)
    assert status.state == state and f"pid {sleeper.pid} is {state}" in status.note
    assert status.snapshot.state == state and status.source.startswith("status.json")
    code, text = status_text(tmp_path)
    assert code == 0 and state in text and "running" not in text and "2/6" in text
    sleeper.kill()
    sleeper.wait()
    assert read_run_status(tmp_path).state == "interrupted"


def test_a_stale_heartbeat_from_a_live_pid_is_stalled(tmp_path: Path) -> None:
    """A live pid that stopped beating is not running: it is stalled (or its pid reused)."""
    write_status(tmp_path, pid=os.getpid(), age_s=60)
    status = read_run_status(tmp_path)
    assert status.state == "stalled" and "60 s ago" in status.note


def test_a_stale_status_file_over_a_free_store_is_interrupted(tmp_path: Path) -> None:
    """If nobody holds the store, whatever the status file says, nobody is running the run."""
    make_store(tmp_path, status="running")
    write_status(tmp_path, pid=os.getpid(), age_s=60)
    status = read_run_status(tmp_path)
    assert status.state == "interrupted" and status.source == "state.duckdb (read-only)"
    assert status.snapshot.done == 3  # the store's figures, not the file's


def test_a_store_left_running_without_a_status_file_is_interrupted(tmp_path: Path) -> None:
    """A store recording 'running' that nobody holds belongs to a process that died."""
    make_store(tmp_path, status="running")
    status = read_run_status(tmp_path)
    assert status.state == "interrupted" and "resume" in status.note


def test_a_locked_store_falls_back_to_the_status_file(tmp_path: Path) -> None:
    """While another process holds the store, the status file's figures are used, and said so."""
    path = make_store(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_STORE, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        status = read_run_status(tmp_path)
        assert status.state == "running" and "holds the store" in status.note
        write_status(tmp_path, pid=holder.pid, age_s=30)
        status = read_run_status(tmp_path)
        assert status.state == "stalled" and status.snapshot.done == 2
        assert f"the store is locked by pid {holder.pid}" in status.source
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


HOLD_STORE = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
print("holding", flush=True)
time.sleep(60)
"""


def test_a_directory_without_a_run_exits_1(tmp_path: Path) -> None:
    """No store and no status file: exit code 1 and a message saying so."""
    errors = io.StringIO()
    console = Console(file=io.StringIO())
    assert show_status(tmp_path / "nope", as_json=False, console=console, errors=errors) == 2
    assert "holds no run" in errors.getvalue() and "state.duckdb" in errors.getvalue()


def test_a_damaged_status_file_is_ignored_when_the_store_is_there(tmp_path: Path) -> None:
    """A half-written or corrupt status file does not hide the store's figures."""
    make_store(tmp_path)
    (tmp_path / "status.json").write_text("{not json")
    status = read_run_status(tmp_path)
    assert status.state == "finished" and "status.json is damaged" in status.source


def test_the_status_file_round_trips(tmp_path: Path) -> None:
    """What the writer writes, the reader reads: pid, host, heartbeat, state, figures."""
    snapshot = ProgressSnapshot(run="demo", state="running", total=3, done=1, cap_usd=None)
    StatusFileWriter(tmp_path, pid=4242, host="box", wall=lambda: 1000.0).write(snapshot)
    status = read_status_file(tmp_path)
    assert status is not None
    assert status == StatusFile(4242, "box", 1000.0, "running", snapshot, status.m2l_version)
    assert read_status_file(tmp_path / "missing") is None


def test_a_writer_on_another_host_is_judged_by_its_heartbeat_alone() -> None:
    """With no way to check the pid, a fresh heartbeat means running and a stale one does not."""
    status = StatusFile(1, "elsewhere", 1000.0, "running", ProgressSnapshot(state="running"))
    assert judge_status_file(status, now=1005.0, alive=None)[0] == "running"
    assert judge_status_file(status, now=1100.0, alive=None)[0] == "interrupted"


def test_pid_alive_tells_live_dead_and_zombie_processes_apart() -> None:
    """Our own pid is alive; a reaped child is not; an unreaped killed child is not either."""
    assert pid_alive(os.getpid())
    child = subprocess.Popen(["sleep", "30"])
    child.kill()
    try:
        deadline = time.monotonic() + 10
        while pid_alive(child.pid) and time.monotonic() < deadline:
            time.sleep(0.01)  # the kill lands asynchronously; the zombie then reads as dead
        assert not pid_alive(child.pid)
    finally:
        child.wait()
    assert not pid_alive(child.pid) and not pid_alive(0)


def test_status_reads_under_a_small_cache_and_again_under_the_runs_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`m2l status` reads the store with DuckDB's cache capped small (so it stays the same size
    at any N), with the same figures as an uncapped read; an aggregate DuckDB refuses under the
    small cap is read again under the run's own cap, not reported as a failure."""
    from engine.progress import store as progress_store

    path = make_store(tmp_path / "demo")
    con = duckdb.connect(str(path), read_only=True)
    expected = store_snapshot(con, run="demo")
    con.close()
    caps: list[str] = []
    real = progress_store.store_snapshot

    def snapshot_once_out_of_memory(
        con: duckdb.DuckDBPyConnection, *, run: str = ""
    ) -> ProgressSnapshot:
        caps.append(str(con.execute("SELECT current_setting('memory_limit')").fetchone()[0]))
        if len(caps) == 1:
            raise duckdb.OutOfMemoryException("could not allocate (as a big store would)")
        return real(con, run=run)

    assert progress_store.read_store(path) == expected
    monkeypatch.setattr(progress_store, "store_snapshot", snapshot_once_out_of_memory)
    assert progress_store.read_store(path) == expected
    assert caps[0].startswith("7.") and caps[1].endswith("MiB") and float(caps[1].split()[0]) > 400
