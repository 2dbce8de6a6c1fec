"""Conversation benchmark (issue #4, acceptance 7): whole conversations through m2l, checkpointed.

Workloads (each client and each simulator is its own spawned process):

  L    limited, checkpointed: simulator at 1200 RPM / 300k TPM (60 s bucket, ttft 200 ms,
       5 ms/token); conversations of 1-6 turns through the scheduler, prompter, tokenizer,
       quality validation, rate limiter, request log and DuckDB store, m2l told the limits
  L0   the same run with checkpointing taken out: conversations served from memory, nothing
       recorded (a no-op store and NullAccounting instead of the request log)
  U    unlimited, checkpointed: a 20 ms simulator without limits, so m2l's CPU is the limit
  U0   the same run with checkpointing taken out
  M    peak RSS of ``m2l run`` (execute_run, resumed) over 10k and over 100k pending
       conversations (set up beforehand in a process of their own), each stopped
       (StopControl.request) after 1,000 finished, against an unlimited simulator

Sizes (full run, about 3.5 minutes on 2 cores): L and L0 240 conversations (60 seeds x 4 evols,
~1,790 replies: the TPM limit binds, ~170 s); U and U0 1,000 conversations (~7,100 replies);
M 10k and 100k. ``--quick`` is a smoke run of about a minute.

CPU is ``getrusage(RUSAGE_SELF)`` of the client process around the run only (set-up excluded,
every thread included: the DuckDB writer's work is m2l's work), per reply received, and is
split by thread (event loop, state writer, others such as DuckDB's workers) from /proc. The run
is assembled from the engine's parts as engine/app/run.py does, with the store and the accounting
swapped for the no-op run; the budget is left out of both. Checkpoint overhead = CPU per reply
checkpointed / CPU per reply with the no-op store. Utilisation of the
binding limit is burst-aware, as in bench/throughput.py: (total charge - one full bucket) /
(limit per second x admission span). L and L0 last about two minutes by construction, so they
run concurrently while U, U0 and the memory runs go one after another. Prints a table, then one
JSON line.

    .venv/bin/python bench/conversations.py [--quick] [--linger-s S] [--json-out FILE] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `python bench/conversations.py`

from _conv_work import (  # needs the path above
    CHECKPOINTED,
    NOOP,
    ConvResult,
    ConvSpec,
    MemResult,
    MemSpec,
    cpu_main,
    mem_run_main,
    mem_setup_main,
)
from _workloads import SimHandle, start_sims, utilisation

from engine.simsettings import SimSettings
from state.batcher import LINGER_S

RPM, TPM = 1200, 300_000
OVERHEAD_TARGET = 1.25  # checkpointed CPU per reply over the no-op store's
RSS_FLAT_TARGET = 1.10  # peak RSS at 100k pending over 10k pending
TITLES = {
    "L": "L   limited, checkpointed",
    "L0": "L0  limited, no-op store",
    "U": "U   unlimited 20 ms, checkpointed",
    "U0": "U0  unlimited 20 ms, no-op store",
}


@dataclass(frozen=True, slots=True)
class Plan:
    """Sizes of one run of the benchmark: full (about three minutes) or --quick."""

    limited_seeds: int  # x evols_per_seed conversations
    limited_bucket_s: float
    limited_deadline_s: float
    unlimited_seeds: int
    unlimited_deadline_s: float
    memory: tuple[int, int]  # pending conversations of the two memory runs
    memory_stop_after: int
    memory_deadline_s: float
    evols_per_seed: int = 4
    linger_s: float = LINGER_S  # the journal's flush interval in L and U

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            # A 6 s bucket keeps a small limited run past its first burst, where the limiter
            # works; the memory runs keep their 10x ratio.
            return cls(10, 6.0, 40.0, 40, 30.0, (2_000, 20_000), 100, 20.0)
        # L takes ~170 s since every request carries a system prompt: 240 s leaves it room.
        return cls(60, 60.0, 240.0, 250, 60.0, (10_000, 100_000), 1_000, 45.0)


def limited_sim(bucket_s: float) -> SimSettings:
    return SimSettings(
        rpm=RPM,
        tpm=TPM,
        ttft_s=0.2,
        per_token_s=0.005,
        bucket_seconds=bucket_s,
        min_completion_tokens=20,
        max_completion_tokens=200,
        seed=1,
    )


def unlimited_sim() -> SimSettings:
    return SimSettings(
        ttft_s=0.02, per_token_s=0.0, min_completion_tokens=20, max_completion_tokens=200, seed=2
    )


class Runner:
    """Starts spawned child processes (each a fresh interpreter) and collects their answers."""

    def __init__(self) -> None:
        self.ctx = multiprocessing.get_context("spawn")
        self.sims: list[SimHandle] = []

    def sim(self, label: str, settings: SimSettings) -> SimHandle:
        sim = start_sims(self.ctx, {label: settings})[label]
        self.sims.append(sim)
        return sim

    def start(self, target: Any, *args: Any) -> tuple[Any, Connection]:
        parent, child = self.ctx.Pipe(duplex=False)
        process = self.ctx.Process(target=target, args=(*args, child), daemon=True)
        process.start()
        child.close()
        return process, parent

    @staticmethod
    def answer(process: Any, conn: Connection, timeout_s: float) -> Any:
        """The child's one message, or None if it died or went past ``timeout_s``."""
        try:
            if conn.poll(timeout_s):
                value = conn.recv()
                process.join(timeout=10)
                return value
        except EOFError:
            pass
        process.terminate()  # m2l's SIGTERM handler stops the run; a hung one needs SIGKILL
        process.join(timeout=15)
        if process.is_alive():
            process.kill()
            process.join(timeout=5)
        return None

    def stop_all(self) -> None:
        for sim in self.sims:
            sim.stop()
        self.sims.clear()


