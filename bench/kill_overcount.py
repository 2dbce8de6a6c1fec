"""How much a SIGKILL makes the budget over-count: the crash test's run (16 conversations, faults
on, some latency) killed at random moments and resumed, then the request log's view of spend
(what the budget starts from after a crash: settled costs plus every attempt whose outcome is
unknown at its worst case) against the money settled for replies that came back.

    .venv/bin/python bench/kill_overcount.py               # 3 trials of 6 kills
    .venv/bin/python bench/kill_overcount.py --trials 5 --kills 4
    .venv/bin/python bench/kill_overcount.py --rpm 300    # requests queue in the limiter

Prints one line per trial and the mean; figures are USD at the built-in gpt-4o-mini price.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from budgets.ledger import spend_from_log
from tests.runfixtures import write_config

PROGRESS = ("--progress", "json", "--progress-interval", "0.1")
FAULTS = "server_error = 0.05\nunavailable = 0.03\nreset = 0.03\ntruncated = 0.03"


def m2l(folder: Path, module: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    return subprocess.Popen(
        [sys.executable, "-m", module, "run", "m2l.toml", *PROGRESS],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )


def wait_for_requests(proc: subprocess.Popen[bytes]) -> bool:
    """Read progress lines until requests are going out; False if the run ended first."""
    assert proc.stdout is not None
    for line in proc.stdout:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("requests_sent", 0) > 0 or record.get("in_flight", 0) > 0:
            return True
    return False


def figures(state: Path) -> tuple[float, float, int, float]:
    """(request log's spend, settled spend of ok replies, attempts of unknown outcome, what
    those hold at their worst case)."""
    with duckdb.connect(str(state), read_only=True) as conn:
        logged = spend_from_log(conn).usd
        row = conn.execute(
            "SELECT coalesce(sum(cost_usd) FILTER (WHERE status = 'ok'), 0), "
            "count(*) FILTER (WHERE status NOT IN ('ok', 'error', 'rejected')), "
            "coalesce(sum(reserved_usd) FILTER (WHERE status NOT IN ('ok', 'error', "
            "'rejected')), 0) FROM requests"
        ).fetchone()
    assert row is not None
    return logged, float(row[0]), int(row[1]), float(row[2])


def trial(
    seed: int, kills: int, module: str, rpm: float | None
) -> tuple[float, float, int, float, int]:
    with tempfile.TemporaryDirectory(prefix="m2l-overcount-") as tmp:
        folder = Path(tmp)
        # With --rpm, requests wait in the limiter's queue, as they do under a real limit.
        extra = f"[limits]\nrpm = {rpm}" if rpm else ""
        write_config(
            folder, evols_per_seed=2, faults=FAULTS, ttft_s=0.02, per_token_s=0.0005, extra=extra
        )
        rng = random.Random(seed)
        done = 0
        while True:
            proc = m2l(folder, module)
            if done < kills and wait_for_requests(proc):
                # Killed while requests are in flight or queued, not during start-up.
                time.sleep(rng.uniform(0.0, 1.0))
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    proc.communicate()
                    done += 1
                    continue
            proc.communicate()
            if done >= kills or proc.returncode == 0:
                break
        logged, settled, unknown, held = figures(folder / "runs" / "t" / "state.duckdb")
        return logged, settled, unknown, held, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument(
        "--cli-module",
        default="engine.app.cli",
        help="the CLI module to run (engine.cli for checkouts older than the app layer)",
    )
    parser.add_argument("--rpm", type=float, default=None, help="a requests/min limit to queue on")
    args = parser.parse_args()
    over = []
    for i in range(args.trials):
        logged, settled, unknown, held, done = trial(
            20261122 + i, args.kills, args.cli_module, args.rpm
        )
        extra = logged - settled
        over.append(extra / settled if settled else 0.0)
        print(
            f"trial {i + 1}: {done} kills; request log ${logged:.6f} vs settled ${settled:.6f}: "
            f"over-count ${extra:.6f} ({extra / settled:.0%} of settled); "
            f"{unknown} attempts of unknown outcome hold ${held:.6f} of it"
        )
    print(f"mean over-count: {sum(over) / len(over):.0%} of the settled spend")


if __name__ == "__main__":
    main()
