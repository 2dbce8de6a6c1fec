"""Tests for engine.posthoc (`m2l filter RUN`): the planted bad conversations and nothing else."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import duckdb
import pytest
from rich.console import Console

from engine.app.outputs import add_filter_parser
from engine.errors import ConfigError, StateError
from engine.posthoc import (
    PosthocFilter,
    StoredConversation,
    check_turns,
    filter_run,
)
from prompts.languages import load_languages
from state.export import STATE_FILE
from tests.test_export import FixtureRun, build_run, copy_run, holding


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> FixtureRun:
    """The fixture run, built once for this module."""
    return build_run(tmp_path_factory.mktemp("template") / "run")


@pytest.fixture
def run(template: FixtureRun, tmp_path: Path) -> FixtureRun:
    """A fresh copy of the fixture run."""
    return copy_run(template, tmp_path / "run")


def snapshot(run: FixtureRun) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the tables the pass may touch, read with an independent connection."""
    conn = duckdb.connect(str(run.run_dir / STATE_FILE), read_only=True)
    try:
        return {
            "conversations": conn.execute(
                "SELECT * EXCLUDE (created_at, finished_at) FROM conversations ORDER BY conv_id"
            ).fetchall(),
            "messages": conn.execute(
                "SELECT conv_id, step, content FROM messages ORDER BY 1, 2"
            ).fetchall(),
        }
    finally:
        conn.close()


def statuses(run: FixtureRun) -> dict[int, tuple[str, str | None]]:
    """conv_id -> (status, filter_reason) as stored."""
    return {row[0]: (row[8], row[12]) for row in snapshot(run)["conversations"]}


def test_pass_filters_exactly_the_planted_conversations(run: FixtureRun) -> None:
    """Each planted conversation gets its reason; every other conversation is unchanged."""
    before = statuses(run)
    report = filter_run(run.run_dir)
    after = statuses(run)
    changed = {cid: after[cid] for cid in after if after[cid] != before[cid]}
    assert changed == {cid: ("filtered", reason) for cid, reason in run.planted.items()}
    assert report.checked == len(run.by_status("done"))
    assert dict(report.by_reason) == {r: 1 for r in run.planted.values()}
    assert not report.dry_run


def test_near_duplicate_keeps_the_earlier_conversation(run: FixtureRun) -> None:
    """Of the near-duplicate pair, the later one is filtered and names the earlier one."""
    report = filter_run(run.run_dir)
    later = next(cid for cid, r in run.planted.items() if r == "near_duplicate")
    finding = next(s for s in report.samples if s.conv_id == later)
    assert finding.detail.startswith(f"near-duplicate of conversation {later - 1} ")
    assert statuses(run)[later - 1] == ("done", None)


def test_wrong_language_names_the_turn_and_the_languages(run: FixtureRun) -> None:
    """The Hindi reply in a Marathi conversation is found at its step, detected as Hindi."""
    report = filter_run(run.run_dir, dry_run=True)
    finding = next(s for s in report.samples if s.reason == "wrong_language")
    assert finding.step == 1
    assert "hi" in finding.detail and "mr" in finding.detail


def test_nothing_is_deleted(run: FixtureRun) -> None:
    """The pass only changes statuses: every conversation and message row stays."""
    before = snapshot(run)
    filter_run(run.run_dir)
    after = snapshot(run)
    assert after["messages"] == before["messages"]
    assert [r[0] for r in after["conversations"]] == [r[0] for r in before["conversations"]]


def test_dry_run_reports_the_same_and_changes_nothing(run: FixtureRun) -> None:
    """--dry-run counts what a real pass would filter and leaves the store as it was."""
    before = snapshot(run)
    dry = filter_run(run.run_dir, dry_run=True)
    assert snapshot(run) == before
    assert dry.dry_run
    real = filter_run(run.run_dir)
    assert (dry.checked, dry.by_reason) == (real.checked, real.by_reason)


