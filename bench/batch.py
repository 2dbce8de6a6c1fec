"""Batch-mode benchmark (issue #17, acceptance 8): a 10,000-conversation run through the Batch API.

One ``m2l run`` with ``run.mode = "batch"`` against the embedded simulator served by its own
process (``batch_delay_s`` short, so the run takes minutes rather than the hours a real batch
may take). Reports: batches created, waves (the most batches one conversation's steps went
through, one per step plus any sent again), lines per batch, the run's cost against the same
tokens at the online price, and the client's CPU per step (user + system time of the ``m2l run``
process, every thread, set-up and the final export included, per answered step).

    .venv/bin/python bench/batch.py [--conversations N] [--batch-delay S] [--keep DIR]

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "examples" / "seeds.jsonl"
KEY_ENV = "M2L_BENCH_KEY"
SIM = """
import asyncio, sys
from engine.simsettings import SimSettings
from engine.simulator import run_simulator
async def main():
    settings = SimSettings(seed=5, ttft_s=0.0, per_token_s=0.0, min_completion_tokens=20,
                           max_completion_tokens=200, batch_delay_s=float(sys.argv[1]))
    async with run_simulator(settings) as sim:
        print(sim.base_url, flush=True)
        await asyncio.Event().wait()
asyncio.run(main())
"""


def write_seeds(path: Path, n: int) -> None:
    """``n`` distinct seeds in the bundled file's shape: its rows, each made unique."""
    rows = [json.loads(line) for line in SEEDS.read_text("utf-8").splitlines() if line.strip()]
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            row = dict(rows[i % len(rows)])
            row["inputs"] = f"{row['inputs']} ({i // len(rows) + 1})"
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_config(folder: Path, base_url: str, conversations: int) -> Path:
    path = folder / "batch.toml"
    path.write_text(
        f"""
[run]
name = "bench-batch"
output_dir = "runs"
seed = 1
mode = "batch"

[seeds]
file = "seeds.jsonl"
total = {conversations}
evols_per_seed = 1

[provider]
kind = "openai"
base_url = "{base_url}"
api_key_env = "{KEY_ENV}"
model = "gpt-4o-mini"

[generation]
max_tokens = {{ evolve = 256, answer = 512, follow_up = 192 }}

[batch]
quiet_s = 0.5
poll_min_s = 0.5
poll_max_s = 2.0
""",
        encoding="utf-8",
    )
    return path


def figures(run_dir: Path) -> dict[str, Any]:
    with duckdb.connect(str(run_dir / "state.duckdb"), read_only=True) as conn:
        (batches, lines, smallest, largest) = conn.execute(
            "SELECT count(*), sum(lines), min(lines), max(lines) FROM batch_submissions "
            "WHERE batch_id IS NOT NULL"
        ).fetchone() or (0, 0, 0, 0)
        waves = conn.execute(
            "SELECT max(n) FROM (SELECT conv_id, count(DISTINCT sub_id) AS n FROM batch_lines "
            "GROUP BY conv_id)"
        ).fetchone()
        ok, cost, prompt, completion = conn.execute(
            "SELECT count(*), sum(cost_usd), sum(prompt_tokens), sum(completion_tokens) "
            "FROM requests WHERE status = 'ok'"
        ).fetchone() or (0, 0.0, 0, 0)
        counts = dict(
            conn.execute("SELECT status, count(*) FROM conversations GROUP BY 1").fetchall()
        )
        steps = conn.execute("SELECT count(*) FROM messages").fetchone()
    return {
        "conversations": counts,
        "steps": int(steps[0]) if steps else 0,
        "answered": int(ok),
        "batches": int(batches),
        "lines": int(lines or 0),
        "lines_per_batch": {
            "mean": (lines or 0) / batches if batches else 0.0,
            "min": smallest,
            "max": largest,
        },
        "waves": int(waves[0]) if waves and waves[0] is not None else 0,
        "cost_usd": float(cost or 0.0),
        "prompt_tokens": int(prompt or 0),
        "completion_tokens": int(completion or 0),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument(
        "--batch-delay", type=float, default=2.0, help="simulated seconds a batch takes"
    )
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="m2l-bench-batch-"))
    folder.mkdir(parents=True, exist_ok=True)
    write_seeds(folder / "seeds.jsonl", args.conversations)
    sim = subprocess.Popen(
        [sys.executable, "-c", SIM, str(args.batch_delay)], cwd=ROOT, stdout=subprocess.PIPE
    )
    try:
        assert sim.stdout is not None
        base_url = sim.stdout.readline().decode().strip()
        config = write_config(folder, base_url, args.conversations)
        env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
        env[KEY_ENV] = "sk-bench"
        started = time.monotonic()
        client = subprocess.Popen(
            [sys.executable, "-m", "engine.app.cli", "run", str(config), "--quiet"],
            cwd=folder,
            env=env,
        )
        _, status, usage = os.wait4(client.pid, 0)
        wall = time.monotonic() - started
        client.returncode = os.waitstatus_to_exitcode(status)
    finally:
        sim.kill()
        sim.communicate()
    if client.returncode != 0:
        print(f"m2l run exited {client.returncode}", file=sys.stderr)
        return 1
    result = figures(folder / "runs" / "bench-batch")
    cpu = usage.ru_utime + usage.ru_stime
    sys.path.insert(0, str(ROOT))
    from budgets.prices import load_price_table

    discount = load_price_table().batch_discount
    online = result["cost_usd"] / (1 - discount)
    result.update(
        wall_s=wall,
        client_cpu_s=cpu,
        client_cpu_ms_per_step=cpu * 1000 / max(result["answered"], 1),
        online_cost_usd=online,
        cost_vs_online=result["cost_usd"] / online if online else None,
        batch_delay_s=args.batch_delay,
        machine=f"{platform.machine()}, {os.cpu_count()} cores",
    )
    lpb = result["lines_per_batch"]
    rows = [
        ("conversations", f"{sum(result['conversations'].values()):,} ({result['conversations']})"),
        ("steps answered", f"{result['answered']:,}"),
        ("batches", f"{result['batches']:,}"),
        ("waves", f"{result['waves']} (most batches one conversation went through)"),
        ("lines per batch", f"mean {lpb['mean']:,.0f}, min {lpb['min']}, max {lpb['max']:,}"),
        (
            "cost",
            f"${result['cost_usd']:.2f} vs ${online:.2f} online ({result['cost_vs_online']:.2f}x)",
        ),
        ("wall time", f"{wall:.0f} s (simulated batch delay {args.batch_delay:g} s)"),
        ("client CPU", f"{cpu:.1f} s = {result['client_cpu_ms_per_step']:.2f} ms per step"),
    ]
    for name, value in rows:
        print(f"{name:<16} {value}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