# --- the run --------------------------------------------------------------------------------


def run(plan: Plan, work: Path, wanted: set[str]) -> dict[str, Any]:
    """Run the wanted workloads (L and L0 in the background, the rest one after another)."""
    runner = Runner()
    started = time.perf_counter()
    results: dict[str, ConvResult] = {}
    stats: dict[str, dict[str, Any]] = {}
    memory: list[MemResult] = []
    limited = limited_sim(plan.limited_bucket_s)
    specs = {
        k: ConvSpec(
            k, mode, work / k, plan.limited_seeds, plan.evols_per_seed, plan.limited_deadline_s,
            rpm=RPM, tpm=TPM, linger_s=plan.linger_s,
        )
        for k, mode in (("L", CHECKPOINTED), ("L0", NOOP))
    } | {
        k: ConvSpec(
            k, mode, work / k, plan.unlimited_seeds, plan.evols_per_seed,
            plan.unlimited_deadline_s, linger_s=plan.linger_s,
        )
        for k, mode in (("U", CHECKPOINTED), ("U0", NOOP))
    }  # fmt: skip
    try:
        background = {}
        for k in ("L", "L0"):
            if k in wanted:
                sim = runner.sim(k, limited)
                background[k] = (sim, *runner.start(cpu_main, specs[k], sim.base_url))
        for k in ("U", "U0"):
            if k in wanted:
                sim = runner.sim(k, unlimited_sim())
                process, conn = runner.start(cpu_main, specs[k], sim.base_url)
                results[k] = collect(runner, specs[k], process, conn)
                stats[k] = sim.stats()
        if "M" in wanted:
            memory = run_memory(runner, plan, work)
        for k, (sim, process, conn) in background.items():
            results[k] = collect(runner, specs[k], process, conn)
            stats[k] = sim.stats()
    finally:
        runner.stop_all()
    settings = {"L": limited, "L0": limited}
    return report(plan, results, stats, settings, memory, time.perf_counter() - started)


def collect(runner: Runner, spec: ConvSpec, process: Any, conn: Connection) -> ConvResult:
    """The measured run's result, or an error row if its process died or hung."""
    # Start-up and set-up of the child come on top of the run's deadline.
    result: ConvResult | None = runner.answer(process, conn, spec.deadline_s + 120.0)
    _done(TITLES[spec.label])
    return result or ConvResult(spec.label, spec.mode, error="client process died or hung")


def run_memory(runner: Runner, plan: Plan, work: Path) -> list[MemResult]:
    """Set up and run each memory workload in processes of its own, one after another."""
    sim = runner.sim("M", unlimited_sim())
    out = []
    for pending in plan.memory:
        label = f"M{pending // 1000}k"
        spec = MemSpec(label, work / label, pending, plan.memory_stop_after, plan.memory_deadline_s)
        # Set-up (ingestion, planning) in its own process, so its peak is not the run's.
        process, conn = runner.start(mem_setup_main, spec, sim.base_url)
        planned = runner.answer(process, conn, 300.0)
        if planned is None:
            out.append(MemResult(label, error="set-up process died or hung"))
            continue
        process, conn = runner.start(mem_run_main, spec, sim.base_url)
        result = runner.answer(process, conn, spec.deadline_s + 120.0)
        out.append(result or MemResult(label, error="run process died or hung"))
        _done(f"memory, {pending:,} pending")
    return out


