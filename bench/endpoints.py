"""Several endpoints in one run (issue #18, point 1): does a second key add its limit, does each
endpoint stay within its own, and how does a run carry on when one endpoint's key is rejected?

Workloads (every simulator is its own spawned process; every run is a real ``m2l run``
subprocess over the same seeds, so each has its own interpreter and its own store):

  one       one endpoint, a simulator at RPM requests/min
  two       two endpoints, each a simulator at RPM requests/min (two keys of one model)
  uneven    two endpoints at RPM and 2 x RPM (the second with weight 2)
  failover  two endpoints at RPM, the second's key rejected (401): it is taken out at once

Each simulator answers after ttft 50 ms + 1 ms/token and keeps a 10 s bucket, so the rate
limit binds within seconds. Figures: replies per second over the run's own span (first request
sent to last reply, from its request log), each endpoint's replies, 429s and burst-aware
utilisation of its own limit (as bench/throughput.py computes it), and the ratio of replies/s
with two endpoints to one (2.0 would be perfect scaling). Prints a table, then one JSON line.

    .venv/bin/python bench/endpoints.py [--rpm 1200] [--seeds 40] [--json-out FILE] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `python bench/endpoints.py`

import duckdb
from _workloads import SimHandle, start_sims, utilisation

from engine.simsettings import SimSettings

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "examples" / "seeds.jsonl"
KEYS = {"BENCH_KEY_A": "sk-bench-a-" + "0" * 24, "BENCH_KEY_B": "sk-bench-b-" + "1" * 24}


def sim(rpm: int, key: str) -> SimSettings:
    return SimSettings(
        rpm=rpm,
        bucket_seconds=10.0,
        ttft_s=0.05,
        per_token_s=0.001,
        jitter=0.1,
        seed=7,
        require_api_key=key,
        model="gpt-4o-mini",
    )


def entry(name: str, url: str, env: str, rpm: int, weight: float = 1.0) -> str:
    return f"""
[[providers]]
name = "{name}"
kind = "openai"
base_url = "{url}"
api_key_env = "{env}"
model = "gpt-4o-mini"
weight = {weight}
limits = {{ rpm = {rpm} }}
"""


def config(folder: Path, name: str, seeds: int, entries: str) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(
        f"""
[run]
name = "{name}"
output_dir = "{folder / "runs"}"
seed = 5
max_active = 256

[seeds]
file = "{SEEDS}"
total = {seeds}
evols_per_seed = 2
{entries}
[generation]
max_tokens = {{ evolve = 128, answer = 256, follow_up = 64 }}
"""
    )
    return path


def run(path: Path) -> tuple[int, float, str]:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"} | KEYS
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "engine.app.cli", "run", str(path), "--quiet"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    return proc.returncode, time.monotonic() - started, (proc.stdout + proc.stderr)[-2000:]


def store_figures(run_dir: Path) -> dict[str, Any]:
    with duckdb.connect(str(run_dir / "state.duckdb"), read_only=True) as conn:
        span = conn.execute(
            "SELECT epoch(max(finished_at)) - epoch(min(sent_at)) FROM requests"
        ).fetchone()
        rows = conn.execute(
            "SELECT endpoint, count(*) FILTER (WHERE status = 'ok') FROM requests GROUP BY 1"
        ).fetchall()
        done = conn.execute(
            "SELECT count(*) FROM conversations WHERE status IN ('done', 'filtered', 'failed')"
        ).fetchone()
    replies = {str(e): int(n) for e, n in rows}
    seconds = float(span[0]) if span and span[0] else 0.0
    total = sum(replies.values())
    return {
        "span_s": round(seconds, 2),
        "replies": total,
        "replies_per_s": round(total / seconds, 2) if seconds else None,
        "by_endpoint": replies,
        "conversations_finished": int(done[0]) if done else 0,
    }


def workload(
    ctx: Any, folder: Path, name: str, seeds: int, sims: dict[str, tuple[int, str, str, float]]
) -> dict[str, Any]:
    """Start the simulators, run m2l over them, and gather the figures."""
    handles: dict[str, SimHandle] = start_sims(
        ctx, {label: sim(rpm, KEYS[key]) for label, (rpm, key, _, _) in sims.items()}
    )
    try:
        entries = "".join(
            entry(label, handles[label].base_url, env, rpm, weight)
            for label, (rpm, _, env, weight) in sims.items()
        )
        code, wall, output = run(config(folder, name, seeds, entries))
        served = {label: handles[label].stats() for label in sims}
    finally:
        for handle in handles.values():
            handle.stop()
    figures = store_figures(folder / "runs" / name)
    figures.update(exit_code=code, wall_s=round(wall, 2))
    if code != 0:
        figures["output"] = output
    figures["endpoints"] = {
        label: {
            "rpm": sims[label][0],
            "admitted": stats["admitted"],
            "rate_limited": sum(stats["rate_limited"].values()),
            "rejected": stats["rejected"],
            "utilisation": utilisation(stats, handles[label].settings).get("rpm"),
        }
        for label, stats in served.items()
    }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rpm", type=int, default=1200, help="each simulator's requests/min")
    parser.add_argument("--seeds", type=int, default=40, help="seeds (2 conversations each)")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--keep", type=Path, help="keep the runs in this folder")
    args = parser.parse_args()
    ctx = multiprocessing.get_context("spawn")
    rpm = args.rpm
    plans = {
        "one": {"a": (rpm, "BENCH_KEY_A", "BENCH_KEY_A", 1.0)},
        "two": {
            "a": (rpm, "BENCH_KEY_A", "BENCH_KEY_A", 1.0),
            "b": (rpm, "BENCH_KEY_B", "BENCH_KEY_B", 1.0),
        },
        "uneven": {
            "a": (rpm, "BENCH_KEY_A", "BENCH_KEY_A", 1.0),
            "b": (2 * rpm, "BENCH_KEY_B", "BENCH_KEY_B", 2.0),
        },
        # b's simulator expects key A: the key b sends (B) is rejected with a 401.
        "failover": {
            "a": (rpm, "BENCH_KEY_A", "BENCH_KEY_A", 1.0),
            "b": (rpm, "BENCH_KEY_A", "BENCH_KEY_B", 1.0),
        },
    }
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for name, sims in plans.items():
            results[name] = workload(ctx, folder, name, args.seeds, sims)
            r = results[name]
            print(
                f"{name:9s} exit {r['exit_code']}  {r['replies']:5d} replies in "
                f"{r['span_s']:6.1f} s = {r['replies_per_s']} replies/s  (wall {r['wall_s']} s)"
            )
            for label, e in r["endpoints"].items():
                print(
                    f"          {label}: {e['rpm']} rpm, {r['by_endpoint'].get(label, 0)} replies, "
                    f"{e['rate_limited']} 429s, {sum(e['rejected'].values())} refused, "
                    f"utilisation {e['utilisation']}"
                )
    one, two = results["one"]["replies_per_s"], results["two"]["replies_per_s"]
    ratio = round(two / one, 3) if one and two else None
    print(f"two endpoints / one, replies per second: {ratio} (2.0 = each key's limit fully added)")
    doc = {
        "rpm": rpm,
        "seeds": args.seeds,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "two_over_one": ratio,
        "workloads": results,
    }
    line = json.dumps(doc, sort_keys=True)
    print(line)
    if args.json_out:
        args.json_out.write_text(line + "\n")


if __name__ == "__main__":
    main()
