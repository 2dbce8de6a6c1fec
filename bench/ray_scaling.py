"""Scaling over Ray (issue #18, acceptance 4): replies/s of one m2l process against a run sharded
into Ray shards, on one unlimited simulator, on this machine, in the same invocation.

Both are the real command: ``m2l run CONFIG --quiet`` and ``m2l run CONFIG --ray --shards N
--quiet`` (which starts a local Ray instance of its own), each a fresh run of the same plans
(conversations over the bundled 41-language sample) against one simulator process with no
limits and a 20 ms reply, so the client's CPU is what binds. Replies/s is measured at the
simulator, over the span from its first to its last admission of the run (its counters are
reset before each run), so start-up (Ray's, the shards' imports, set-up) is left out of it and
reported apart as wall time. Rounds alternate single / sharded, so a change in the machine's
load hits both alike. Scaling efficiency = sharded replies/s / (shards x single replies/s).

On a machine with as many cores as shards and no other load, efficiency is bounded by the
simulator's own CPU and the driver's relay; on a shared 2-core machine the simulator, the driver
and two shards compete for two cores, so read the figure with the load it was measured under
(printed).

    .venv/bin/python bench/ray_scaling.py [--conversations N] [--shards N] [--rounds R]
        [--json-out FILE]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `python bench/ray_scaling.py`

from _conv_work import write_seed_file
from _workloads import fetch_stats, start_sims

from engine.simsettings import SimSettings

ROOT = Path(__file__).resolve().parent.parent
M2L = str(Path(sys.executable).parent / "m2l")
API_KEY = "sk-bench-not-a-key"  # the simulator asks for none; a real provider kind needs one


def write_config(folder: Path, name: str, base_url: str, seeds: Path, evols: int) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(
        f"""
[run]
name = "{name}"
output_dir = "{folder / "runs"}"
seed = 5
max_active = 512

[seeds]
file = "{seeds}"
evols_per_seed = {evols}

[provider]
kind = "openai"
base_url = "{base_url}"
model = "gpt-4o-mini"

[limits]
max_inflight = 256

[generation]
max_tokens = {{ evolve = 128, answer = 256, follow_up = 96 }}
""",
        encoding="utf-8",
    )
    return path


def reset(base_url: str) -> None:
    root = base_url.rsplit("/v1", 1)[0]
    request = urllib.request.Request(root + "/stats/reset", data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=10):
        pass


def one_run(args: list[str], base_url: str) -> dict[str, Any]:
    reset(base_url)
    env = {**os.environ, "OPENAI_API_KEY": API_KEY, "RAY_DEDUP_LOGS": "0"}
    started = time.monotonic()
    done = subprocess.run(
        [M2L, "run", *args, "--quiet"], env=env, capture_output=True, text=True, check=False
    )
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"m2l run {' '.join(args)} exited {done.returncode}: {done.stderr}")
    stats = fetch_stats(base_url)
    first, last = stats["first_admission_s"], stats["last_admission_s"]
    span = float(last) - float(first)
    return {
        "replies": int(stats["admitted"]),
        "span_s": round(span, 2),
        "replies_per_s": round(int(stats["admitted"]) / span, 1),
        "wall_s": round(wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=1200)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    evols = 4
    ctx = multiprocessing.get_context("spawn")
    sims = start_sims(ctx, {"u": SimSettings(ttft_s=0.02, per_token_s=0.0, seed=3)})
    sim = sims["u"]
    results: dict[str, list[dict[str, Any]]] = {"single": [], "sharded": []}
    load_before = os.getloadavg()
    try:
        with tempfile.TemporaryDirectory(prefix="m2l-ray-bench-") as tmp:
            folder = Path(tmp)
            seeds = write_seed_file(folder / "seeds.jsonl", max(1, args.conversations // evols))
            for r in range(args.rounds):
                for kind in ("single", "sharded"):
                    name = f"{kind}{r}"
                    config = write_config(folder, name, sim.base_url, seeds, evols)
                    extra = ["--ray", "--shards", str(args.shards)] if kind == "sharded" else []
                    result = one_run([str(config), *extra], sim.base_url)
                    results[kind].append(result)
                    print(f"{name:>9}: {json.dumps(result)}", flush=True)
    finally:
        sim.stop()
    single = statistics.median(r["replies_per_s"] for r in results["single"])
    sharded = statistics.median(r["replies_per_s"] for r in results["sharded"])
    summary = {
        "cpus": os.cpu_count(),
        "load_before": [round(x, 1) for x in load_before],
        "load_after": [round(x, 1) for x in os.getloadavg()],
        "conversations": args.conversations,
        "shards": args.shards,
        "single_replies_per_s": single,
        "sharded_replies_per_s": sharded,
        "speedup": round(sharded / single, 2),
        "scaling_efficiency": round(sharded / (args.shards * single), 2),
        "runs": results,
    }
    print(
        f"\n1 process: {single:.0f} replies/s; {args.shards} Ray shards: {sharded:.0f} replies/s;"
        f" speed-up {summary['speedup']}x, scaling efficiency {summary['scaling_efficiency']}"
        f" (median of {args.rounds} rounds; load average {summary['load_before']} before,"
        f" {summary['load_after']} after, {summary['cpus']} CPUs)"
    )
    print(json.dumps(summary))
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