def _done(what: str) -> None:
    """Progress on stderr, so stdout holds only the table and the JSON line."""
    print(f"  done: {what}", file=sys.stderr, flush=True)


def report(
    plan: Plan,
    results: dict[str, ConvResult],
    stats: dict[str, dict[str, Any]],
    settings: dict[str, SimSettings],
    memory: list[MemResult],
    total_s: float,
) -> dict[str, Any]:
    """Everything measured, as one JSON-ready dict (the table is printed from it)."""
    workloads: dict[str, Any] = {}
    for k in TITLES:
        if k not in results:
            continue
        row = results[k].as_dict()
        row["title"] = TITLES[k]
        s = stats.get(k, {})
        row["sim_admitted"] = s.get("admitted")
        row["sim_429"] = sum(s.get("rate_limited", {}).values()) if s else None
        row["sim_tokens_charged"] = s.get("tokens_charged")
        if k in settings and s:
            row["utilisation"] = utilisation(s, settings[k])
        workloads[k] = row
    mem = [
        {
            "label": m.label,
            "pending": m.pending,
            "finished": m.finished,
            "replies": m.replies,
            "status": m.status,
            "wall_s": round(m.wall_s, 1),
            "rss_before_mb": round(m.rss_before_mb, 1),
            "peak_rss_mb": round(m.peak_rss_mb, 1),
            "error": m.error,
        }
        for m in memory
    ]
    return {
        "bench": "conversations",
        "quick": plan.limited_bucket_s < 60,
        "evols_per_seed": plan.evols_per_seed,
        "linger_s": plan.linger_s,
        "total_s": round(total_s, 1),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "workloads": workloads,
        "memory": mem,
        "comparisons": comparisons(workloads, mem),
    }


def comparisons(w: dict[str, Any], mem: list[dict[str, Any]]) -> dict[str, Any]:
    """Checkpoint overhead (per reply, and as a share of one core), utilisation, RSS ratio."""
    out: dict[str, Any] = {}
    for a, b in (("L", "L0"), ("U", "U0")):
        if a in w and b in w and w[b]["cpu_us_per_request"]:
            ratio = round(w[a]["cpu_us_per_request"] / w[b]["cpu_us_per_request"], 3)
            out[f"checkpoint_overhead_{a}"] = ratio
            out[f"checkpoint_overhead_{a}_met"] = ratio <= OVERHEAD_TARGET
            # The same work with and without checkpointing: the difference is its cost.
            extra_us = w[a]["cpu_us_per_request"] - w[b]["cpu_us_per_request"]
            out[f"checkpoint_us_per_request_{a}"] = round(extra_us, 1)
            out[f"checkpoint_core_share_{a}"] = round(
                (w[a]["cpu_s"] - w[b]["cpu_s"]) / max(w[a]["wall_s"], 1e-9), 4
            )
    if "L" in w and "utilisation" in w["L"]:
        out["utilisation_L"] = w["L"]["utilisation"]["value"]
    if len(mem) == 2 and all(m["peak_rss_mb"] and not m["error"] for m in mem):
        ratio = round(mem[1]["peak_rss_mb"] / mem[0]["peak_rss_mb"], 3)
        out["rss_ratio"] = ratio
        out["rss_flat"] = ratio <= RSS_FLAT_TARGET
    return out


# --- output ---------------------------------------------------------------------------------


