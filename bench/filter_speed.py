"""`m2l filter` on a finished run: CPU per conversation, against another checkout of m2l.

    .venv/bin/python bench/filter_speed.py RUN_DIR                       # this checkout
    .venv/bin/python bench/filter_speed.py RUN_DIR --baseline OLD_TREE    # and an older one
    .venv/bin/python bench/filter_speed.py RUN_DIR --baseline OLD_TREE --rounds 3
    .venv/bin/python bench/filter_speed.py RUN_DIR --baseline OLD_TREE --workers 1,2
    .venv/bin/python bench/filter_speed.py RUN_DIR --baseline OLD_TREE --workers 1 --recheck

RUN_DIR is a finished run (e.g. one ``bench/scale.py --runs 10000`` made); it is never changed:
each measurement runs ``m2l filter`` (not a dry run) in its own process on a fresh copy of it.
OLD_TREE is another checkout of m2l (``git worktree add ../m2l-old 933bfdd``), run with this
checkout's Python environment. Trees alternate within each round, so a change in the machine's
load falls on all. ``--workers 1,2`` runs this checkout once per value of ``m2l filter
--workers`` (the baseline has no such option and runs as it is); ``--recheck`` runs it once more
per value with ``m2l filter --recheck`` (every turn checked again, also those the run's own
gate stamped: what the pass costs on a run made before the stamps). A child's CPU (user + system,
its worker processes included: they are reaped before it exits) and peak RSS come from
``wait4``; both CPU and wall time per conversation are compared with the baseline (wall time on
a shared machine says only as much as its load allows). After each run the copy's verdicts
(status and filter reason of every conversation) are read back and compared across all runs.
Nothing here asserts: it prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _done(run_dir: Path) -> int:
    import duckdb

    conn = duckdb.connect(str(run_dir / "state.duckdb"), read_only=True)
    try:
        row = conn.execute("SELECT count(*) FROM conversations WHERE status = 'done'").fetchone()
        return int(row[0]) if row else 0
    finally:
        conn.close()


def _verdicts(run_dir: Path) -> list[tuple[Any, ...]]:
    import duckdb

    conn = duckdb.connect(str(run_dir / "state.duckdb"), read_only=True)
    try:
        return conn.execute(
            "SELECT conv_id, status, filter_reason FROM conversations ORDER BY conv_id"
        ).fetchall()
    finally:
        conn.close()


def measure(
    tree: Path,
    run_dir: Path,
    work: Path,
    workers: int | None = None,
    flags: Sequence[str] = (),
) -> dict[str, Any]:
    """One ``m2l filter`` with ``tree``'s code (and ``flags``) on a fresh copy of ``run_dir``."""
    copy = work / "run"
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("export", "*.wal"))
    # Wide enough that the report's lines are not wrapped where they are read back.
    env = dict(os.environ, PYTHONPATH=str(tree), COLUMNS="200")
    start = time.monotonic()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine.app.cli",
            "filter",
            str(copy),
            *([] if workers is None else ["--workers", str(workers)]),
            *flags,
        ],
        cwd=tree,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"m2l filter failed in {tree}:\n{output.decode(errors='replace')}")
    verdicts = _verdicts(copy)
    # The line saying how many conversations were checked in full (absent in older trees).
    full = [ln for ln in output.decode(errors="replace").splitlines() if "checked in full" in ln]
    return {
        "report": full[0].strip() if full else "",
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "wall_s": wall,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "filtered": sum(1 for _, state, _ in verdicts if state == "filtered"),
        "verdicts": verdicts,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a finished run (copied, never changed)")
    parser.add_argument("--baseline", type=Path, help="another checkout of m2l to compare with")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--workers",
        help="comma-separated values of m2l filter --workers to run this checkout with "
        "(default: its own default)",
    )
    parser.add_argument(
        "--recheck",
        action="store_true",
        help="also run this checkout with m2l filter --recheck, for each --workers value",
    )
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    run_dir = args.run_dir.resolve()
    if not (run_dir / "state.duckdb").is_file():
        parser.error(f"{run_dir}: no state.duckdb; give the directory of a finished run")
    counts = [None] if args.workers is None else [int(w) for w in args.workers.split(",")]
    trees: dict[str, tuple[Path, int | None, tuple[str, ...]]] = {}
    if args.baseline is not None:
        baseline = args.baseline.resolve()
        if not (baseline / "engine" / "app" / "cli.py").is_file():
            parser.error(f"{baseline}: not a checkout of m2l (no engine/app/cli.py)")
        trees["baseline"] = (baseline, None, ())
    for count in counts:
        name = "this" if count is None else f"this-w{count}"
        trees[name] = (ROOT, count, ())
        if args.recheck:
            trees[f"{name}-recheck"] = (ROOT, count, ("--recheck",))
    conversations = _done(run_dir)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory(prefix="m2l-filter-bench-") as tmp:
        for round_no in range(1, args.rounds + 1):
            for name, (tree, workers, flags) in trees.items():
                got = measure(tree, run_dir, Path(tmp), workers, flags)
                results[name].append(got)
                print(
                    f"round {round_no} {name:8} CPU {got['cpu_s']:7.2f} s "
                    f"({got['cpu_s'] / conversations * 1000:.3f} ms per conversation), "
                    f"wall {got['wall_s']:.1f} s ({got['wall_s'] / conversations * 1000:.3f} ms), "
                    f"load {os.getloadavg()[0]:.1f}, peak RSS {got['peak_rss_mb']:.0f} MB, "
                    f"filtered {got['filtered']:,}"
                    + (f"; {got['report']}" if got["report"] else ""),
                    flush=True,
                )
    reference = next(iter(results.values()))[0]["verdicts"]
    same = all(r["verdicts"] == reference for runs in results.values() for r in runs)
    # Conversations whose verdict in a tree's first run differs from the first tree's.
    differ = {
        name: sum(a != b for a, b in zip(runs[0]["verdicts"], reference, strict=True))
        for name, runs in results.items()
    }
    summary: dict[str, Any] = {
        "conversations": conversations,
        "load_average": os.getloadavg(),
        "same_verdicts": same,
    }
    for name, runs in results.items():
        best = min(r["cpu_s"] for r in runs)
        summary[name] = {
            "cpu_s": [round(r["cpu_s"], 2) for r in runs],
            "wall_s": [round(r["wall_s"], 2) for r in runs],
            "ms_per_conversation": round(best / conversations * 1000, 3),
            "wall_ms_per_conversation": round(
                min(r["wall_s"] for r in runs) / conversations * 1000, 3
            ),
            "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs)),
            "filtered": runs[0]["filtered"],
            "report": runs[0]["report"],
            "verdicts_differ": differ[name],
        }
    print(f"\n{conversations:,} conversations checked; verdicts the same in every run: {same}")
    if not same:
        first = next(iter(results))
        print(
            "conversations whose verdict differs from the first run of "
            f"{first}: {', '.join(f'{name} {n:,}' for name, n in differ.items())}"
        )
    if "baseline" in results:
        base = summary["baseline"]
        for name in results:
            if name == "baseline":
                continue
            cpu = base["ms_per_conversation"] / summary[name]["ms_per_conversation"]
            wall = base["wall_ms_per_conversation"] / summary[name]["wall_ms_per_conversation"]
            summary[name]["cpu_ratio"] = round(cpu, 2)
            summary[name]["wall_ratio"] = round(wall, 2)
            print(
                f"{name} against the baseline (least of {args.rounds} rounds): CPU per "
                f"conversation {base['ms_per_conversation']} -> "
                f"{summary[name]['ms_per_conversation']} ms ({cpu:.2f}x less), wall per "
                f"conversation {base['wall_ms_per_conversation']} -> "
                f"{summary[name]['wall_ms_per_conversation']} ms ({wall:.2f}x less)"
            )
    line = json.dumps(summary)
    print(line)
    if args.json_out is not None:
        args.json_out.write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
