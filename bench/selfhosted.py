"""Self-hosted servers (issue #16, acceptance 4): adaptive concurrency against fixed limits.

Against the simulator's capacity model (N slots, a full batch 1.5x slower per request, an
unbounded queue, no rate limits), for N = 1, 8 and 64, m2l's dispatcher (gate, limiter,
client, retries) is driven by 512 callers for the same wall time with:

  sweep   fixed max_inflight around N (the best of these is "best fixed")
  auto    max_inflight = "auto"
  256     fixed 256 with the timeout guard (m2l now)
  256-old fixed 256 without the guard (m2l before this issue)

and reports replies per second, auto as a ratio to the best fixed, p99 latency at the server
as a multiple of the unloaded p99 (one request at a time), and timeouts. Requests are
about 200 prompt tokens; replies 20-200 tokens at 2 ms per token after 50 ms (0.05-0.45 s
alone). The read timeout is 20 s, shorter than m2l's 120 s default so that a short run shows
what an overfull server queue does. The simulator runs in its own process.

    .venv/bin/python bench/selfhosted.py [--seconds 30] [--slots 1,8,64] [--json-out FILE]

``--virtual`` runs the same plan on a virtual clock instead (bench/_virtual_slots.py: the same
controller and capacity model, event by event, with a fixed turnaround of ``--turnaround``
seconds between a slot freeing up and the next request reaching it), over ``--seeds`` seeds:
the controller's figures without the machine's noise, in a few seconds a seed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `python bench/selfhosted.py`

from _virtual_slots import drive_virtual, percentile
from _workloads import MODEL, build_requests, fetch_stats, prompt_pool, start_sims

from engine._adaptive import ConcurrencyCore
from engine.chat import ChatRequest
from engine.client import ChatClient
from engine.concurrency import ConcurrencyGate
from engine.config import LimitsConfig, ProviderConfig
from engine.dispatcher import Dispatcher
from engine.events import Event, RequestDone, RequestFailed, RequestRetried
from engine.limiter import RateLimiter
from engine.simsettings import SimSettings

CALLERS = 512  # conversations wanting a reply at once (a run's max_active)
READ_TIMEOUT_S = 20.0
_PER_RUN = 8_000  # request bodies per run, more than the fastest run sends
SWEEPS: dict[int, tuple[int, ...]] = {1: (1, 2), 8: (8, 12), 64: (64, 96)}


@dataclass
class Result:
    label: str
    replies: int = 0
    seconds: float = 0.0
    timeouts: int = 0
    p99_s: float | None = None
    limit_end: int | None = None
    limits: list[int] = field(default_factory=list, repr=False)  # the limit each second
    latencies: list[float] = field(default_factory=list, repr=False)

    @property
    def per_s(self) -> float:
        return self.replies / self.seconds if self.seconds else 0.0


class _Events:
    def __init__(self, result: Result) -> None:
        self.result = result

    def on_event(self, event: Event) -> None:
        if isinstance(event, RequestDone):
            self.result.latencies.append(event.latency_s)
        elif (
            isinstance(event, RequestRetried | RequestFailed)
            and event.error_class == "request_timeout"
        ):
            self.result.timeouts += 1


async def drive(
    url: str, label: str, requests: list[ChatRequest], seconds: float, gate: ConcurrencyGate
) -> Result:
    """``CALLERS`` callers send through one dispatcher until the time is up."""
    result = Result(label)
    provider = ProviderConfig(
        kind="openai", base_url=url, model=MODEL, read_timeout_s=READ_TIMEOUT_S
    )
    pending = iter(requests)
    async with ChatClient(provider, base_url=url, api_key=None) as client:
        dispatcher = Dispatcher(
            client, RateLimiter(LimitsConfig(max_inflight=None)), gate=gate, hooks=_Events(result)
        )

        async def caller() -> None:
            for request in pending:
                with contextlib.suppress(Exception):  # failures are counted by the events
                    await dispatcher.complete(request, kind="answer")
                    result.replies += 1

        async def sample() -> None:
            while True:
                result.limits.append(gate.limit)
                await asyncio.sleep(1.0)

        start = time.monotonic()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds), asyncio.TaskGroup() as group:
                group.create_task(sample())
                for _ in range(CALLERS):
                    group.create_task(caller())
        result.seconds = time.monotonic() - start
    result.limit_end = gate.limit
    if result.latencies:
        ordered = sorted(result.latencies)
        result.p99_s = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return result


def wait_idle(url: str) -> None:
    """Until the simulator has nothing busy or queued (the last run's requests were cut)."""
    for _ in range(200):
        slots = fetch_stats(url).get("slots", {})
        if not slots.get("busy") and not slots.get("queued"):
            return
        time.sleep(0.05)


def run_slots(url: str, slots: int, seconds: float, requests: list[ChatRequest]) -> dict[str, Any]:
    """Every configuration against one slot count, one after another on one simulator."""
    plan: list[tuple[str, ConcurrencyGate, float]] = [
        ("unloaded", ConcurrencyGate(fixed=1), min(seconds, 8.0))
    ]
    plan += [(f"fixed {n}", ConcurrencyGate(fixed=n, timeout_s=READ_TIMEOUT_S), seconds)
             for n in SWEEPS[slots]]  # fmt: skip
    plan += [
        ("auto", ConcurrencyGate(timeout_s=READ_TIMEOUT_S), seconds),
        ("256", ConcurrencyGate(fixed=256, timeout_s=READ_TIMEOUT_S), seconds),
        ("256-old", ConcurrencyGate(fixed=256), seconds),
    ]
    results: dict[str, Result] = {}
    offset = 0
    for label, gate, duration in plan:
        wait_idle(url)
        # Each run takes fresh request bodies, so the simulator's replies do not repeat.
        chunk = requests[offset : offset + _PER_RUN]
        offset += _PER_RUN
        results[label] = asyncio.run(drive(url, label, chunk, duration, gate))
        r = results[label]
        print(
            f"  {slots:>2} slots  {label:<10} {r.per_s:7.1f} replies/s  p99 "
            f"{r.p99_s or 0:6.2f} s  timeouts {r.timeouts:>4}  limit at end {r.limit_end}",
            flush=True,
        )
        if label == "auto":
            print(f"  {'':>8}  auto's limit each second: {r.limits}", flush=True)
    unloaded = results["unloaded"].p99_s or 0.0
    sweep = [results[f"fixed {n}"] for n in SWEEPS[slots]]
    best = max(sweep, key=lambda r: r.per_s)
    auto = results["auto"]

    def row(r: Result) -> dict[str, Any]:
        return {
            "replies_per_s": round(r.per_s, 2),
            "ratio_to_best_fixed": round(r.per_s / best.per_s, 3) if best.per_s else None,
            "p99_s": None if r.p99_s is None else round(r.p99_s, 3),
            "p99_vs_unloaded": round(r.p99_s / unloaded, 2) if r.p99_s and unloaded else None,
            "timeouts": r.timeouts,
            "limit_at_end": r.limit_end,
            **({"limit_each_second": r.limits} if r.label == "auto" else {}),
        }

    return {
        "slots": slots,
        "unloaded_p99_s": round(unloaded, 3),
        "best_fixed": best.label,
        "runs": {label: row(r) for label, r in results.items() if label != "unloaded"},
        "auto_goal_met": bool(
            best.per_s
            and auto.per_s >= 0.95 * best.per_s
            and auto.p99_s is not None
            and auto.p99_s <= 2 * unloaded
            and auto.timeouts == 0
        ),
    }


def virtual_slots(slots: int, seconds: float, seeds: int, turnaround: float) -> dict[str, Any]:
    """The plan of ``run_slots`` on the virtual clock, once per seed; ratios per seed."""
    t = READ_TIMEOUT_S
    plan: dict[str, Any] = {f"fixed {n}": (lambda c, n=n: ConcurrencyCore(c, fixed=n, timeout_s=t))
                            for n in SWEEPS[slots]}  # fmt: skip
    plan["auto"] = lambda c: ConcurrencyCore(c, timeout_s=t)
    plan["256"] = lambda c: ConcurrencyCore(c, fixed=256, timeout_s=t)
    plan["256-old"] = lambda c: ConcurrencyCore(c, fixed=256)
    per_seed = []
    for seed in range(1, seeds + 1):

        def run(make: Any, duration: float = seconds, seed: int = seed) -> Any:
            return drive_virtual(make, slots=slots, seconds=duration, seed=seed,
                                 turnaround=turnaround, timeout_s=t)  # fmt: skip

        unloaded = percentile(
            run(lambda c: ConcurrencyCore(c, fixed=1), min(seconds, 8.0)).latencies, 0.99
        )
        runs = {label: run(make) for label, make in plan.items()}
        best = max((runs[f"fixed {n}"] for n in SWEEPS[slots]), key=lambda r: r.per_s)
        row = {}
        for label, r in runs.items():
            p99 = percentile(r.latencies, 0.99)
            row[label] = {
                "replies_per_s": round(r.per_s, 2),
                "ratio_to_best_fixed": round(r.per_s / best.per_s, 3),
                "p99_vs_unloaded": round(p99 / unloaded, 2) if p99 and unloaded else None,
                "timeouts": r.timeouts,
                "limit_at_end": r.limit_end,
            }
        per_seed.append(row)
    auto = [row["auto"] for row in per_seed]
    mean = round(sum(a["ratio_to_best_fixed"] for a in auto) / len(auto), 3)
    worst_p99 = max(a["p99_vs_unloaded"] or 0.0 for a in auto)
    timeouts = sum(a["timeouts"] for a in auto)
    summary = {
        "slots": slots,
        "auto_ratio_mean": mean,
        "auto_ratio_min": min(a["ratio_to_best_fixed"] for a in auto),
        "auto_p99_vs_unloaded_max": worst_p99,
        "auto_timeouts": timeouts,
        "ratio_256_mean": round(sum(r["256"]["ratio_to_best_fixed"] for r in per_seed) / seeds, 3),
        "timeouts_256_old": sum(r["256-old"]["timeouts"] for r in per_seed),
        "auto_goal_met": mean >= 0.95 and worst_p99 <= 2.0 and timeouts == 0,
        "seeds": per_seed,
    }
    print(
        f"  {slots:>2} slots  auto/best mean {mean:.3f} (min {summary['auto_ratio_min']:.3f})  "
        f"p99/unloaded max {worst_p99:.2f}  timeouts {timeouts}  256/best "
        f"{summary['ratio_256_mean']:.3f}  256-old timeouts {summary['timeouts_256_old']}",
        flush=True,
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="wall time of each run")
    parser.add_argument("--slots", default="1,8,64", help="slot counts, comma-separated")
    parser.add_argument("--json-out", type=Path, help="also write the JSON here")
    parser.add_argument("--virtual", action="store_true", help="on a virtual clock (no machine)")
    parser.add_argument("--seeds", type=int, default=10, help="--virtual: seeds per slot count")
    parser.add_argument(
        "--turnaround", type=float, default=0.02, help="--virtual: seconds a freed slot idles"
    )
    args = parser.parse_args(argv)
    slot_counts = [int(s) for s in args.slots.split(",")]
    for n in slot_counts:
        SWEEPS.setdefault(n, (max(1, n // 2), n, n + max(1, n // 4), 2 * n))
    if args.virtual:
        virtual = [virtual_slots(n, args.seconds, args.seeds, args.turnaround) for n in slot_counts]
        data = {"bench": "selfhosted", "clock": "virtual", "seconds": args.seconds,
                "turnaround_s": args.turnaround, "results": virtual}  # fmt: skip
        print(json.dumps({**data, "results": [{k: v for k, v in r.items() if k != "seeds"}
                                               for r in virtual]}))  # fmt: skip
        if args.json_out:
            args.json_out.write_text(json.dumps(data, indent=2))
        return 0
    pool = prompt_pool()
    requests = build_requests(pool, _PER_RUN * 10)
    ctx = multiprocessing.get_context("spawn")
    out: list[dict[str, Any]] = []
    for slots in slot_counts:
        settings = SimSettings(
            seed=1,
            ttft_s=0.05,
            per_token_s=0.002,
            jitter=0.1,
            min_completion_tokens=20,
            max_completion_tokens=200,
            slots=slots,
            batch_slowdown=1.5,
        )
        handle = start_sims(ctx, {str(slots): settings})[str(slots)]
        try:
            out.append(run_slots(handle.base_url, slots, args.seconds, requests))
        finally:
            handle.stop()
    print()
    print(f"{'slots':>5}  {'best fixed':<11} {'auto/best':>9} {'auto p99/unl':>12} "
          f"{'auto t/o':>8} {'256/best':>8} {'256 p99/unl':>11} {'256-old t/o':>11}")  # fmt: skip
    for item in out:
        runs = item["runs"]
        print(
            f"{item['slots']:>5}  {item['best_fixed']:<11} "
            f"{runs['auto']['ratio_to_best_fixed']:>9} {runs['auto']['p99_vs_unloaded']:>12} "
            f"{runs['auto']['timeouts']:>8} {runs['256']['ratio_to_best_fixed']:>8} "
            f"{runs['256']['p99_vs_unloaded']:>11} {runs['256-old']['timeouts']:>11}"
        )
    data = {"bench": "selfhosted", "seconds": args.seconds, "results": out}
    print(json.dumps(data))
    if args.json_out:
        args.json_out.write_text(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