def table(data: dict[str, Any]) -> str:
    head = (
        f"{'workload':<34} {'convs':>6} {'fin':>6} {'replies':>8} {'429s':>5} {'util':>6} "
        f"{'req/s':>7} {'wall s':>7} {'CPU µs/req':>10} {'RSS MB':>7}"
    )
    lines = [head, "-" * len(head)]
    for row in data["workloads"].values():
        util = row.get("utilisation", {}).get("value")
        n429 = row["sim_429"] if row.get("sim_429") is not None else row["client_429"]
        lines.append(
            f"{row['title']:<34} {row['conversations']:>6} {row['finished']:>6} "
            f"{row['replies']:>8} {n429:>5} {_num(util, 3):>6} {row['requests_per_s']:>7.1f} "
            f"{row['wall_s']:>7.1f} {row['cpu_us_per_request']:>10.0f} {row['peak_rss_mb']:>7.1f}"
        )
    lines.append("")
    for k, row in data["workloads"].items():
        notes = []
        u = row.get("utilisation", {})
        if u.get("binding"):
            notes.append(
                f"binding {u['binding'].upper()}, admission span {u['span_s']} s "
                f"(rpm {u.get('rpm')}, tpm {u.get('tpm')})"
            )
        if row["statuses"]:
            notes.append(", ".join(f"{n} {s}" for s, n in sorted(row["statuses"].items())))
        if row["status"] and row["status"] != "finished":
            notes.append(f"run {row['status']}")
        if row["writer"]:
            wr = row["writer"]
            notes.append(
                f"{wr['ops']} writer ops in {wr['batches']} commits "
                f"({wr['mean_commit_ms']} ms each), close {wr['close_cpu_s']} s CPU"
            )
        if row["threads"]:
            t = row["threads"]
            notes.append(f"CPU s: loop {t['loop']}, writer {t['writer']}, other {t['other']}")
        if row["error"]:
            notes.append(f"ERROR {row['error']}")
        if notes:
            lines.append(f"  {k:<3} " + "; ".join(notes))
    lines.append("")
    head = (
        f"{'memory run':<34} {'pending':>8} {'fin':>6} {'wall s':>7} {'RSS before':>10} {'peak':>7}"
    )
    lines += [head, "-" * len(head)]
    for m in data["memory"]:
        lines.append(
            f"{m['label']:<34} {m['pending']:>8} {m['finished']:>6} {m['wall_s']:>7.1f} "
            f"{m['rss_before_mb']:>10.1f} {m['peak_rss_mb']:>7.1f}"
            + (f"  ERROR {m['error']}" if m["error"] else "")
        )
    lines.append("")
    c = data["comparisons"]
    for a, b in (("L", "L0"), ("U", "U0")):
        key = f"checkpoint_overhead_{a}"
        if key in c:
            verdict = "MET" if c[f"{key}_met"] else "MISSED"
            lines.append(
                f"  checkpoint overhead {a} / {b}: {c[key]:.3f}x CPU per reply "
                f"(target <= {OVERHEAD_TARGET}) {verdict}; "
                f"+{c[f'checkpoint_us_per_request_{a}']:.0f} µs a reply, "
                f"{c[f'checkpoint_core_share_{a}']:.1%} of one core"
            )
    if "rss_ratio" in c:
        verdict = "MET" if c["rss_flat"] else "MISSED"
        lines.append(
            f"  peak RSS {data['memory'][1]['label']} / {data['memory'][0]['label']}: "
            f"{c['rss_ratio']:.3f}x (flat: <= {RSS_FLAT_TARGET}) {verdict}"
        )
    lines.append(
        f"  journal flushes at most every {data['linger_s']} s; "
        f"{data['evols_per_seed']} conversations per seed, 1-6 turns (uniform); L and L0 ran "
        f"concurrently and overlapped U, U0 and the memory runs (one after another); total "
        f"{data['total_s']} s on {data['cpus']} CPUs"
    )
    return "\n".join(lines)


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run, for smoke tests")
    parser.add_argument("--json-out", type=Path, help="also write the JSON line to this file")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep the run files")
    parser.add_argument(
        "--only", default="", help="comma-separated workloads: L, L0, U, U0, M (memory)"
    )
    parser.add_argument(
        "--linger-s",
        type=float,
        default=LINGER_S,
        help=f"the journal's flush interval in L and U (default {LINGER_S})",
    )
    args = parser.parse_args(argv)
    wanted = {"L", "L0", "U", "U0", "M"}
    if args.only:
        chosen = {item.strip().upper() for item in args.only.split(",") if item.strip()}
        if chosen - wanted:
            parser.error(f"--only: unknown workloads {sorted(chosen - wanted)}; use L,L0,U,U0,M")
        wanted = chosen
    plan = replace(Plan.make(args.quick), linger_s=args.linger_s)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        data = run(plan, args.keep, wanted)
    else:
        with tempfile.TemporaryDirectory(prefix="m2l-bench-conv-") as tmp:
            data = run(plan, Path(tmp), wanted)
    print(table(data))
    line = json.dumps(data, separators=(",", ":"))
    print(line)
    if args.json_out is not None:
        args.json_out.write_text(line + "\n", "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
