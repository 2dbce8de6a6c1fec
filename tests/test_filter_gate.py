"""`m2l filter` takes the turns the run's own gate accepted and stamped (engine.gatecheck) without
judging them again, with the verdicts of a full check; anything else is checked in full.

A real simulated run (bundled seeds with translations, injected wrong-language and repetitive
replies, so some outputs are regenerated and some conversations keep only their first turns);
each test filters a fresh copy of its store.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
from rich.console import Console

from engine.app.outputs import add_filter_parser
from engine.app.run import execute_run
from engine.config import load_config
from engine.conversation import Conversation, Status
from engine.gatecheck import gate_fingerprint
from engine.posthoc import FilterReport, filter_run
from engine.quality import FilterConfig
from engine.scheduler import RunStatus
from engine.validation import QualityValidator
from prompts.languages import load_languages
from state.export import STATE_FILE
from state.journal import load_conversations
from tests.runfixtures import write_config

BUNDLED_SEEDS = Path(__file__).resolve().parent.parent / "examples" / "seeds.jsonl"
# A long German text: wrong in any of the run's conversations (none is in German).
GERMAN = (
    "Die Stadt liegt an einem breiten Fluss, und jeden Morgen fahren die Fischer mit ihren "
    "kleinen Booten hinaus. Am Abend kehren sie zurück und verkaufen ihren Fang auf dem Markt "
    "neben der alten Kirche, wo die Leute bis spät in die Nacht miteinander reden."
)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run of the bundled translation seeds and some others, made once."""
    folder = tmp_path_factory.mktemp("gate")
    config_path = write_config(
        folder, evols_per_seed=2, faults="wrong_language = 0.15\nrepetition = 0.1"
    )
    lines = [ln for ln in BUNDLED_SEEDS.read_text(encoding="utf-8").splitlines() if ln.strip()]
    picked = [ln for i, ln in enumerate(lines) if orjson.loads(ln)["task_type"] == "translation"
              or i % 9 == 0]  # fmt: skip
    (folder / "seeds.jsonl").write_text("\n".join(picked) + "\n", encoding="utf-8")
    config = load_config(config_path)
    report = asyncio.run(execute_run(config, env={}))
    assert report.result.status is RunStatus.FINISHED
    return config.run_dir


@pytest.fixture
def run_dir(template: Path, tmp_path: Path) -> Path:
    """A fresh copy of the run."""
    copy = tmp_path / "run"
    shutil.copytree(template, copy)
    return copy


def verdicts(run_dir: Path) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(run_dir / STATE_FILE), read_only=True) as conn:
        return conn.execute(
            "SELECT conv_id, status, filter_reason FROM conversations ORDER BY conv_id"
        ).fetchall()


def sql(run_dir: Path, statement: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(run_dir / STATE_FILE)) as conn:
        return conn.execute(statement, params or []).fetchall()


def both(run_dir: Path, tmp_path: Path, **kw: Any) -> FilterReport:
    """The default pass on ``run_dir``, checked against a --recheck pass on a copy of it as it
    was: the same marks and counts, none taken on the gate."""
    again = tmp_path / "recheck"
    shutil.copytree(run_dir, again)
    default = filter_run(run_dir, **kw)
    recheck = filter_run(again, recheck=True, **kw)
    assert verdicts(run_dir) == verdicts(again)
    assert default.by_reason == recheck.by_reason and default.checked == recheck.checked
    assert recheck.on_gate == 0
    return default


def test_the_run_stamps_every_message_and_the_filter_takes_them_all(
    run_dir: Path, tmp_path: Path
) -> None:
    """Every stored message carries its stamp; the default pass checks no turn again and marks
    exactly what --recheck marks; so does one with 2 worker processes."""
    done = sql(run_dir, "SELECT count(*) FROM conversations WHERE status = 'done'")[0][0]
    partial = sql(run_dir, "SELECT count(*) FROM conversations WHERE error LIKE 'kept %'")[0][0]
    thrown = sql(run_dir, "SELECT count(*) FROM rejections")[0][0]
    translated = sql(run_dir, "SELECT count(*) FROM conversations WHERE task = 'translation'")
    assert done >= 30 and partial > 0 and thrown > 0 and translated[0][0] > 0
    assert sql(run_dir, "SELECT count(*) FROM messages WHERE gate_check IS NULL") == [(0,)]
    # A resumed run goes on from the steps it loads: each stamp follows from the ones before.
    validator = QualityValidator(load_languages(), FilterConfig())
    with duckdb.connect(str(run_dir / STATE_FILE), read_only=True) as conn:
        stored = load_conversations(conn, statuses=["done"], after=0, limit=1_000_000)
    for conv in stored:
        for i, step in enumerate(conv.steps):
            before = Conversation(conv.plan, conv.steps[:i], Status.ACTIVE)
            assert validator.stamp(before, step.kind, step.message.content) == step.gate_check
    workers = tmp_path / "workers"
    shutil.copytree(run_dir, workers)
    default = both(run_dir, tmp_path)
    assert default.checked == done and default.on_gate == done
    pooled = filter_run(workers, workers=2, batch_size=8)
    assert pooled.on_gate == done and verdicts(workers) == verdicts(run_dir)


