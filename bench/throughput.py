"""Throughput benchmark (issue #3, acceptance 6): m2l against rate limits and without them.

Workloads (bench/README.md says what each measures and how to read the output):

  a   limited: simulator at 1200 RPM / 300k TPM, ttft 200 ms, 5 ms/token; 2000 requests of
      ~200 prompt tokens and max_tokens 300, through m2l configured with the real limits
  b   unlimited: simulator with no limits and 20 ms latency; 20,000 requests through m2l
  c   the same two through a naive baseline (AsyncOpenAI + Semaphore + gather, sleep on 429);
      ``ca`` and ``cb`` select one of them
  d   unlimited through a bare aiohttp loop posting the same bodies: the CPU floor
  e   workload a against a provider whose bucket holds one second of quota (fewer requests,
      so that it lasts as long as a)
  f   workload a with m2l configured with twice the real limits

Every simulator and every client is its own process; a client's CPU is measured around its
request loop only. The limited workloads (a, ca, e, f) take ~2.4 minutes by construction, so
they run concurrently, each against its own simulator, while the unlimited ones run one after
another in the same window: b and d alternate in rounds on one simulator (so a change in the
machine's load hits both alike), then cb has the rest of the window. Prints a table, then one
JSON line.

    .venv/bin/python bench/throughput.py [--quick] [--only a,b,c,d,e,f] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `python bench/throughput.py`

from _workloads import (
    ClientResult,
    ClientSpec,
    SimHandle,
    build_requests,
    client_main,
    prompt_pool,
    start_sims,
    utilisation,
)

from engine.chat import Message
from engine.simsettings import SimSettings

ALL = ("a", "ca", "e", "f", "d", "b", "cb")
LIMITED = ("a", "ca", "e", "f")
RPM, TPM = 1200, 300_000
CONCURRENCY = 64  # in-flight requests for every client (m2l's max_inflight, the semaphore)
UTIL_TARGET = 0.98
RATE_LIMITED_TARGET = 0.005  # 429s per request
CPU_RATIO_TARGET = 1.5  # m2l's CPU per request in (b) over the bare aiohttp floor's

TITLES = {
    "a": "a   limited, m2l told the real limits",
    "ca": "c-a limited, naive baseline",
    "e": "e   limited, 1 s server bucket",
    "f": "f   limited, m2l told 2x the limits",
    "d": "d   unlimited 20 ms, bare aiohttp",
    "b": "b   unlimited 20 ms, m2l",
    "cb": "c-b unlimited 20 ms, naive baseline",
}

Pool = list[tuple[Message, Message]]


@dataclass(frozen=True, slots=True)
class Plan:
    """Sizes for one run: full, or --quick (10x fewer requests, a 10x smaller server bucket)."""

    limited_requests: int
    unlimited_requests: int
    bucket_s: float  # the limited simulator's bucket (60 s of quota, as OpenAI's)
    rounds: int  # b and d alternate in this many slices
    window_s: float  # the unlimited runs' share of time when no limited workload sets it

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            # Fewer requests against a full-size 60 s bucket would all fit in its first burst;
            # a 6 s bucket keeps the run past the burst, where the limiter is tested.
            return cls(200, 2000, 6.0, 2, 25.0)
        return cls(2000, 20_000, 60.0, 4, 150.0)


def limited_sim(bucket_s: float) -> SimSettings:
    return SimSettings(
        rpm=RPM, tpm=TPM, ttft_s=0.2, per_token_s=0.005, bucket_seconds=bucket_s, seed=1
    )


def unlimited_sim() -> SimSettings:
    return SimSettings(ttft_s=0.02, per_token_s=0.0, seed=2)


def expected_s(requests: int, charge: float, bucket_s: float) -> float:
    """Seconds a perfect client needs: what exceeds the first full bucket, at the TPM rate."""
    rate = TPM / 60.0
    return max(0.0, (requests * charge - rate * bucket_s) / rate)


def deadline_s(requests: int, charge: float, bucket_s: float) -> float:
    # A perfect client needs expected_s; leave 10% and a few seconds for the reply tail.
    return expected_s(requests, charge, bucket_s) * 1.1 + 6.0


# --- processes ------------------------------------------------------------------------------


class Client:
    """One client process: it builds its requests, then runs the slices it is sent."""

    def __init__(self, ctx: Any, spec: ClientSpec, url: str, pool: Pool) -> None:
        self.spec = spec
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=client_main, args=(spec, url, pool, child), name=f"client-{spec.label}"
        )
        self.process.daemon = True
        self.process.start()
        child.close()
        self.slices: list[ClientResult] = []

    def ready(self) -> None:
        """Wait until the client has imported everything and built its requests."""
        if not self.conn.poll(120) or self.conn.recv() != "ready":
            raise RuntimeError(f"client {self.spec.label} did not start")

    def send(self, start: int, stop: int, deadline: float) -> None:
        self.conn.send((start, stop, deadline))

    def wait_slice(self, deadline: float) -> ClientResult:
        part = self._recv(deadline + 60)
        self.slices.append(part)
        return part

    def finish(self) -> ClientResult:
        """Tell the client it is done; its totals and peak RSS."""
        self.conn.send(None)
        total = self._recv(30)
        self.process.join(timeout=10)
        return total

    def _recv(self, timeout: float) -> ClientResult:
        if self.conn.poll(timeout):
            try:
                result: ClientResult = self.conn.recv()
                return result
            except EOFError:
                pass
        self.process.terminate()
        raise RuntimeError(f"client {self.spec.label} died or hung; see its output above")


class Runner:
    """Starts simulator and client processes (spawned: each a fresh interpreter)."""

    def __init__(self) -> None:
        self.ctx = multiprocessing.get_context("spawn")
        self.sims: list[SimHandle] = []

    def start_sims(self, wanted: dict[str, SimSettings]) -> dict[str, SimHandle]:
        handles = start_sims(self.ctx, wanted)
        self.sims.extend(handles.values())
        return handles

    def stop_all(self) -> None:
        for handle in self.sims:
            handle.stop()
        self.sims.clear()


# --- the run --------------------------------------------------------------------------------


def specs(plan: Plan, charge: float, wanted: set[str]) -> dict[str, ClientSpec]:
    n = plan.limited_requests
    bucket_tokens = TPM * plan.bucket_s / 60.0
    # (e): a one-second bucket has no big first burst; fewer requests make it last as long as a.
    n_e = max(1, round(n - (bucket_tokens - TPM / 60.0) / charge))
    base = ClientSpec("a", "m2l", n, CONCURRENCY, rpm=RPM, tpm=TPM)
    unlimited = ClientSpec("b", "m2l", plan.unlimited_requests, CONCURRENCY)
    out = {
        "a": base,
        "ca": replace(base, label="ca", kind="baseline", rpm=None, tpm=None),
        "e": replace(base, label="e", requests=n_e),
        "f": replace(base, label="f", rpm=2 * RPM, tpm=2 * TPM),
        "d": replace(unlimited, label="d", kind="floor"),
        "b": unlimited,
        "cb": replace(unlimited, label="cb", kind="baseline"),
    }
    return {k: v for k, v in out.items() if k in wanted}


def run(plan: Plan, wanted: set[str]) -> dict[str, Any]:
    pool = prompt_pool()
    sample = build_requests(pool, len(pool))
    charge = statistics.fmean(r.charge for r in sample)
    prompt = statistics.fmean(r.prompt_tokens for r in sample)
    todo = specs(plan, charge, wanted)
    limited = [k for k in LIMITED if k in todo]
    sim_settings = {k: limited_sim(1.0 if k == "e" else plan.bucket_s) for k in limited}
    deadlines = {
        k: deadline_s(todo[k].requests, charge, sim_settings[k].bucket_seconds) for k in limited
    }
    runner = Runner()
    started = time.perf_counter()
    results: dict[str, ClientResult] = {}
    stats: dict[str, dict[str, Any]] = {}
    rounds: list[dict[str, float]] = []
    try:
        sims = runner.start_sims(sim_settings)
        clients = {k: Client(runner.ctx, todo[k], sims[k].base_url, pool) for k in limited}
        for k, client in clients.items():
            client.ready()
            client.send(0, todo[k].requests, deadlines[k])
        window_end = started + max(deadlines.values(), default=plan.window_s)
        unlimited = [k for k in ("d", "b", "cb") if k in todo]
        if unlimited:
            (sim,) = runner.start_sims({"unlimited": unlimited_sim()}).values()
            rounds = run_unlimited(runner, plan, todo, sim.base_url, pool, window_end, results)
            stats["unlimited"] = sim.stats()
        for k, client in clients.items():
            client.wait_slice(deadlines[k])
            results[k] = client.finish()
            stats[k] = sims[k].stats()
            print(f"  done: {TITLES[k]}", file=sys.stderr, flush=True)
    finally:
        runner.stop_all()
    total_s = time.perf_counter() - started
    return report(plan, todo, sim_settings, results, stats, rounds, charge, prompt, total_s)


def run_unlimited(
    runner: Runner,
    plan: Plan,
    todo: dict[str, ClientSpec],
    url: str,
    pool: Pool,
    window_end: float,
    results: dict[str, ClientResult],
) -> list[dict[str, float]]:
    """d and b alternate in rounds (the order flips each round), then cb; returns the rounds."""
    pair = [k for k in ("d", "b") if k in todo]
    clients = {k: Client(runner.ctx, todo[k], url, pool) for k in pair}
    for client in clients.values():
        client.ready()
    n = plan.unlimited_requests
    per_round = math.ceil(n / plan.rounds)
    # Each slice may take its share of the window; at the rates seen here it needs far less.
    slice_deadline = max(5.0, (window_end - time.perf_counter()) / (2 * plan.rounds + 2))
    rounds: list[dict[str, float]] = []
    for r in range(plan.rounds if pair else 0):
        start, stop = r * per_round, min(n, (r + 1) * per_round)
        row: dict[str, float] = {}
        for k in pair if r % 2 == 0 else pair[::-1]:
            clients[k].send(start, stop, slice_deadline)
            part = clients[k].wait_slice(slice_deadline)
            row[k] = round(part.cpu_us_per_request, 1)
        if len(row) == 2:
            row["ratio"] = round(row["b"] / row["d"], 3)
        rounds.append(row)
    for k, client in clients.items():
        results[k] = client.finish()
        print(f"  done: {TITLES[k]}", file=sys.stderr, flush=True)
    if "cb" in todo:
        client = Client(runner.ctx, todo["cb"], url, pool)
        client.ready()
        # The baseline gets what is left of the window (it is the slowest by far).
        left = max(10.0, window_end - time.perf_counter() - 3.0)
        client.send(0, n, left)
        client.wait_slice(left)
        results["cb"] = client.finish()
        print(f"  done: {TITLES['cb']}", file=sys.stderr, flush=True)
    return rounds


def report(
    plan: Plan,
    todo: dict[str, ClientSpec],
    sim_settings: dict[str, SimSettings],
    results: dict[str, ClientResult],
    stats: dict[str, dict[str, Any]],
    rounds: list[dict[str, float]],
    charge: float,
    prompt: float,
    total_s: float,
) -> dict[str, Any]:
    """Everything measured, as one JSON-ready dict (the table is printed from it)."""
    workloads: dict[str, Any] = {}
    for k in ALL:
        if k not in results:
            continue
        r, s = results[k], stats.get(k, {})
        row = r.as_dict()
        row["title"] = TITLES[k]
        if k in sim_settings and s:
            row["sim_429"] = sum(s["rate_limited"].values())
            row["sim_admitted"] = s["admitted"]
            row["utilisation"] = utilisation(s, sim_settings[k])
            row["rate_limited_share"] = round(row["sim_429"] / max(1, r.requests), 5)
            row["sim_rate_limited"] = s["rate_limited"]
        workloads[k] = row
    return {
        "bench": "throughput",
        "quick": plan.limited_requests < 2000,
        "concurrency": CONCURRENCY,
        "mean_prompt_tokens": round(prompt, 1),
        "mean_charge_tokens": round(charge, 1),
        "limited_overlapped_with_unlimited": bool(set(todo) & set(LIMITED))
        and bool(set(todo) - set(LIMITED)),
        "rounds_b_d": rounds,
        "total_s": round(total_s, 1),
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "workloads": workloads,
        "comparisons": comparisons(workloads, rounds),
    }


def comparisons(w: dict[str, Any], rounds: list[dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def util(k: str) -> float | None:
        value = w.get(k, {}).get("utilisation", {}).get("value")
        return float(value) if value is not None else None

    ua, uca = util("a"), util("ca")
    if ua is not None and uca:
        out["a_util_m2l_over_baseline"] = round(ua / uca, 3)
    if "a" in w and "ca" in w:
        out["a_lost_m2l_vs_baseline"] = [w["a"]["lost"], w["ca"]["lost"]]
    if "b" in w and "cb" in w:
        out["b_rps_m2l_over_baseline"] = _ratio(w["b"]["requests_per_s"], w["cb"]["requests_per_s"])
        out["b_cpu_baseline_over_m2l"] = _ratio(
            w["cb"]["cpu_us_per_request"], w["b"]["cpu_us_per_request"]
        )
    if "b" in w and "d" in w:
        out["b_cpu_m2l_over_floor"] = _ratio(
            w["b"]["cpu_us_per_request"], w["d"]["cpu_us_per_request"]
        )
        ratios = [r["ratio"] for r in rounds if "ratio" in r]
        if ratios:
            out["b_cpu_m2l_over_floor_by_round"] = ratios
    if "cb" in w and "d" in w:
        out["b_cpu_baseline_over_floor"] = _ratio(
            w["cb"]["cpu_us_per_request"], w["d"]["cpu_us_per_request"]
        )
    targets: dict[str, Any] = {}
    for k in ("a", "e", "f"):
        u = util(k)
        if k in w and "utilisation" in w[k]:
            share = w[k]["rate_limited_share"]
            targets[k] = {
                "utilisation": u,
                "rate_limited_share": share,
                "lost": w[k]["lost"],
                "met": u is not None
                and u >= UTIL_TARGET
                and share <= RATE_LIMITED_TARGET
                and w[k]["lost"] == 0,
            }
    if "b_cpu_m2l_over_floor" in out and out["b_cpu_m2l_over_floor"] is not None:
        targets["b"] = {
            "cpu_over_floor": out["b_cpu_m2l_over_floor"],
            "met": out["b_cpu_m2l_over_floor"] <= CPU_RATIO_TARGET,
        }
    out["targets"] = targets
    return out


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


# --- output ---------------------------------------------------------------------------------


def table(data: dict[str, Any]) -> str:
    head = (
        f"{'workload':<37} {'reqs':>6} {'ok':>6} {'lost':>5} {'429s':>5} {'429/req':>7} "
        f"{'util':>6} {'req/s':>7} {'wall s':>7} {'CPU µs/req':>10} {'RSS MB':>7}"
    )
    lines = [head, "-" * len(head)]
    for row in data["workloads"].values():
        util = row.get("utilisation", {}).get("value")
        n429 = row.get("sim_429", row["client_429"])
        lines.append(
            f"{row['title']:<37} {row['requests']:>6} {row['ok']:>6} {row['lost']:>5} "
            f"{n429:>5} {_pct(row.get('rate_limited_share')):>7} {_num(util, 3):>6} "
            f"{row['requests_per_s']:>7.1f} {row['wall_s']:>7.1f} "
            f"{row['cpu_us_per_request']:>10.0f} {row['peak_rss_mb']:>7.1f}"
        )
    lines.append("")
    for k, row in data["workloads"].items():
        lines.extend(f"  {k:<3} {note}" for note in _notes(row))
    c = data["comparisons"]
    lines.append("")
    lines.extend(f"  {name} = {value}" for name, value in c.items() if name != "targets")
    for k, t in c["targets"].items():
        verdict = "MET" if t["met"] else "MISSED"
        if k == "b":
            lines.append(
                f"  target (b) CPU/request <= {CPU_RATIO_TARGET}x the floor: "
                f"{t['cpu_over_floor']}x  {verdict}"
            )
        else:
            lines.append(
                f"  target ({k}) util >= {UTIL_TARGET}, 429s <= {RATE_LIMITED_TARGET:.1%}, "
                f"nothing lost: util {_num(t['utilisation'], 3)}, 429s "
                f"{_pct(t['rate_limited_share'])}, lost {t['lost']}  {verdict}"
            )
    overlap = (
        "the limited workloads ran concurrently and overlapped the unlimited ones (which ran "
        "one after another; b and d alternating in rounds); "
        if data["limited_overlapped_with_unlimited"]
        else ""
    )
    lines.append(
        f"  mean prompt {data['mean_prompt_tokens']} tokens, charge {data['mean_charge_tokens']} "
        f"tokens; {data['concurrency']} in flight per client; {overlap}total {data['total_s']} s "
        f"on {data['cpus']} CPUs, load average {data['load_avg_1m']} at the end"
    )
    return "\n".join(lines)


def _notes(row: dict[str, Any]) -> list[str]:
    notes = []
    u = row.get("utilisation", {})
    if u.get("binding"):
        notes.append(
            f"binding {u['binding'].upper()} over an admission span of {u['span_s']} s "
            f"(rpm {u.get('rpm')}, tpm {u.get('tpm')})"
        )
    if row["errors"]:
        notes.append("gave up: " + ", ".join(f"{n} x {e}" for e, n in row["errors"].items()))
    if row["unfinished"]:
        notes.append(f"{row['unfinished']} still pending at the deadline")
    learned = row["learned"]
    if learned.get("tpm") is not None:
        notes.append(
            f"limiter ended at {learned.get('rpm'):.0f} RPM / {learned['tpm']:.0f} TPM, "
            f"token bucket {learned.get('tpm_capacity')} (learned from headers)"
        )
    return notes


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10x smaller, for smoke tests")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated workloads: a, b, c (= ca and cb), ca, cb, d, e, f",
    )
    parser.add_argument("--json-out", type=Path, help="also write the JSON line to this file")
    args = parser.parse_args(argv)
    wanted = set(ALL)
    if args.only:
        wanted = set()
        for item in args.only.split(","):
            item = item.strip().lower().replace("-", "")
            if item == "c":
                wanted |= {"ca", "cb"}
            elif item in ALL:
                wanted.add(item)
            else:
                parser.error(f"--only: unknown workload {item!r}; choose from a,b,c,ca,cb,d,e,f")
    data = run(Plan.make(args.quick), wanted)
    print(table(data))
    line = json.dumps(data, separators=(",", ":"))
    print(line)
    if args.json_out is not None:
        args.json_out.write_text(line + "\n", "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
