"""``m2l requests`` against a naive AsyncOpenAI script and a bare aiohttp loop (issue #19.5).

An unlimited simulator (20 ms per reply, its own process) serves the same 5,000 chat bodies to
each client, each in its own spawned process:

  requests      m2l requests as the command runs it (RequestJob: the input file checked, the
                dispatcher with its limiter and gate, the request log, the budget ledger, every
                result in a real DuckDB file and the output written in order), max_inflight 64
  requests-auto the same with max_inflight = "auto" (the default: adaptive concurrency)
  openai        the usual script: AsyncOpenAI + Semaphore(64) + gather, sleeping on 429
  floor         a bare aiohttp loop posting pre-encoded bodies, 64 at a time: the CPU floor
  dispatcher    (optional) m2l's Dispatcher, limiter and ChatClient alone, no state: where the
                job's CPU goes beyond the floor (the HTTP client and dispatch vs the job itself)
  floor-uvloop  (optional) the floor on uvloop: m2l's clients run on the loop `m2l requests`
                picks (uvloop when installed, --loop), the others on asyncio's

Each client runs a small (1,000) and a large (5,000) file in every round, rounds alternating
the clients so a change in the machine's load hits them alike. Marginal CPU per request is
(CPU of the large run - CPU of the small one) / 4,000: start-up (imports, the state file's
creation) left out. Figures are medians over the rounds; ratios are to the floor of the same
invocation. CPU is measured around the job (or the request loop) only, in the client process.

    .venv/bin/python bench/requests.py [--rounds 3] [--small 1000] [--large 5000]
        [--only requests,openai,floor] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `python bench/requests.py`

from _workloads import (
    MODEL,
    ClientResult,
    ClientSpec,
    _Meter,
    _run_baseline,
    _run_floor,
    _run_m2l,
    build_requests,
    prompt_pool,
    start_sims,
)

from engine.chat import ChatRequest, Message
from engine.simsettings import SimSettings

CONCURRENCY = 64
GOAL = 1.5  # marginal CPU per request of `m2l requests` over the bare aiohttp floor's
CLIENTS = ("requests", "requests-auto", "openai", "floor", "dispatcher", "floor-uvloop")
M2L_CLIENTS = ("requests", "requests-auto", "dispatcher")
DEFAULT = "requests,requests-auto,openai,floor"


async def _run_requests(
    spec: ClientSpec, url: str, requests: list[ChatRequest], deadline_s: float, auto: bool
) -> ClientResult:
    """The job as `m2l requests IN OUT --base-url URL` runs it, on a fresh state file."""
    import orjson

    from engine.config import load_requests_config
    from engine.requestjob import RequestJob

    result = ClientResult(spec.label, spec.kind, len(requests))
    config = load_requests_config(
        None,
        {
            "provider": {"base_url": url, "model": MODEL},
            "limits": {"max_inflight": "auto" if auto else spec.concurrency},
        },
    )
    with tempfile.TemporaryDirectory(prefix="m2l-bench-requests-") as tmp:
        src, out = Path(tmp) / "in.jsonl", Path(tmp) / "out.jsonl"
        with src.open("wb") as f:  # the input exists before the job: not measured
            for i, request in enumerate(requests):
                body = request.body(MODEL)
                body["metadata"] = {"i": i}
                f.write(orjson.dumps(body) + b"\n")
        meter = _Meter(result)
        meter.start()
        report = await asyncio.wait_for(RequestJob(config, src, out, env={}).run(), deadline_s)
        meter.stop()
        result.ok, result.failed = report.ok, report.failed
        result.unfinished = report.total - report.ok - report.failed
        lines = out.read_bytes().count(b"\n")
        if lines != len(requests):
            result.errors["output_lines"] = lines
    return result


def client_main(
    spec: ClientSpec,
    url: str,
    pool: list[tuple[Message, Message]],
    conn: Connection,
    loop: str = "auto",
) -> None:
    """Child process: run each (count, deadline) the parent sends on the event loop ``loop``
    (auto: uvloop when installed, as the command picks it); send the result back."""
    from engine.app import eventloop
    from engine.tokens import TokenCounter

    requests = build_requests(pool, spec.requests)
    TokenCounter(MODEL)  # the tokenizer loads once per process: not a per-request cost
    conn.send("ready")
    while (order := conn.recv()) is not None:
        count, deadline_s = order
        part = requests[:count]
        if spec.label.startswith("requests"):
            run = _run_requests(spec, url, part, deadline_s, auto=spec.label.endswith("auto"))
        elif spec.label == "dispatcher":
            run = _run_m2l(spec, url, part, deadline_s)
        elif spec.kind == "baseline":
            run = _run_baseline(spec, url, part, deadline_s)
        else:
            run = _run_floor(spec, url, part, deadline_s)
        conn.send(eventloop.run(run, loop))
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds (figures are medians)")
    parser.add_argument("--small", type=int, default=1000, help="requests in the small run")
    parser.add_argument(
        "--large", type=int, default=5000, help="requests in the large run (req/s is its)"
    )
    parser.add_argument(
        "--only", default=DEFAULT, help=f"clients, comma-separated, of {','.join(CLIENTS)}"
    )
    parser.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="m2l's event loop (auto: uvloop when installed, as `m2l requests` picks it); the "
        "other clients run on asyncio's, floor-uvloop on uvloop",
    )
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    chosen = [c for c in CLIENTS if c in args.only.split(",")]
    load_start = [round(x, 1) for x in os.getloadavg()]  # the machine is shared: say how busy
    ctx = multiprocessing.get_context("spawn")
    sims = start_sims(ctx, {"unlimited": SimSettings(ttft_s=0.02, per_token_s=0.0, seed=2)})
    url = sims["unlimited"].base_url
    pool = prompt_pool()
    kinds = {
        "requests": "m2l",
        "requests-auto": "m2l",
        "openai": "baseline",
        "floor": "floor",
        "dispatcher": "m2l",
        "floor-uvloop": "floor",
    }
    children: dict[str, tuple[Any, Connection]] = {}
    try:
        for label in chosen:
            spec = ClientSpec(label, kinds[label], args.large, CONCURRENCY)  # type: ignore[arg-type]
            parent, child = ctx.Pipe()
            process = ctx.Process(
                target=client_main, args=(spec, url, pool, child, _loop_of(label, args.loop))
            )
            process.start()
            child.close()
            assert parent.recv() == "ready"
            children[label] = (process, parent)
        runs: dict[str, list[tuple[ClientResult, ClientResult]]] = {c: [] for c in chosen}
        for round_no in range(args.rounds):
            # Each round starts with the next client: a change in the machine's load, or the
            # simulator's, does not always hit the same one first.
            shift = round_no % len(chosen)
            for label in chosen[shift:] + chosen[:shift]:
                _, conn = children[label]
                pair = []
                for count in (args.small, args.large):
                    conn.send((count, 600.0))
                    pair.append(conn.recv())
                small, large = pair
                runs[label].append((small, large))
                print(
                    f"round {round_no + 1} {label:14s} {large.ok}/{large.requests} ok "
                    f"{large.requests_per_s:7.0f} req/s  cpu {small.cpu_s:.2f} s / "
                    f"{large.cpu_s:.2f} s",
                    flush=True,
                )
    finally:
        for process, conn in children.values():
            conn.send(None)
            process.join(30)
        for sim in sims.values():
            sim.stop()
    report = _report(runs, args.small, args.large)
    report["m2l_loop"] = args.loop
    report["load_average"] = {"start": load_start, "end": [round(x, 1) for x in os.getloadavg()]}
    print(_table(report))
    end = report["load_average"]["end"]
    print(f"load average (1, 5, 15 min) at start {load_start}, at end {end}")
    line = json.dumps({"bench": "requests", "machine_cpus": os.cpu_count(), **report})
    print(line)
    if args.json_out is not None:
        args.json_out.write_text(line + "\n")


def _loop_of(label: str, m2l_loop: str) -> str:
    """The event loop a client runs on: m2l's as its commands pick it (``--loop``), the
    others on asyncio's as their users write them, but ``floor-uvloop`` on uvloop."""
    if label == "floor-uvloop":
        return "uvloop"
    return m2l_loop if label in M2L_CLIENTS else "asyncio"