def test_an_edited_message_is_checked_in_full_and_caught(run_dir: Path, tmp_path: Path) -> None:
    """An answer replaced in the store by German text breaks its conversation's stamps: that
    conversation alone is checked in full, and fails as wrong_language."""
    conv_id, step = sql(
        run_dir,
        """SELECT m.conv_id, m.step FROM messages m JOIN conversations c USING (conv_id)
           WHERE c.status = 'done' AND m.kind = 'answer' AND c.task <> 'translation'
             AND c.evol_type <> 'CODE_MIXING' AND c.language_code <> 'deu'
           ORDER BY m.conv_id LIMIT 1""",
    )[0]
    sql(run_dir, "UPDATE messages SET content = ? WHERE conv_id = ? AND step = ?",
        [GERMAN, conv_id, step])  # fmt: skip
    done = sql(run_dir, "SELECT count(*) FROM conversations WHERE status = 'done'")[0][0]
    default = both(run_dir, tmp_path)
    assert default.on_gate == done - 1
    status = dict((c, (s, r)) for c, s, r in verdicts(run_dir))[conv_id]
    assert status == ("filtered", "wrong_language")


def test_another_gate_checks_everything(run_dir: Path, tmp_path: Path) -> None:
    """A pass with other [quality] settings than the run's, or over stamps another gate made,
    takes no conversation on the run's gate, with the verdicts of a full check."""
    other = FilterConfig(max_ngram_repeat_ratio=0.39)
    default = both(run_dir, tmp_path / "config", config=other)
    assert default.on_gate == 0 and default.checked > 0
    sql(run_dir, "UPDATE messages SET gate_check = gate_check + 1")
    shutil.rmtree(tmp_path / "config" / "recheck")
    stamped = both(run_dir, tmp_path / "config")
    assert stamped.on_gate == 0 and stamped.checked > 0


def test_duplicates_among_conversations_taken_on_the_gate_are_found(
    run_dir: Path, tmp_path: Path
) -> None:
    """A conversation made again word for word (same seed, evol type and replies: its stamps
    match) is taken on the gate and still filtered as the later exact duplicate."""
    (original,) = sql(
        run_dir,
        "SELECT conv_id FROM conversations WHERE status = 'done' ORDER BY conv_id LIMIT 1",
    )[0]
    (last,) = sql(run_dir, "SELECT max(conv_id) FROM conversations")[0]
    copy = last + 1
    sql(run_dir, "INSERT INTO conversations SELECT * REPLACE (? AS conv_id) FROM conversations "
        "WHERE conv_id = ?", [copy, original])  # fmt: skip
    sql(run_dir, "INSERT INTO messages SELECT * REPLACE (? AS conv_id) FROM messages "
        "WHERE conv_id = ?", [copy, original])  # fmt: skip
    done = sql(run_dir, "SELECT count(*) FROM conversations WHERE status = 'done'")[0][0]
    default = both(run_dir, tmp_path)
    assert default.on_gate == done
    status = {c: (s, r) for c, s, r in verdicts(run_dir)}
    assert status[copy] == ("filtered", "exact_duplicate") and status[original][0] == "done"


def test_a_store_from_before_the_stamps_is_checked_in_full(run_dir: Path, tmp_path: Path) -> None:
    """A store without the stamps' column: a dry run (read-only) and a pass (which adds the
    column, empty) check every conversation in full."""
    sql(run_dir, "ALTER TABLE messages DROP COLUMN gate_check")
    dry = filter_run(run_dir, dry_run=True)
    assert dry.on_gate == 0 and dry.checked > 0
    default = both(run_dir, tmp_path)
    assert default.on_gate == 0 and default.by_reason == dry.by_reason


def test_cli_says_how_many_were_taken_on_the_gate(run_dir: Path) -> None:
    """`m2l filter` prints how many conversations were checked in full and how many taken on
    the run's own checks; --recheck checks them all."""
    parser = argparse.ArgumentParser()
    add_filter_parser(parser.add_subparsers())
    done = sql(run_dir, "SELECT count(*) FROM conversations WHERE status = 'done'")[0][0]
    for flags, full in (([], 0), (["--recheck", "--dry-run"], done)):
        args = parser.parse_args(["filter", str(run_dir), "--workers", "1", *flags])
        console = Console(record=True, width=200)
        assert args.func(args, console) == 0
        text = console.export_text()
        assert (
            f"turn checks: {full:,} conversations checked in full, {done - full:,} taken on the "
            "run's own checks"
        ) in text


def test_a_config_built_by_hand_gets_a_gate_of_its_own() -> None:
    """A [quality] value built in code with a list of extra markers (unhashable) still gets
    a fingerprint, another than the same markers as a tuple (the form a config file gives)."""
    languages = load_languages()
    listed = gate_fingerprint(FilterConfig(extra_markers=["X"]), languages)
    assert listed == gate_fingerprint(FilterConfig(extra_markers=["X"]), languages)
    assert listed != gate_fingerprint(FilterConfig(extra_markers=("X",)), languages)
    assert listed != gate_fingerprint(FilterConfig(), languages)
