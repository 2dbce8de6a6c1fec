"""Runs of 10^4-10^6 conversations: wall time, CPU, memory over time, and every command after.

    .venv/bin/python bench/scale.py --runs 10000              # one real run, then each command
    .venv/bin/python bench/scale.py --runs 10000,100000 --kill-at 0.5  # the largest killed, resumed
    .venv/bin/python bench/scale.py --fill 1000000            # a store of 10^6 for the commands

A run is ``m2l run`` in its own process against the embedded simulator with no limits and short
replies, so m2l's own overheads dominate. Its RSS is sampled every second with the number of
finished conversations (from ``--progress json``): the table gives the peak and the slope of
RSS per 1,000 finished conversations after warm-up (the first 10% of conversations).

``--fill N`` makes a store of N conversations through the real writer (GroupCommitWriter) from
a finished run's rows (``--fill-from``, else a run of 2,000 made first), each copy under new
ids, so the post-run commands can be measured at sizes a shared 2-core machine cannot
generate in the time available.

After each run or fill, ``m2l status``, ``stats``, ``stats --html``, ``filter --dry-run`` and
every export format run in their own process: wall time and peak RSS (the child's own
``ru_maxrss`` from ``wait4``; this parent stays under 40 MB, so what Linux carries over the fork
does not matter). Nothing here asserts: it prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_SEEDS = ROOT / "examples" / "seeds.jsonl"
EVOLS_PER_SEED = 5
M2L = [sys.executable, "-m", "engine.app.cli"]
# The checkout whose m2l the children run (its folder is their working directory, which comes
# first on their import path): this one, or --tree's.
TREE = ROOT
# The post-run commands to measure (--only); empty: all of them.
ONLY: set[str] = set()
# Seconds between RSS samples of a run: a checkpoint's peak lasts a second or two.
SAMPLE_S = 0.2
EXPORTS = ("release-parquet", "release-jsonl", "messages-jsonl", "sharegpt-jsonl")


# --- inputs -----------------------------------------------------------------------------------


def write_seeds(path: Path, count: int) -> None:
    """``count`` distinct seeds cycled from the bundled sample (41 languages), numbered."""
    sample = [json.loads(line) for line in SAMPLE_SEEDS.read_text().splitlines() if line.strip()]
    with path.open("w") as out:
        for i in range(count):
            row = dict(sample[i % len(sample)])
            # A number makes each copy a distinct seed (seeds are deduplicated on their text).
            row["inputs"] = f"{row['inputs']} ({i // len(sample) + 1})"
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_config(path: Path, *, name: str, output_dir: Path, seeds: Path) -> None:
    """A run with no limits anywhere and short replies: m2l's own costs are what is left."""
    path.write_text(
        f"""[run]
name = "{name}"
output_dir = "{output_dir}"
seed = 1
max_active = 512
# The simulator's short replies fail the language check for some languages, at times 20 in
# a row: not a systematic failure to stop at.
systematic_failure_window = 0

[seeds]
file = "{seeds}"
evols_per_seed = {EVOLS_PER_SEED}

[provider]
kind = "sim"
model = "gpt-4o-mini"

[limits]
max_inflight = 256

[generation]
max_tokens = {{ evolve = 64, answer = 64, follow_up = 48 }}

[sim]
seed = 1
ttft_s = 0.0
per_token_s = 0.0
min_completion_tokens = 12
max_completion_tokens = 40
"""
    )


# --- measuring a child process ------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    rss_mb: float
    finished: int
    wal_mb: float = 0.0  # the store's WAL: it shrinks to nothing when a checkpoint ends


@dataclass
class Measured:
    """One child process: wall time, CPU, peak RSS, and the samples taken while it ran."""

    argv: list[str]
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    returncode: int
    samples: list[Sample] = field(default_factory=list)
    started_wall: float = 0.0  # time.time() at the start, to compare with the store's times
    output_tail: str = ""


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _size_mb(path: Path | None) -> float:
    try:
        return path.stat().st_size / 2**20 if path is not None else 0.0
    except OSError:
        return 0.0