def _report(
    runs: dict[str, list[tuple[ClientResult, ClientResult]]], small: int, large: int
) -> dict[str, Any]:
    out: dict[str, Any] = {"small": small, "large": large, "clients": {}}
    for label, pairs in runs.items():
        marginal = [(b.cpu_s - a.cpu_s) * 1e6 / (large - small) for a, b in pairs]
        out["clients"][label] = {
            "req_per_s": round(statistics.median(b.requests_per_s for _, b in pairs), 1),
            "marginal_cpu_us": round(statistics.median(marginal), 1),
            "cpu_us_per_request_large": round(
                statistics.median(b.cpu_us_per_request for _, b in pairs), 1
            ),
            "lost": max(b.lost for _, b in pairs),
            "errors": pairs[-1][1].errors,
        }
    floor = out["clients"].get("floor")
    if floor:
        for entry in out["clients"].values():
            entry["cpu_vs_floor"] = round(entry["marginal_cpu_us"] / floor["marginal_cpu_us"], 2)
        if "requests" in out["clients"]:
            out["goal_cpu_vs_floor"] = GOAL
            out["goal_met"] = out["clients"]["requests"]["cpu_vs_floor"] <= GOAL
    return out


def _table(report: dict[str, Any]) -> str:
    rows = [f"{'client':14s} {'req/s':>8s} {'marginal CPU/req':>17s} {'vs floor':>9s} {'lost':>5s}"]
    for label, e in report["clients"].items():
        ratio = f"{e['cpu_vs_floor']:.2f}x" if "cpu_vs_floor" in e else "-"
        rows.append(
            f"{label:14s} {e['req_per_s']:8.0f} {e['marginal_cpu_us']:14.0f} us {ratio:>9s} "
            f"{e['lost']:5d}"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    main()
