"""The quality checks' own CPU on a finished run's outputs, without the command around them.

    .venv/bin/python bench/check_cost.py RUN_DIR                          # this checkout
    .venv/bin/python bench/check_cost.py RUN_DIR --baseline OLD_TREE      # and an older one
    .venv/bin/python bench/check_cost.py RUN_DIR --baseline OLD_TREE --conversations 3000

Two measures, each in a process of its own per tree (trees alternate within each round):

- ``gate``: every output checked one at a time, as the run's inline gate checks a reply
  (``engine.posthoc.check_turns`` per conversation: each text ranked on its own, no batch);
  CPU per output. The part of ``m2l run``'s CPU per reply that the checks are.
- ``loop``: ``PosthocFilter.check_many`` over batches of 500, as ``m2l filter`` judges them
  (texts ranked a batch at a time, duplicates settled); CPU per conversation, without the
  command's start-up, reading and marking (``bench/filter_speed.py`` measures the command).

The conversations are read before the clock starts; CPU is the process's own
(``time.process_time``). OLD_TREE is another checkout of m2l, imported with this checkout's
Python environment. Nothing here asserts: it prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# Run inside the measured tree (its directory first on sys.path): prints one JSON line.
_CHILD = """
import json, sys, time
from pathlib import Path
from engine.posthoc import PosthocFilter, _batches, check_turns, run_quality
from engine.quality import default_detector
from prompts.languages import load_languages
from state.export import open_run

run_dir, wanted, kind = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
conn = open_run(run_dir, action="measure its checks", write=False)
config = run_quality(conn)
batches = []
count = 0
for batch in _batches(conn, 500):
    batches.append(batch[: wanted - count])
    count += len(batches[-1])
    if count >= wanted:
        break
conn.close()
default_detector().warm_up()
warm = PosthocFilter(load_languages(), config)
warm.check_many(batches[0][:50])  # first uses: tables filled, model arrays touched
checker = PosthocFilter(load_languages(), config)
convs = [conv for batch in batches for conv in batch]
outputs = sum(len(conv.steps) for conv in convs)
start = time.process_time()
if kind == "gate":
    for conv in convs:
        check_turns(conv, checker._language(conv), config, None, checker._names)
else:
    for batch in batches:
        checker.check_many(batch)
cpu = time.process_time() - start
print(json.dumps({"cpu_s": cpu, "conversations": len(convs), "outputs": outputs}))
"""


def measure(tree: Path, run_dir: Path, conversations: int, kind: str) -> dict[str, Any]:
    """One process with ``tree``'s code: the checks' CPU over the first ``conversations``."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(run_dir), str(conversations), kind],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"the {kind} measure failed in {tree}:\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a finished run (read only)")
    parser.add_argument("--baseline", type=Path, help="another checkout of m2l to compare with")
    parser.add_argument("--conversations", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    run_dir = args.run_dir.resolve()
    if not (run_dir / "state.duckdb").is_file():
        parser.error(f"{run_dir}: no state.duckdb; give the directory of a finished run")
    trees = {"this": ROOT}
    if args.baseline is not None:
        baseline = args.baseline.resolve()
        if not (baseline / "engine" / "posthoc.py").is_file():
            parser.error(f"{baseline}: not a checkout of m2l (no engine/posthoc.py)")
        trees = {"baseline": baseline, "this": ROOT}
    best: dict[str, dict[str, float]] = {name: {} for name in trees}
    for round_no in range(1, args.rounds + 1):
        for kind, unit in (("gate", "outputs"), ("loop", "conversations")):
            for name, tree in trees.items():
                got = measure(tree, run_dir, args.conversations, kind)
                per = got["cpu_s"] / got[unit] * 1e6
                best[name][kind] = min(best[name].get(kind, per), per)
                print(
                    f"round {round_no} {kind} {name:8} {per:7.1f} µs of CPU per "
                    f"{unit[:-1]} ({got['cpu_s']:.2f} s, {got[unit]:,} {unit}), "
                    f"load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
    summary: dict[str, Any] = {"load_average": os.getloadavg(), **best}
    if "baseline" in best:
        for kind in ("gate", "loop"):
            ratio = best["baseline"][kind] / best["this"][kind]
            summary[f"{kind}_ratio"] = round(ratio, 2)
            print(
                f"{kind}: {best['baseline'][kind]:.0f} -> {best['this'][kind]:.0f} µs "
                f"({ratio:.2f}x less, least of {args.rounds} rounds)"
            )
    line = json.dumps(summary)
    print(line)
    if args.json_out is not None:
        args.json_out.write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
