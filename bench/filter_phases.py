"""Where `m2l filter --workers 1 --dry-run` spends its CPU: reading, judging, duplicates.

    .venv/bin/python bench/filter_phases.py RUN_DIR
    PYTHONPATH=OLD_TREE .venv/bin/python bench/filter_phases.py RUN_DIR   # an older checkout

One dry pass in this process (the store is opened read-only, never changed), with the process
CPU time of each phase summed by wrappers around the pass's own functions: reading the batches
(``engine.posthoc._batches``), judging them (``PosthocFilter.judge_many``), the duplicate index
(``PosthocFilter.settle``), and, where the checkout keeps the fingerprints in DuckDB
(state.fingerprints, 2764e40 on), appending them (``RunFingerprints.add``) and finding and
reading the colliding ones (``RunFingerprints.colliding``). Functions a checkout lacks are
left out. With PYTHONPATH set, the modules measured are OLD_TREE's and this file only wraps
them. Peak RSS is the process's. Nothing here asserts: it prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import engine.posthoc as posthoc


def _timed(owner: Any, name: str, label: str, spent: dict[str, float]) -> None:
    inner: Callable[..., Any] = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.process_time()
        try:
            return inner(*args, **kwargs)
        finally:
            spent[label] = spent.get(label, 0.0) + time.process_time() - start

    setattr(owner, name, wrapper)


def _timed_generator(owner: Any, name: str, label: str, spent: dict[str, float]) -> None:
    inner: Callable[..., Iterator[Any]] = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
        items = inner(*args, **kwargs)
        while True:
            start = time.process_time()
            try:
                item = next(items)
            except StopIteration:
                return
            finally:
                spent[label] = spent.get(label, 0.0) + time.process_time() - start
            yield item

    setattr(owner, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, help="a finished run (opened read-only)")
    args = parser.parse_args()
    spent: dict[str, float] = {}
    _timed_generator(posthoc, "_batches", "read batches", spent)
    _timed(posthoc.PosthocFilter, "judge_many", "judge_many", spent)
    _timed(posthoc.PosthocFilter, "settle", "settle (index)", spent)
    try:
        from state.fingerprints import RunFingerprints
    except ImportError:  # a checkout from before the fingerprints were stored
        pass
    else:
        _timed(RunFingerprints, "add", "fingerprints.add", spent)
        _timed_generator(RunFingerprints, "colliding", "colliding (SQL + read)", spent)
    start = time.process_time()
    report = posthoc.filter_run(args.run_dir, dry_run=True, workers=1)
    total = time.process_time() - start
    print(
        json.dumps(
            {
                "code": str(Path(posthoc.__file__).resolve().parent.parent),
                "checked": report.checked,
                "filtered": report.filtered,
                "cpu_s": round(total, 2),
                "phases_cpu_s": {key: round(value, 2) for key, value in spent.items()},
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
                "load_average": os.getloadavg(),
            }
        )
    )


if __name__ == "__main__":
    main()
