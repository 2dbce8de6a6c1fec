"""Crash safety with real processes: `m2l run` SIGKILLed at random moments, then resumed."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from tests.runfixtures import write_config

pytestmark = pytest.mark.slow

# Transport faults, and wrong-language replies so that steps are regenerated across the kills.
FAULTS = (
    "server_error = 0.05\nunavailable = 0.03\nreset = 0.03\ntruncated = 0.03\nwrong_language = 0.15"
)
MAX_REGENERATIONS = 2  # the config's default: a step may have 3 replies in all


def m2l(*args: str, cwd: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
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


def conversations(run_dir: Path) -> list[tuple[object, ...]]:
    with duckdb.connect(str(run_dir / "state.duckdb"), read_only=True) as conn:
        return conn.execute(
            "SELECT conv_id, step, role, content FROM messages ORDER BY conv_id, step"
        ).fetchall()


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """Killed 6 times and resumed, a run ends with exactly the conversations of an unbroken run."""
    for name in ("clean", "killed"):
        (tmp_path / name).mkdir()
        # Some latency, so a run lasts long enough to be killed in the middle of its work.
        # Learned caps depend on the order replies arrive in, and the simulator's text on the
        # cap: the byte-for-byte comparison needs the configured caps.
        write_config(
            tmp_path / name, evols_per_seed=2, faults=FAULTS, ttft_s=0.02, per_token_s=0.0005,
            extra="[generation.adaptive_max_tokens]\nenabled = false",
        )  # fmt: skip
    code, output = finish(m2l("run", "m2l.toml", "--quiet", cwd=tmp_path / "clean"))
    assert code == 0, output
    expected = conversations(tmp_path / "clean" / "runs" / "t")

    rng = random.Random(20261122)
    kills = 0
    folder = tmp_path / "killed"
    for _ in range(40):
        proc = m2l("run", "m2l.toml", "--quiet", cwd=folder)
        if kills < 6:
            time.sleep(rng.uniform(0.6, 2.5))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.communicate(timeout=30)  # reap it and close its pipes
                kills += 1
                continue
        code, output = finish(proc)
        assert code == 0, output
        if kills >= 6:
            break
    assert kills >= 5, "the run finished before it could be killed five times"
    got = conversations(folder / "runs" / "t")
    keys = [(row[0], row[1]) for row in got]
    assert len(keys) == len(set(keys)), "a (conversation, step) was stored twice"
    assert got == expected
    # The datasets the two runs wrote are identical, byte for byte.
    exported = [
        (tmp_path / name / "runs" / "t" / "export" / "messages.jsonl").read_bytes()
        for name in ("clean", "killed")
    ]
    assert exported[0] == exported[1]
    outcomes = []
    for name in ("clean", "killed"):
        with duckdb.connect(str(tmp_path / name / "runs" / "t" / "state.duckdb")) as conn:
            outcomes.append(
                conn.execute(
                    """SELECT conv_id, status, steps_done, error, (SELECT count(*) FROM messages m
                       WHERE m.conv_id = c.conv_id) FROM conversations c ORDER BY conv_id"""
                ).fetchall()
            )
    assert outcomes[0] == outcomes[1]
    # Injected wrong-language replies fail a few conversations at their first turn; the rest
    # are done (some kept short after a late failure), each with the messages it counts.
    done = [row for row in outcomes[1] if row[1] == "done"]
    assert all(status in ("done", "failed") for _, status, _, _, _ in outcomes[1])
    assert all(made == steps for _, _, steps, _, made in done)
    assert len(done) >= 12 and exported[0].count(b"\n") == len(done)
    # The regeneration count is stored with each rejected reply, so restarts never give a step
    # more replies than its bound, and every reply thrown away is on record.
    with duckdb.connect(str(folder / "runs" / "t" / "state.duckdb"), read_only=True) as conn:
        most = conn.execute(
            """SELECT coalesce(max(n), 0) FROM (SELECT conv_id, step, count(*) AS n
               FROM requests WHERE status = 'ok' GROUP BY ALL)"""
        ).fetchone()
        rejected = conn.execute("SELECT count(*) FROM rejections").fetchone()
        paid = conn.execute("SELECT count(*) FROM requests WHERE status = 'ok'").fetchone()
        kept = conn.execute("SELECT count(*) FROM messages").fetchone()
    assert most is not None and 2 <= most[0] <= MAX_REGENERATIONS + 1
    assert rejected is not None and paid is not None and kept is not None
    assert rejected[0] > 0 and paid[0] == kept[0] + rejected[0]


def test_corrupt_state_file_is_refused_untouched(tmp_path: Path) -> None:
    """A damaged state file stops the run with a clear message and is left exactly as it was."""
    write_config(tmp_path)
    state = tmp_path / "runs" / "t" / "state.duckdb"
    state.parent.mkdir(parents=True)
    state.write_bytes(b"not a database, just bytes" * 100)
    before = (state.read_bytes(), state.stat().st_mtime_ns)
    code, output = finish(m2l("run", "m2l.toml", "--quiet", cwd=tmp_path))
    assert code == 2
    assert "state.duckdb" in output and "damaged" in output
    assert (state.read_bytes(), state.stat().st_mtime_ns) == before
    assert sorted(p.name for p in state.parent.iterdir()) == ["state.duckdb"]
