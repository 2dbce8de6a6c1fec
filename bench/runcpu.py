"""CPU per reply and start-up of ``m2l run`` as users run it (issue #19, acceptance 4 and 6).

Each ``m2l run`` is the installed command in a process of its own, against a simulator in
another process (provider kind "openai" with a dummy key, so no embedded simulator's CPU is
counted). Its CPU is the whole process's (every thread: the DuckDB writer's, imports, set-up,
the final export), read from ``os.wait4``. The marginal CPU per reply is the difference
between a large and a small run of the same workload, divided by the difference in replies:
what one more reply costs, with validation and checkpointing and without the fixed costs.

Workloads, each run on its own simulator:

  floor  a bare aiohttp loop posting pre-encoded bodies and parsing the replies
         (bench/throughput.py's workload d), on the unlimited simulator
  U      ``m2l run`` of 40 and 240 conversations against a 20 ms simulator without limits
  T      the same against a simulator that holds it to about 60 replies/s by its TPM limit
         (a bucket of 1 s, m2l told the limits)

Start-up: time from the start of ``m2l run`` (process spawn) to the first request the
simulator admits, for a new run and for a resumed one (a run SIGKILLed mid-way, then started
again). The rounds alternate the order of the runs, so a change in the machine's load hits all
alike; figures are medians over rounds. ``--loop`` compares event loops: ``m2l run --loop
asyncio`` against the default (uvloop when installed).

    .venv/bin/python bench/runcpu.py [--quick] [--rounds N] [--loop-compare] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `python bench/runcpu.py`

from _conv_work import API_KEY, write_seed_file  # needs the path above
from _workloads import ClientSpec, client_main, fetch_stats, prompt_pool, start_sims

from engine.simsettings import SimSettings

M2L = Path(sys.executable).with_name("m2l")
TARGET_RATIO = 2.5  # marginal CPU per reply of m2l run / the floor's CPU per request
EVOLS = 4
LIMITED_TPM = 2_000_000  # ~60 replies/s of this workload's ~550 tokens charged each
LIMITED_RPM = 100_000  # not binding


def unlimited_sim() -> SimSettings:
    return SimSettings(
        ttft_s=0.02, per_token_s=0.0, min_completion_tokens=20, max_completion_tokens=200, seed=2
    )


def limited_sim() -> SimSettings:
    return SimSettings(
        rpm=LIMITED_RPM,
        tpm=LIMITED_TPM,
        bucket_seconds=1.0,
        ttft_s=0.2,
        per_token_s=0.002,
        min_completion_tokens=20,
        max_completion_tokens=200,
        seed=3,
    )


@dataclass(frozen=True, slots=True)
class Plan:
    small_seeds: int
    large_seeds: int
    floor_requests: int
    rounds: int
    kill_after: int  # replies admitted before the resumed run's first session is killed

    @classmethod
    def make(cls, quick: bool, rounds: int | None) -> Plan:
        if quick:
            return cls(5, 20, 1000, rounds or 1, 100)
        return cls(10, 60, 3000, rounds or 3, 300)


@dataclass(slots=True)
class RunFigures:
    """One ``m2l run`` process: CPU (user + system, every thread), wall, replies, start-up."""

    label: str
    cpu_s: float = 0.0
    wall_s: float = 0.0
    replies: int = 0  # requests the simulator admitted during the run
    rate_limited: int = 0  # 429s the simulator sent
    first_request_s: float | None = None  # spawn to the first admitted request
    peak_rss_mb: float = 0.0
    exit_code: int = 0


@dataclass(slots=True)
class Results:
    floor_us: list[float] = field(default_factory=list)
    runs: dict[str, list[RunFigures]] = field(default_factory=dict)

    def add(self, run: RunFigures) -> None:
        self.runs.setdefault(run.label, []).append(run)


def post_reset(base_url: str) -> None:
    root = base_url.rsplit("/v1", 1)[0]
    request = urllib.request.Request(root + "/stats/reset", method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=10):
        pass


def write_config(path: Path, *, name: str, seeds: Path, base_url: str, limited: bool) -> Path:
    limits = f"rpm = {LIMITED_RPM}\ntpm = {LIMITED_TPM}\n" if limited else ""
    path.write_text(
        f"""[run]