def test_second_pass_changes_nothing(run: FixtureRun) -> None:
    """Running the pass twice filters nothing more (the pass is idempotent)."""
    first = filter_run(run.run_dir)
    after_first = snapshot(run)
    second = filter_run(run.run_dir)
    assert snapshot(run) == after_first
    assert second.by_reason == ()
    assert second.checked == first.checked - first.filtered


def test_small_batches_give_the_same_result(run: FixtureRun, template: FixtureRun) -> None:
    """Batches of 4 conversations filter the same ones as one batch (the index spans batches)."""
    report = filter_run(run.run_dir, batch_size=4)
    assert dict(report.by_reason) == {r: 1 for r in run.planted.values()}
    changed = {cid for cid, (status, _) in statuses(run).items() if status == "filtered"}
    assert changed == set(run.planted) | {c.conv_id for c in template.by_status("filtered")}


def test_store_held_by_a_run_is_refused(run: FixtureRun) -> None:
    """The pass writes, so it refuses a store a running process holds, dry run or not."""
    with holding(run.run_dir / STATE_FILE):
        for dry in (False, True):
            with pytest.raises(StateError, match="in use by a running m2l process"):
                filter_run(run.run_dir, dry_run=dry)


def test_unknown_language_names_the_conversation(run: FixtureRun) -> None:
    """A conversation whose language code the table lacks is a ConfigError naming it."""
    conn = duckdb.connect(str(run.run_dir / STATE_FILE))
    try:
        conn.execute("UPDATE conversations SET language_code = 'xx-klingon' WHERE conv_id = 2")
    finally:
        conn.close()
    with pytest.raises(ConfigError, match="conversation 2: unknown language 'xx-klingon'"):
        filter_run(run.run_dir)


def test_cli_prints_counts_by_reason(run: FixtureRun) -> None:
    """`m2l filter RUN --dry-run` prints how many it would filter and each reason's count."""
    parser = argparse.ArgumentParser(prog="m2l")
    add_filter_parser(parser.add_subparsers())
    args = parser.parse_args(["filter", str(run.run_dir), "--dry-run"])
    console = Console(record=True, width=200)
    assert args.func(args, console) == 0
    text = console.export_text()
    assert "would filter 5 (dry run: nothing changed)" in text
    for reason in run.planted.values():
        assert reason in text


# --- the pure checks -------------------------------------------------------------------------

SPANISH_ANSWER = (
    "La fotosíntesis es el proceso por el cual las plantas convierten la luz del sol en "
    "energía química. Las hojas absorben dióxido de carbono y liberan oxígeno al aire, "
    "mientras las raíces toman agua del suelo para completar el ciclo."
)
SPANISH_QUESTION = "Explica con detalle cómo las plantas producen su alimento usando la luz."


def conversation(conv_id: int, answer: str) -> StoredConversation:
    """A one-turn Spanish conversation with the given answer."""
    return StoredConversation(conv_id, "spa", (("evolve", SPANISH_QUESTION), ("answer", answer)))


def test_check_turns_passes_a_clean_conversation() -> None:
    """A natural Spanish question and answer pass every turn filter."""
    spanish = load_languages().lookup("spa")
    assert check_turns(conversation(1, SPANISH_ANSWER), spanish) is None


def test_check_turns_reports_the_failing_step() -> None:
    """A Spanish refusal as the answer fails at step 1 with reason refusal."""
    spanish = load_languages().lookup("spa")
    found = check_turns(conversation(1, "Lo siento, pero no puedo ayudarte con eso."), spanish)
    assert found is not None
    assert (found.reason, found.step) == ("refusal", 1)


def test_a_filtered_conversation_does_not_shadow_a_clean_copy() -> None:
    """A conversation failing a turn filter is not indexed: a clean later copy of it stays."""
    checker = PosthocFilter(load_languages())
    refused = conversation(1, "Lo siento, pero no puedo ayudar con eso. " + SPANISH_ANSWER)
    first = checker.check(refused)
    assert first is not None and first.reason == "refusal"
    assert checker.check(conversation(2, SPANISH_ANSWER)) is None
    again = checker.check(conversation(3, SPANISH_ANSWER))
    assert again is not None
    assert (again.reason, again.step) == ("exact_duplicate", None)