def measure(
    argv: Sequence[str],
    *,
    progress: bool = False,
    kill_at: int | None = None,
    stop_after: float | None = None,
    samples_out: Path | None = None,
    wal: Path | None = None,
) -> Measured:
    """Run ``argv`` under nice, sampling its RSS every SAMPLE_S seconds; SIGKILL it once
    ``kill_at`` conversations have finished or ``stop_after`` seconds have passed. With
    ``progress``, it reads ``--progress json`` lines. ``samples_out`` gets each sample as a
    JSON line as it is taken (seconds, RSS MB, finished, WAL MB), so a long run leaves its
    curve even if this stops; ``wal`` is the store's WAL file, whose size each sample notes."""
    started_wall = time.time()
    start = time.monotonic()
    proc = subprocess.Popen(
        ["nice", "-n", "5", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=TREE,
        # Progress lines arrive as they are written, not when a pipe buffer fills.
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    state: dict[str, Any] = {"finished": 0, "tail": []}

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            state["tail"] = (state["tail"] + [line])[-8:]
            if not progress or not line.startswith("{"):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            state["finished"] = int(record.get("finished") or 0)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    samples: list[Sample] = []
    killed = False
    log = samples_out.open("a") if samples_out is not None else None
    while True:
        # wait4 on the child with WNOHANG: its own rusage, once it is gone.
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        rss = _rss_mb(proc.pid)
        if rss is not None:
            sample = Sample(time.monotonic() - start, rss, state["finished"], _size_mb(wal))
            samples.append(sample)
            if log is not None:
                log.write(
                    f"[{sample.t:.1f}, {sample.rss_mb:.1f}, {sample.finished}, "
                    f"{sample.wal_mb:.1f}]\n"
                )
                log.flush()
        late = stop_after is not None and time.monotonic() - start > stop_after
        due = kill_at is not None and state["finished"] >= kill_at
        if (late or due) and not killed:
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
        time.sleep(SAMPLE_S if progress else 0.05)
    wall = time.monotonic() - start
    if log is not None:
        log.close()
    reader.join(timeout=5)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Measured(
        list(argv),
        wall,
        usage.ru_utime + usage.ru_stime,
        usage.ru_maxrss / 1024,
        proc.returncode,
        samples,
        started_wall,
        "".join(state["tail"])[-2000:],
    )


def slope_per_1000(samples: Sequence[Sample], total: int) -> float | None:
    """Least-squares slope of RSS (MB) against finished conversations, per 1,000, after the
    first 10% (warm-up: the pool of active conversations and DuckDB's buffers fill up)."""
    points = [(s.finished, s.rss_mb) for s in samples if s.finished >= total * 0.1]
    if len(points) < 3 or points[-1][0] == points[0][0]:
        return None
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    sxy = sum((p[0] - mx) * (p[1] - my) for p in points)
    return sxy / sxx * 1000 if sxx else None


# --- the pieces ---------------------------------------------------------------------------------


def run_once(
    work: Path,
    n: int,
    *,
    kill_at: float | None = None,
    kill_after: float | None = None,
    resume_for: float | None = None,
) -> dict[str, Any]:
    """A run of n conversations; with ``kill_at`` (a fraction finished) or ``kill_after``
    (seconds), SIGKILLed at whichever comes first and resumed (to the end, or for
    ``resume_for`` seconds and killed again)."""
    seeds = work / f"seeds-{n}.jsonl"
    write_seeds(seeds, n // EVOLS_PER_SEED)
    config = work / f"run-{n}.toml"
    write_config(config, name=f"run-{n}", output_dir=work, seeds=seeds)
    argv = [*M2L, "run", str(config), "--progress", "json", "--progress-interval", "1"]
    at = None if kill_at is None else int(n * kill_at)
    run_dir = work / f"run-{n}"
    wal = run_dir / "state.duckdb.wal"
    fresh = measure(
        argv,
        progress=True,
        kill_at=at,
        stop_after=kill_after,
        samples_out=work / f"rss-{n}-fresh.jsonl",
        wal=wal,
    )
    result: dict[str, Any] = {"n": n, "run": _run_figures(fresh, run_dir, n)}
    if at is None and kill_after is None:
        return result
    store = run_dir / "state.duckdb"
    finished, last_id, replies_at_kill = _query(
        store,
        "SELECT (SELECT count(*) FROM conversations WHERE status NOT IN ('pending', 'active')), "
        "(SELECT max(request_id) FROM requests), (SELECT count(*) FROM messages)",
    )
    resumed = measure(
        argv,
        progress=True,
        stop_after=resume_for,
        samples_out=work / f"rss-{n}-resumed.jsonl",
        wal=wal,
    )
    # The first request the resumed process reserved (sent_at is stored at reservation, just
    # before sending), against the moment the process was started.
    (first_sent,) = _query(
        store, f"SELECT epoch(min(sent_at)) FROM requests WHERE request_id > {last_id}"
    )
    result["kill"] = {
        "killed_after_s": round(fresh.wall_s, 1),
        "finished_at_kill": finished,
        "first_request_after_resume_s": (
            None if first_sent is None else round(first_sent - resumed.started_wall, 2)
        ),
        "resumed": _run_figures(resumed, run_dir, n, replies_at_kill),
    }
    return result


def _query(store: Path, sql: str) -> tuple[Any, ...]:
    """One row from the store, read in a child process (this one never imports DuckDB)."""
    code = (
        "import duckdb, json, sys; c = duckdb.connect(sys.argv[1], read_only=True); "
        "print(json.dumps(c.execute(sys.argv[2]).fetchone()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(store), sql], capture_output=True, text=True, check=True
    )
    return tuple(json.loads(out.stdout))


def _run_figures(m: Measured, run_dir: Path, n: int, replies_before: int = 0) -> dict[str, Any]:
    """The figures of one process of a run; ``replies_before``: replies stored before it
    started (a resumed process's CPU is per reply it made)."""
    store = run_dir / "state.duckdb"
    replies = _replies(run_dir) - replies_before
    return {
        "returncode": m.returncode,
        "wall_s": round(m.wall_s, 1),
        "cpu_s": round(m.cpu_s, 1),
        "replies": replies,
        "cpu_ms_per_reply": round(m.cpu_s / replies * 1000, 3) if replies else None,
        "peak_rss_mb": round(m.peak_rss_mb, 1),
        "rss_slope_mb_per_1000": _round(slope_per_1000(m.samples, n), 3),
        "rss_median_slope_mb_per_1000": _round(median_slope_per_1000(m.samples, n), 3),
        "rss_at": {f"{p}%": _rss_at(m.samples, n * p // 100) for p in (10, 50, 90)},
        # Once the last conversation has finished, what the process does is the export.
        "end_phase_peak_rss_mb": _end_phase_peak(m.samples),
        "checkpoints": checkpoint_peaks(m.samples),
        "store_mb": round(store.stat().st_size / 2**20, 1) if store.exists() else None,
        "tail": m.output_tail if m.returncode not in (0, -9) else "",
    }


def median_slope_per_1000(samples: Sequence[Sample], total: int) -> float | None:
    """The same slope through the median RSS of each 1% of conversations after the first 10%:
    a DuckDB checkpoint lifts RSS by up to ~200 MB for a few seconds, and such spikes would
    otherwise steer a fit of every sample."""
    width = max(total // 100, 1)
    buckets: dict[int, list[float]] = {}
    for s in samples:
        if s.finished >= total * 0.1:
            buckets.setdefault(s.finished // width, []).append(s.rss_mb)
    points = [
        (Sample(0.0, sorted(v)[len(v) // 2], k * width + width // 2))
        for k, v in sorted(buckets.items())
    ]
    return slope_per_1000(points, 0)


def checkpoint_peaks(samples: Sequence[Sample]) -> dict[str, Any]:
    """What DuckDB's checkpoints did to RSS: a checkpoint ends when the WAL shrinks; its peak is
    the highest sample from 20 s before that to 1 s after (a merge of row groups held ~450 MB
    for 9 s at 10^5), its rise that peak over the median RSS of the 40 s before the window.
    Returns the count, the highest peak and rise, and the median rise."""
    rises: list[tuple[float, float]] = []
    for i in range(1, len(samples)):
        if samples[i].wal_mb >= samples[i - 1].wal_mb - 0.5:
            continue
        t = samples[i].t
        window = [s.rss_mb for s in samples if t - 20 <= s.t <= t + 1]
        before = sorted(s.rss_mb for s in samples if t - 60 <= s.t < t - 20)
        if not before or not window:
            continue
        peak = max(window)
        rises.append((peak, peak - before[len(before) // 2]))
    if not rises:
        return {"count": 0}
    ordered = sorted(r for _, r in rises)
    return {
        "count": len(rises),
        "peak_rss_mb": round(max(p for p, _ in rises), 1),
        "max_rise_mb": round(ordered[-1], 1),
        "median_rise_mb": round(ordered[len(ordered) // 2], 1),
    }


def _rss_at(samples: Sequence[Sample], finished: int) -> float | None:
    for s in samples:
        if s.finished >= finished:
            return round(s.rss_mb, 1)
    return None


def _end_phase_peak(samples: Sequence[Sample]) -> float | None:
    """Peak RSS after the finished count stopped moving (the export ending a run)."""
    if not samples:
        return None
    last = samples[-1].finished
    tail = [s.rss_mb for s in samples if s.finished >= last]
    return round(max(tail), 1) if tail and len(tail) < len(samples) else None


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _replies(run_dir: Path) -> int:
    """Replies the run stored: every message is one reply (evolved prompts included)."""
    (count,) = _query(run_dir / "state.duckdb", "SELECT count(*) FROM messages")
    return int(count)


def commands(run_dir: Path, *, timeout_s: float | None = None) -> dict[str, Any]:
    """Each post-run command on ``run_dir`` in its own process: wall time and peak RSS; one
    still running after ``timeout_s`` is killed and reported as such."""
    html = run_dir / "report.html"
    todo = {
        "status": [*M2L, "status", str(run_dir)],
        "stats": [*M2L, "stats", str(run_dir)],
        "stats --html": [*M2L, "stats", str(run_dir), "--html", str(html)],
        "filter --dry-run": [*M2L, "filter", str(run_dir), "--dry-run"],
        **{f"export {fmt}": [*M2L, "export", str(run_dir), "--format", fmt] for fmt in EXPORTS},
    }
    if ONLY:
        todo = {name: argv for name, argv in todo.items() if name in ONLY}
    out: dict[str, Any] = {}
    for name, argv in todo.items():
        m = measure(argv, stop_after=timeout_s)
        out[name] = {
            "wall_s": round(m.wall_s, 2),
            "cpu_s": round(m.cpu_s, 2),  # less sensitive than wall time to a busy machine
            "peak_rss_mb": round(m.peak_rss_mb, 1),
            "returncode": m.returncode,
            "timed_out": m.returncode == -signal.SIGKILL,
        }
        if m.returncode:
            out[name]["tail"] = m.output_tail
        print(
            f"  {name:<24} {m.wall_s:8.2f} s {m.peak_rss_mb:8.1f} MB rc={m.returncode}", flush=True
        )
    if html.exists():
        out["stats --html"]["html_kb"] = round(html.stat().st_size / 1024, 1)
    return out


def fill(work: Path, n: int, source: Path | None) -> Path:
    """A store of n conversations copied through the real writer from a finished run."""
    if source is None:
        made = run_once(work, 2000)
        source = work / "run-2000"
        print(f"fill source: a run of 2,000 ({made['run']['wall_s']} s)", flush=True)
    target = work / f"fill-{n}"
    if (target / "state.duckdb").exists():
        return target  # filled by an earlier invocation
    target.mkdir(parents=True, exist_ok=True)
    code = f"""
import asyncio, sys
sys.path.insert(0, {str(ROOT)!r})
from bench._scale_fill import fill_store
asyncio.run(fill_store({str(source)!r}, {str(target)!r}, {n}))
"""
    m = measure([sys.executable, "-c", code])
    if m.returncode:
        raise SystemExit(f"fill failed:\n{m.output_tail}")
    print(f"filled {n:,} conversations in {m.wall_s:.0f} s", flush=True)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="", help="comma-separated run sizes, e.g. 10000,100000")
    parser.add_argument(
        "--kill-at",
        type=float,
        help="SIGKILL the largest run once this fraction has finished (e.g. 0.5), then resume it",
    )
    parser.add_argument(
        "--kill-after",
        type=float,
        help="SIGKILL the largest run after this many seconds if --kill-at has not come first",
    )
    parser.add_argument(
        "--resume-for", type=float, help="seconds the resumed run goes on (default: to the end)"
    )
    parser.add_argument("--fill", default="", help="comma-separated store sizes to fill")
    parser.add_argument("--fill-from", type=Path, help="a finished run directory to copy from")
    parser.add_argument("--work", type=Path, help="where runs go (default: a temporary folder)")
    parser.add_argument(
        "--timeout", type=float, help="seconds after which a post-run command is killed"
    )
    parser.add_argument(
        "--no-commands", action="store_true", help="measure the runs only, not the commands after"
    )
    parser.add_argument(
        "--tree",
        type=Path,
        help="run the m2l of another checkout (e.g. a worktree of an older commit) with this "
        "Python; fills still use this checkout's writer",
    )
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated post-run commands to measure, as the table names them (e.g. "
        "'status,stats,stats --html,export release-parquet'); default: all",
    )
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    ONLY.update(name.strip() for name in args.only.split(",") if name.strip())
    if args.tree is not None:
        global TREE
        TREE = args.tree.resolve()
        print(f"m2l from {TREE}", flush=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="m2l-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"runs": [], "fills": []}
    sizes = [int(x) for x in args.runs.split(",") if x]
    for n in sizes:
        print(f"run of {n:,} conversations in {work}", flush=True)
        big = n == max(sizes)
        r = run_once(
            work,
            n,
            kill_at=args.kill_at if big else None,
            kill_after=args.kill_after if big else None,
            resume_for=args.resume_for if big else None,
        )
        print(json.dumps(r, indent=1), flush=True)
        if not args.no_commands:
            r["commands"] = commands(work / f"run-{n}", timeout_s=args.timeout)
        results["runs"].append(r)
    for n in [int(x) for x in args.fill.split(",") if x]:
        target = fill(work, n, args.fill_from)
        store = target / "state.duckdb"
        f: dict[str, Any] = {"n": n, "store_mb": round(store.stat().st_size / 2**20, 1)}
        f["commands"] = commands(target, timeout_s=args.timeout)
        results["fills"].append(f)
    line = json.dumps(results)
    print(line)
    if args.json_out:
        args.json_out.write_text(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
