"""`m2l filter --workers N`: worker processes judge the turns, the verdicts stay those of one.

Real spawned processes throughout (engine.filterpool); small batches so that duplicates span
batch boundaries and several batches are out at once.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from collections.abc import Sequence
from pathlib import Path

import duckdb
import pytest
from rich.console import Console

from engine.app.outputs import add_filter_parser
from engine.errors import ConfigError
from engine.filterpool import WorkerDied, judged_batches
from engine.posthoc import PosthocFilter, default_workers, filter_run
from engine.quality import default_detector
from prompts.languages import load_languages
from state.export import STATE_FILE
from tests.filtercorpus import VERDICTS, corpus_conversations, verdict_rows
from tests.test_export import FixtureRun, build_run, copy_run
from tests.test_posthoc_filter import snapshot, statuses

# A text that makes CrashingDetector kill the process reading it.
KILL_MARK = "crash-this-filter-worker"


class CrashingDetector:
    """The default language identifier, except that reading KILL_MARK kills the process (as
    the kernel's OOM killer would); made again from nothing in each worker."""

    def knows(self, code: str) -> bool:
        return default_detector().knows(code)

    def rank(self, text: str) -> Sequence[tuple[str, float]]:
        if KILL_MARK in text:
            os.kill(os.getpid(), signal.SIGKILL)
        return default_detector().rank(text)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> FixtureRun:
    """The export tests' fixture run (a planted conversation per filter), built once."""
    return build_run(tmp_path_factory.mktemp("template") / "run")


def test_workers_give_the_recorded_verdicts_on_the_fixed_corpus() -> None:
    """The multilingual corpus judged by 2 workers in batches of 7 and settled in order gets
    the verdicts recorded for one process, duplicates of earlier batches included."""
    conversations = corpus_conversations()
    expected = json.loads(VERDICTS.read_text(encoding="utf-8"))
    batches = [conversations[i : i + 7] for i in range(0, len(conversations), 7)]
    checker = PosthocFilter(load_languages())
    got = []
    for batch, judged in judged_batches(PosthocFilter, checker.recipe(), batches, 2):
        got.extend(checker.settle(c.conv_id, j) for c, j in zip(batch, judged, strict=True))
    assert verdict_rows(got) == expected
    batch_of = {conv.conv_id: n for n, batch in enumerate(batches) for conv in batch}
    spanning = [
        row
        for row in expected
        if row is not None
        and row[1] in ("exact_duplicate", "near_duplicate")
        and batch_of[int(row[3].split("conversation ")[1].split()[0])] != batch_of[row[0]]
    ]
    assert len(spanning) >= 5


def test_two_workers_mark_the_same_rows_as_one(template: FixtureRun, tmp_path: Path) -> None:
    """On the fixture run, --workers 2 reports and marks exactly what --workers 1 does; with
    batches of one, the near-duplicate pair (23, 24) lies in two batches."""
    batch_size = 1
    one = copy_run(template, tmp_path / "one")
    two = copy_run(template, tmp_path / "two")
    alone = filter_run(one.run_dir, batch_size=batch_size, workers=1)
    pooled = filter_run(two.run_dir, batch_size=batch_size, workers=2)
    assert pooled == alone
    assert snapshot(two)["conversations"] == snapshot(one)["conversations"]
    assert dict(pooled.by_reason) == {r: 1 for r in template.planted.values()}


def test_unknown_language_in_a_worker_is_the_same_config_error(
    template: FixtureRun, tmp_path: Path
) -> None:
    """A language code the table lacks, met in a worker, names the conversation as before."""
    run = copy_run(template, tmp_path / "run")
    conn = duckdb.connect(str(run.run_dir / STATE_FILE))
    try:
        conn.execute("UPDATE conversations SET language_code = 'xx-klingon' WHERE conv_id = 9")
    finally:
        conn.close()
    for workers in (1, 2):
        with pytest.raises(ConfigError, match=r"^conversation 9: unknown language 'xx-klingon'"):
            filter_run(run.run_dir, batch_size=2, workers=workers)


def test_a_dead_worker_stops_the_pass_with_what_stays_true(
    template: FixtureRun, tmp_path: Path
) -> None:
    """A worker killed mid-pass is a WorkerDied naming where checking stopped; rows marked
    before it are right, none after it changed, and a second pass finishes like one pass."""
    run = copy_run(template, tmp_path / "run")
    clean = copy_run(template, tmp_path / "clean")
    for path in (run.run_dir, clean.run_dir):
        conn = duckdb.connect(str(path / STATE_FILE))
        try:
            conn.execute(
                "UPDATE messages SET content = content || ' ' || $mark "
                "WHERE conv_id = 3 AND step = 1",
                {"mark": KILL_MARK},
            )
        finally:
            conn.close()
    before = statuses(run)
    with pytest.raises(
        WorkerDied, match=r"died .*(from \d+ on are not checked|no conversation was marked)"
    ) as info:
        filter_run(run.run_dir, batch_size=2, workers=2, detector=CrashingDetector())
    message = str(info.value)
    stopped_at = int(message.split("from ")[1].split()[0]) if " from " in message else 1
    assert stopped_at <= 3
    changed = {cid for cid, row in statuses(run).items() if row != before[cid]}
    assert all(cid < stopped_at for cid in changed)
    assert changed <= set(template.planted)
    filter_run(run.run_dir, batch_size=2, workers=1)
    filter_run(clean.run_dir, batch_size=2, workers=1)
    assert statuses(run) == statuses(clean)


def test_cli_workers_option(template: FixtureRun, tmp_path: Path) -> None:
    """--workers 2 prints what --workers 1 prints; --workers 0 is refused by the parser."""
    parser = argparse.ArgumentParser(prog="m2l")
    add_filter_parser(parser.add_subparsers())
    texts = []
    for workers in ("1", "2"):
        run = copy_run(template, tmp_path / f"run{workers}")
        args = parser.parse_args(["filter", str(run.run_dir), "--workers", workers])
        console = Console(record=True, width=200)
        assert args.func(args, console) == 0
        texts.append(console.export_text())
    assert texts[0] == texts[1]
    assert "filtered 5" in texts[0]
    with pytest.raises(SystemExit):
        parser.parse_args(["filter", "x", "--workers", "0"])
    assert 1 <= default_workers() <= 8