name = "{name}"
output_dir = "{path.parent / "runs"}"
seed = 5
max_active = 512

[seeds]
file = "{seeds}"
evols_per_seed = {EVOLS}

[provider]
kind = "openai"
base_url = "{base_url}"
model = "gpt-4o-mini"

[limits]
max_inflight = 256
{limits}
[generation]
max_tokens = {{ evolve = 128, answer = 256, follow_up = 96 }}
""",
        "utf-8",
    )
    return path


def m2l_run(
    label: str, config: Path, base_url: str, *, loop: str | None, kill_after: int | None = None
) -> RunFigures:
    """One ``m2l run`` process, measured; with ``kill_after`` it is SIGKILLed once the
    simulator has admitted that many requests."""
    post_reset(base_url)
    env = {**os.environ, "OPENAI_API_KEY": API_KEY}
    argv = [str(M2L), "run", str(config), "-q"] + (["--loop", loop] if loop else [])
    started = time.monotonic()
    process = subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    if kill_after is not None:
        while process.poll() is None:
            if fetch_stats(base_url)["admitted"] >= kill_after:
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - started
    stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
    if process.stderr:
        process.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, -signal.SIGKILL):
        print(f"  {label}: m2l run exited {code}: {stderr.strip()[-400:]}", file=sys.stderr)
    stats = fetch_stats(base_url)
    first = stats.get("first_admission_s")
    return RunFigures(
        label,
        cpu_s=usage.ru_utime + usage.ru_stime,
        wall_s=wall,
        replies=int(stats["admitted"]),
        rate_limited=sum(stats.get("rate_limited", {}).values()),
        first_request_s=None if first is None else float(first) - started,
        peak_rss_mb=usage.ru_maxrss / 1024,
        exit_code=code,
    )


def floor_run(ctx: Any, base_url: str, pool: Any, requests: int) -> float:
    """The bare aiohttp loop in a process of its own: CPU µs per request."""
    spec = ClientSpec("floor", "floor", requests, 64)
    parent, child = ctx.Pipe()
    process = ctx.Process(target=client_main, args=(spec, base_url, pool, child), daemon=True)
    process.start()
    child.close()
    parent.recv()  # ready: imports done
    post_reset(base_url)
    parent.send((0, requests, 120.0))
    part = parent.recv()
    parent.send(None)
    parent.recv()
    process.join(timeout=10)
    return float(part.cpu_us_per_request)


def run(plan: Plan, work: Path, loop_compare: bool) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    sims = start_sims(ctx, {"U": unlimited_sim(), "T": limited_sim()})
    pool = prompt_pool(200)
    small = write_seed_file(work / "small.jsonl", plan.small_seeds)
    large = write_seed_file(work / "large.jsonl", plan.large_seeds)
    results = Results()
    loops: list[str | None] = [None, "asyncio"] if loop_compare else [None]
    try:
        for round_no in range(plan.rounds):
            jobs: list[tuple[str, str, Path, bool, str | None]] = []
            for loop in loops:
                tag = "" if loop is None else f"/{loop}"
                for sim_label in ("U", "T"):
                    if loop is not None and sim_label == "T":
                        continue
                    for size, seeds in (("small", small), ("large", large)):
                        jobs.append((f"{sim_label}-{size}{tag}", sim_label, seeds, True, loop))
            if round_no % 2:
                jobs.reverse()
            results.floor_us.append(floor_run(ctx, sims["U"].base_url, pool, plan.floor_requests))
            _done(f"round {round_no + 1}: floor")
            for label, sim_label, seeds, _, loop in jobs:
                folder = work / f"r{round_no}-{label.replace('/', '-')}"
                folder.mkdir()
                config = write_config(
                    folder / "run.toml",
                    name="bench",
                    seeds=seeds,
                    base_url=sims[sim_label].base_url,
                    limited=sim_label == "T",
                )
                results.add(m2l_run(label, config, sims[sim_label].base_url, loop=loop))
                shutil.rmtree(folder / "runs", ignore_errors=True)
                _done(f"round {round_no + 1}: {label}")
            # Start-up of a resumed run: a first session killed mid-way, then the same command.
            folder = work / f"r{round_no}-resume"
            folder.mkdir()
            config = write_config(
                folder / "run.toml",
                name="bench",
                seeds=large,
                base_url=sims["U"].base_url,
                limited=False,
            )
            url = sims["U"].base_url
            results.add(m2l_run("new", config, url, loop=None, kill_after=plan.kill_after))
            results.add(m2l_run("resumed", config, url, loop=None))
            shutil.rmtree(folder / "runs", ignore_errors=True)
            _done(f"round {round_no + 1}: start-up, new and resumed")
    finally:
        for sim in sims.values():
            sim.stop()
    return report(plan, results)


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 4) if values else None


def marginal_us(small: RunFigures, large: RunFigures) -> float | None:
    extra = large.replies - small.replies
    if extra <= 0:
        return None
    return (large.cpu_s - small.cpu_s) * 1e6 / extra


def report(plan: Plan, results: Results) -> dict[str, Any]:
    runs = results.runs
    workloads: dict[str, Any] = {}
    for label in sorted(runs):
        if "-" not in label:
            continue
        kind, _, rest = label.partition("-")
        size, _, loop = rest.partition("/")
        key = kind + (f"/{loop}" if loop else "")
        workloads.setdefault(key, {"small": [], "large": []})[size] = runs[label]
    out: dict[str, Any] = {"floor_us_per_request": _median(results.floor_us), "workloads": {}}
    for key, pair in workloads.items():
        margins = [
            m
            for s, g in zip(pair["small"], pair["large"], strict=True)
            if (m := marginal_us(s, g)) is not None
        ]
        ratios = [m / f for m, f in zip(margins, results.floor_us, strict=False) if f > 0]
        out["workloads"][key] = {
            "marginal_us_per_reply": _median(margins),
            "ratio_to_floor": _median(ratios),
            "per_round_marginal_us": [round(m, 1) for m in margins],
            "per_round_ratio": [round(r, 2) for r in ratios],
            "replies_small": _median([float(r.replies) for r in pair["small"]]),
            "replies_large": _median([float(r.replies) for r in pair["large"]]),
            "cpu_s_small": _median([r.cpu_s for r in pair["small"]]),
            "cpu_s_large": _median([r.cpu_s for r in pair["large"]]),
            "wall_s_large": _median([r.wall_s for r in pair["large"]]),
            "replies_per_s_large": _median([r.replies / r.wall_s for r in pair["large"]]),
            "429s_large": _median([float(r.rate_limited) for r in pair["large"]]),
            "first_request_s": _median(
                [r.first_request_s for r in pair["large"] if r.first_request_s is not None]
            ),
            "peak_rss_mb_large": _median([r.peak_rss_mb for r in pair["large"]]),
        }
    for label in ("new", "resumed"):
        figures = runs.get(label, [])
        out[f"first_request_s_{label}"] = _median(
            [r.first_request_s for r in figures if r.first_request_s is not None]
        )
    u, t = out["workloads"].get("U"), out["workloads"].get("T")
    if u and t and u["marginal_us_per_reply"] and t["marginal_us_per_reply"]:
        out["limited_over_unlimited"] = round(
            t["marginal_us_per_reply"] / u["marginal_us_per_reply"], 3
        )
    if u and (a := out["workloads"].get("U/asyncio")) and a["marginal_us_per_reply"]:
        out["default_loop_over_asyncio"] = round(
            (u["marginal_us_per_reply"] or 0) / a["marginal_us_per_reply"], 3
        )
    out["rounds"] = plan.rounds
    out["conversations"] = [plan.small_seeds * EVOLS, plan.large_seeds * EVOLS]
    out["cpus"] = os.cpu_count()
    out["load_avg"] = os.getloadavg()[0]
    out["python"] = platform.python_version()
    out["raw"] = {k: [asdict(r) for r in v] for k, v in runs.items()}
    return out


def table(data: dict[str, Any]) -> str:
    head = (
        f"{'workload':<12} {'marginal µs/reply':>18} {'x floor':>8} {'replies':>12} "
        f"{'reply/s':>8} {'429s':>5} {'1st req s':>9} {'RSS MB':>7}"
    )
    lines = [head, "-" * len(head)]
    for key, w in data["workloads"].items():
        lines.append(
            f"{key:<12} {_num(w['marginal_us_per_reply'], 0):>18} "
            f"{_num(w['ratio_to_floor'], 2):>8} "
            f"{_num(w['replies_small'], 0):>5}/{_num(w['replies_large'], 0):<6} "
            f"{_num(w['replies_per_s_large'], 1):>8} {_num(w['429s_large'], 0):>5} "
            f"{_num(w['first_request_s'], 2):>9} {_num(w['peak_rss_mb_large'], 0):>7}"
        )
        lines.append(
            f"{'':<12} per round: {w['per_round_marginal_us']} µs, x floor {w['per_round_ratio']}"
        )
    lines.append("")
    lines.append(
        f"  floor (bare aiohttp): {_num(data['floor_us_per_request'], 0)} µs CPU per request"
    )
    if "limited_over_unlimited" in data:
        lines.append(
            f"  rate-limited / unlimited marginal CPU per reply: {data['limited_over_unlimited']}"
        )
    if "default_loop_over_asyncio" in data:
        lines.append(
            f"  default loop / asyncio loop marginal CPU per reply: "
            f"{data['default_loop_over_asyncio']}"
        )
    lines.append(
        f"  start-up to the first request: new {_num(data['first_request_s_new'], 2)} s, "
        f"resumed {_num(data['first_request_s_resumed'], 2)} s"
    )
    u = data["workloads"].get("U", {})
    if u.get("ratio_to_floor") is not None:
        verdict = "MET" if u["ratio_to_floor"] <= TARGET_RATIO else "MISSED"
        lines.append(f"  target: marginal <= {TARGET_RATIO}x the floor: {verdict}")
    lines.append(
        f"  {data['rounds']} rounds of {data['conversations']} conversations; load average "
        f"{data['load_avg']:.1f} on {data['cpus']} CPUs at the end"
    )
    return "\n".join(lines)


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _done(what: str) -> None:
    print(f"  done: {what}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small round, a smoke test")
    parser.add_argument("--rounds", type=int, help="rounds (default 3; --quick 1)")
    parser.add_argument(
        "--loop-compare",
        action="store_true",
        help="also run U with `m2l run --loop asyncio` (the default uses uvloop when installed)",
    )
    parser.add_argument("--json-out", type=Path, help="also write the JSON line to this file")
    args = parser.parse_args(argv)
    if not M2L.exists():
        parser.error(f"no m2l command beside {sys.executable}: install m2l in this environment")
    plan = Plan.make(args.quick, args.rounds)
    with tempfile.TemporaryDirectory(prefix="m2l-bench-runcpu-") as tmp:
        data = run(plan, Path(tmp), args.loop_compare)
    print(table(data))
    line = json.dumps(data, separators=(",", ":"))
    print(line)
    if args.json_out is not None:
        args.json_out.write_text(line + "\n", "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
