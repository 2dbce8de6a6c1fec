"""Tests for state.export: every format read back and checked against a fixture run's store.

The fixture run (``build_run``) is also used by tests/test_stats.py and
tests/test_posthoc_filter.py: a store written with the real schema, holding conversations in
six languages with 1-6 turns, failed, pending, active and run-filtered ones, and conversations
planted for each post-hoc filter. Its text comes from the simulator's text composer, so it is
in the language it claims to be.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rich.console import Console

import state.export
from engine.app.outputs import add_export_parser
from engine.errors import ConfigError, StateError
from engine.simulator.languages import find_language
from engine.simulator.text import composer_for
from state.export import (
    FORMATS,
    STATE_FILE,
    default_output,
    export_run,
    export_with,
    open_run,
)
from state.release import DEFAULT_MULTITURN_TYPES, release_schema
from state.requestlog import rebuild_totals
from state.schema import StoreLocked, open_store

# --- the fixture run -------------------------------------------------------------------------

LANGUAGES = {
    "eng": "English",
    "spa": "Spanish",
    "hin": "Hindi",
    "mar": "Marathi",
    "jpn": "Japanese",
    "swh": "Swahili",
}
TASKS = ("open_qa", "creative_writing", "summarization")
EVOLS = ("ADD_CONSTRAINT", "DEEPEN", "CONCRETIZE", "CULTURAL_GROUNDING")
MULTITURN = ("CLARIFICATION", "OPEN_ENDED_QUESTIONS", "RECALL_INFORMATION", "REFOCUS_QUERIES")


@dataclass
class Conv:
    """One fixture conversation as the test expects it to be stored."""

    conv_id: int
    code: str
    task: str
    turns: int
    status: str = "done"
    texts: list[str] = field(default_factory=list)  # one per stored step, step order
    error: str | None = None
    filter_reason: str | None = None

    @property
    def language(self) -> str:
        return LANGUAGES[self.code]

    @property
    def evol_type(self) -> str:
        return EVOLS[self.conv_id % len(EVOLS)]

    def followup_types(self) -> list[str]:
        return [MULTITURN[(self.conv_id + k) % len(MULTITURN)] for k in range(self.turns - 1)]

    def step_evol_type(self, step: int) -> str | None:
        if step == 0:
            return self.evol_type
        if step % 2 == 1:
            return None
        return self.followup_types()[step // 2 - 1]

    def step_prompt(self, step: int) -> str | None:
        if step % 2 == 1:
            return None
        return f"[{self.step_evol_type(step)}] rewrite for conversation {self.conv_id}, step {step}"


@dataclass
class FixtureRun:
    """The fixture run's directory, its conversations, and what the post-hoc pass must find."""

    run_dir: Path
    convs: dict[int, Conv]
    planted: dict[int, str]  # conv_id -> the filter_reason the post-hoc pass must give it
    requests: list[tuple[Any, ...]]

    def by_status(self, *statuses: str) -> list[Conv]:
        return [c for c in self.convs.values() if c.status in statuses]


def _composer(code: str) -> Any:
    lang = find_language(LANGUAGES[code])
    assert lang is not None
    return composer_for(lang, "cl100k_base")


def _write_texts(conv: Conv, steps: int) -> None:
    comp = _composer(conv.code)
    for step in range(steps):
        rng = random.Random(f"{conv.conv_id}/{step}")
        conv.texts.append(comp.instruction(rng, 50) if step % 2 == 0 else comp.answer(rng, 90))


def _plan() -> tuple[list[Conv], dict[int, str]]:
    convs: list[Conv] = []
    cid = 0
    for code in LANGUAGES:
        for _ in range(3):
            cid += 1
            conv = Conv(cid, code, TASKS[cid % 3], turns=(cid - 1) % 6 + 1)
            _write_texts(conv, 2 * conv.turns)
            convs.append(conv)
    planted: dict[int, str] = {}

    def add(code: str, turns: int, **kw: Any) -> Conv:
        nonlocal cid
        cid += 1
        conv = Conv(cid, code, TASKS[cid % 3], turns, **kw)
        convs.append(conv)
        return conv

    rep = add("eng", 2)
    _write_texts(rep, 4)
    rep.texts[3] = _composer("eng").repetition(random.Random(7), 120)
    planted[rep.conv_id] = "repetition"

    cross = add("spa", 2)
    _write_texts(cross, 4)
    cross.texts[3] = cross.texts[1]
    planted[cross.conv_id] = "cross_turn_repetition"

    refusal = add("eng", 1)
    _write_texts(refusal, 2)
    refusal.texts[1] = "I'm sorry, but I can't help with that request."
    planted[refusal.conv_id] = "refusal"

    wrong = add("mar", 2)
    _write_texts(wrong, 4)
    wrong.texts[1] = _composer("hin").answer(random.Random(11), 90)
    planted[wrong.conv_id] = "wrong_language"

    original = add("swh", 3)
    _write_texts(original, 6)
    copy = add("swh", 3)
    copy.texts = list(original.texts)
    words = copy.texts[3].split()
    words[2], words[9] = "chakula", "familia"
    copy.texts[3] = " ".join(words)
    planted[copy.conv_id] = "near_duplicate"

    failed = add("hin", 3, status="failed", error="context_length_exceeded: prompt too long")
    _write_texts(failed, 3)
    add("jpn", 2, status="failed", error="content_filtered: the provider refused the prompt")
    run_filtered = add("eng", 2, status="filtered", filter_reason="leaked_markers")
    _write_texts(run_filtered, 2)
    add("spa", 4, status="pending")
    active = add("hin", 2, status="active")
    _write_texts(active, 2)
    return convs, planted


def _request_rows(convs: list[Conv]) -> list[tuple[Any, ...]]:
    """One ok attempt per stored step, with retries, NULL costs and an open reservation."""
    rows: list[tuple[Any, ...]] = []

    def req(conv: Conv, step: int, attempt: int, status: str, **kw: Any) -> None:
        prompt = 40 + 60 * step
        done = kw.get("completion", 30 + 5 * step) if status == "ok" else None
        cost = kw.get("cost", round(prompt * 2.5e-6 + (done or 0) * 1e-5, 8))
        rows.append(
            (
                len(rows) + 1,
                conv.conv_id,
                step,
                attempt,
                status,
                kw.get("error_class"),
                prompt,
                512,
                done,
                0,
                120.0,
                0.01,
                cost if status == "ok" else None,
                "gpt-4o-mini",
            )
        )

    for conv in convs:
        for step in range(len(conv.texts)):
            if conv.conv_id % 4 == 0 and step == 1:
                req(conv, step, 1, "error", error_class="server_error")
                req(conv, step, 2, "ok")
            elif conv.conv_id == 5:
                req(conv, step, 1, "ok", cost=None)  # priced later: NULL counts as 0
            else:
                req(conv, step, 1, "ok")
        if conv.status == "failed":
            req(conv, len(conv.texts), 1, "rejected", error_class="context_length_exceeded")
        if conv.status == "active":
            req(conv, len(conv.texts), 1, "reserved")
    return rows


def build_run(run_dir: Path) -> FixtureRun:
    """Write the fixture run's store at ``run_dir/state.duckdb`` and describe it."""
    convs, planted = _plan()
    requests = _request_rows(convs)
    conn = open_store(run_dir / STATE_FILE, create=True)
    try:
        conn.execute("BEGIN TRANSACTION")
        conn.executemany(
            "INSERT INTO seeds VALUES (?, ?, ?, NULL, ?, ?, ?, 'fixture', 20)",
            [
                (
                    c.conv_id,
                    c.conv_id,
                    f"seed {c.conv_id} in {c.language}",
                    c.language,
                    c.code,
                    c.task,
                )
                for c in convs
            ],
        )
        conn.executemany(
            "INSERT INTO conversations VALUES "
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, NULL, NULL, 0)",
            [
                (
                    c.conv_id,
                    c.conv_id,
                    c.evol_type,
                    c.turns,
                    c.followup_types(),
                    c.language,
                    c.code,
                    c.task,
                    c.status,
                    len(c.texts),
                    c.error,
                    c.filter_reason,
                )
                for c in convs
            ],
        )
        conn.executemany(
            "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL)",
            [
                (
                    c.conv_id,
                    step,
                    step // 2 + 1,
                    "user" if step % 2 == 0 else "assistant",
                    "evolve" if step == 0 else "answer" if step % 2 else "follow_up",
                    text,
                    len(text) // 4,
                    c.step_evol_type(step),
                    c.step_prompt(step),
                    "stop" if step % 2 else None,
                )
                for c in convs
                for step, text in enumerate(c.texts)
            ],
        )
        conn.executemany(
            """INSERT INTO requests (request_id, conv_id, step, attempt, status, error_class,
               prompt_tokens, max_tokens, completion_tokens, cached_tokens, latency_ms,
               reserved_usd, cost_usd, model) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            requests,
        )
        # Rows written past the request log: its running totals are counted from them, as a
        # run's writes would have kept them.
        rebuild_totals(conn)
        conn.execute('INSERT INTO run_meta VALUES (\'config_json\', \'{"run": {"name": "fx"}}\')')
        conn.execute("COMMIT")
    finally:
        conn.close()
    return FixtureRun(run_dir, {c.conv_id: c for c in convs}, planted, requests)


def copy_run(template: FixtureRun, run_dir: Path) -> FixtureRun:
    """A copy of a built fixture run at ``run_dir`` (building one takes most of a second)."""
    shutil.copytree(template.run_dir, run_dir)
    return dataclasses.replace(template, run_dir=run_dir)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> FixtureRun:
    """The fixture run, built once for this module."""
    return build_run(tmp_path_factory.mktemp("template") / "run")


@pytest.fixture
def run(template: FixtureRun, tmp_path: Path) -> FixtureRun:
    """A fresh copy of the fixture run in tmp_path/run."""
    return copy_run(template, tmp_path / "run")


# --- expected rows ---------------------------------------------------------------------------


def release_id(run: FixtureRun, conv: Conv) -> int:
    """A whole conversation's release id: S + C + conv_id (one seed per fixture conversation)."""
    largest = max(run.convs)
    return 2 * largest + conv.conv_id


def expected_release(run: FixtureRun, conv: Conv, *, parquet: bool) -> dict[str, Any]:
    """The release row for a fixture conversation, built from the fixture, not the store.

    multiturn_evol_prompt holds one {TYPE: prompt} record per follow-up; Parquet stores each as
    a struct with a field per multi-turn type of the taxonomy, only the row's own one set.
    """
    steps = range(len(conv.texts))
    follow = [s for s in steps if s % 2 == 0 and s > 0]
    records: list[dict[str, str | None]] = []
    for s in follow:
        evol_type, prompt = conv.step_evol_type(s), conv.step_prompt(s)
        assert evol_type is not None
        record = dict.fromkeys(DEFAULT_MULTITURN_TYPES) if parquet else {}
        record[evol_type] = prompt
        records.append(record)
    return {
        "id": release_id(run, conv),
        "task_evol_type": conv.evol_type,
        "task_evol_prompt": conv.step_prompt(0),
        "seed_prompt": f"seed {conv.conv_id} in {conv.language}",
        "output_assistant_reply": conv.texts[1],
        "evolved_user_prompt": conv.texts[0],
        "multiturn_evol_type": [conv.step_evol_type(s) for s in follow],
        "multiturn_evol_prompt": records,
        "no_of_turns": conv.turns,
        "language": conv.language,
        "task": conv.task,
        "evolved_multiturn_prompt": [conv.texts[s] for s in follow],
        "conversation": chat(conv),
    }


def chat(conv: Conv) -> list[dict[str, str]]:
    """The conversation's turns as role/content pairs."""
    return [
        {"role": "user" if s % 2 == 0 else "assistant", "content": t}
        for s, t in enumerate(conv.texts)
    ]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Parse a JSONL file strictly: every line one JSON object."""
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# The ServiceNow-AI/M2Lingual card's column order.
RELEASE_COLUMNS = [
    "id",
    "task_evol_type",
    "task_evol_prompt",
    "seed_prompt",
    "output_assistant_reply",
    "evolved_user_prompt",
    "multiturn_evol_type",
    "multiturn_evol_prompt",
    "no_of_turns",
    "language",
    "task",
    "evolved_multiturn_prompt",
    "conversation",
]


# --- tests -----------------------------------------------------------------------------------


def test_release_parquet_schema_and_rows_match_the_store(run: FixtureRun, tmp_path: Path) -> None:
    """release-parquet has exactly the release columns and one row per done conversation."""
    report = export_run(run.run_dir, "release-parquet", output=tmp_path / "r.parquet")
    table = pq.read_table(report.path)
    assert table.column_names == RELEASE_COLUMNS
    schema = table.schema
    assert all(f.nullable for f in schema)  # the same schema whatever the run's data
    assert schema.equals(release_schema(DEFAULT_MULTITURN_TYPES))
    assert schema.field("id").type == pa.int32()
    assert schema.field("no_of_turns").type == pa.int32()
    assert schema.field("multiturn_evol_type").type == pa.list_(pa.string())
    conversation = schema.field("conversation").type
    assert pa.types.is_list(conversation)
    assert [f.name for f in conversation.value_type] == ["role", "content"]
    done = sorted(run.by_status("done"), key=lambda c: c.conv_id)
    assert report.rows == len(done) == table.num_rows
    assert table.to_pylist() == [expected_release(run, c, parquet=True) for c in done]
    ids = table.column("id").to_pylist()
    assert len(set(ids)) == len(ids)


def test_release_jsonl_holds_the_same_rows_as_parquet(run: FixtureRun, tmp_path: Path) -> None:
    """release-jsonl lines are the release rows, in conv_id order, with real UTF-8 text."""
    report = export_run(run.run_dir, "release-jsonl", output=tmp_path / "r.jsonl")
    lines = read_jsonl(report.path)
    done = sorted(run.by_status("done"), key=lambda c: c.conv_id)
    assert lines == [expected_release(run, c, parquet=False) for c in done]
    assert [list(line) for line in lines[:1]] == [RELEASE_COLUMNS]
    marathi = next(c for c in done if c.code == "mar")
    assert json.dumps(marathi.texts[0], ensure_ascii=False) in report.path.read_text("utf-8")


def test_messages_jsonl_lines_hold_only_messages(run: FixtureRun, tmp_path: Path) -> None:
    """messages-jsonl lines are exactly {"messages": [...]}, user first, roles alternating."""
    report = export_run(run.run_dir, "messages-jsonl", output=tmp_path / "m.jsonl")
    lines = read_jsonl(report.path)
    done = sorted(run.by_status("done"), key=lambda c: c.conv_id)
    assert lines == [{"messages": chat(c)} for c in done]
    for line in lines:
        roles = [m["role"] for m in line["messages"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2)


def test_sharegpt_jsonl_uses_human_and_gpt_turns(run: FixtureRun, tmp_path: Path) -> None:
    """sharegpt-jsonl lines carry id, language, task and human/gpt conversations."""
    report = export_run(run.run_dir, "sharegpt-jsonl", output=tmp_path / "s.jsonl")
    lines = read_jsonl(report.path)
    done = sorted(run.by_status("done"), key=lambda c: c.conv_id)
    expected = [
        {
            "id": str(c.conv_id),
            "language": c.language,
            "task": c.task,
            "conversations": [
                {"from": "human" if m["role"] == "user" else "gpt", "value": m["content"]}
                for m in chat(c)
            ],
        }
        for c in done
    ]
    assert lines == expected


def test_include_filtered_adds_filtered_rows_with_their_reason(
    run: FixtureRun, tmp_path: Path
) -> None:
    """--include-filtered adds filtered conversations; filter_reason is null for done ones."""
    report = export_run(
        run.run_dir, "release-parquet", output=tmp_path / "f.parquet", include_filtered=True
    )
    rows = pq.read_table(report.path).to_pylist()
    wanted = sorted(run.by_status("done", "filtered"), key=lambda c: c.conv_id)
    assert [r["id"] for r in rows] == [release_id(run, c) for c in wanted]
    assert {r["id"]: r["filter_reason"] for r in rows} == {
        release_id(run, c): c.filter_reason for c in wanted
    }
    assert list(rows[0])[-1] == "filter_reason"


def test_messages_jsonl_refuses_include_filtered(run: FixtureRun, tmp_path: Path) -> None:
    """messages-jsonl with include_filtered is refused: its lines cannot mark filtered rows."""
    with pytest.raises(ConfigError, match="sharegpt-jsonl"):
        export_run(run.run_dir, "messages-jsonl", include_filtered=True)
    assert not (run.run_dir / "export").exists()


def test_unknown_format_names_the_choices(run: FixtureRun) -> None:
    """An unknown format is a ConfigError listing the formats."""
    with pytest.raises(ConfigError, match="release-parquet, release-jsonl"):
        export_run(run.run_dir, "csv")


@pytest.mark.parametrize("fmt", ["release-parquet", "sharegpt-jsonl"])
def test_chunked_export_equals_one_pass(run: FixtureRun, tmp_path: Path, fmt: str) -> None:
    """Exporting in many small ranges gives the same rows, in order, as one COPY."""
    conn = open_run(run.run_dir, action="export")
    try:
        whole = export_with(conn, fmt, tmp_path / "whole", True)
        parts = export_with(conn, fmt, tmp_path / "parts", True, chunk_size=4)
    finally:
        conn.close()
    assert parts.rows == whole.rows == len(run.by_status("done", "filtered"))
    if fmt.endswith("parquet"):
        assert pq.read_table(parts.path).equals(pq.read_table(whole.path))
    else:
        assert parts.path.read_bytes() == whole.path.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".m2l-export.json",
        "README.md",
        "parts",
        "run",
        "whole",
    ]


def merged_by_duckdb(
    conn: duckdb.DuckDBPyConnection,
    spec: state.export.ExportFormat,
    selects: list[str],
    temp: Path,
    scratch: Any,
    store: Any,
    check: Any,
) -> int:
    """Release Parquet as the export wrote it before its parts were joined by their bytes
    (4a70228): every part read back into one DuckDB COPY."""
    parts = []
    for i, select in enumerate(selects):
        parts.append(part := scratch(f".part{i}"))
        state.export._copy(conn, select, spec, part)
    files = ", ".join(f"'{p}'" for p in parts)
    with state.export._settings(conn, threads="1", disabled_optimizers="statistics_propagation"):
        rows = state.export._copy(conn, f"SELECT * FROM read_parquet([{files}])", spec, temp)
    check(temp)
    return rows


@pytest.mark.parametrize(
    ("include_filtered", "quality", "subset"),
    [(False, False, None), (True, True, None), (True, False, "full_data")],
)
def test_release_parquet_is_the_file_one_copy_of_the_parts_wrote(
    run: FixtureRun,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    include_filtered: bool,
    quality: bool,
    subset: str | None,
) -> None:
    """Joining the parts by their bytes gives the rows, in order, and the schema of the file
    that reading them back into one COPY wrote (the code before), read by DuckDB and pyarrow."""
    options: dict[str, Any] = {"chunk_size": 4, "subset": subset, "quality_fields": quality}
    conn = open_run(run.run_dir, action="export")
    try:
        new = export_with(conn, "release-parquet", tmp_path / "new", include_filtered, **options)
        monkeypatch.setattr(state.export, "_parquet_in_parts", merged_by_duckdb)
        old = export_with(conn, "release-parquet", tmp_path / "old", include_filtered, **options)
    finally:
        conn.close()
    assert new.rows == old.rows > 8  # several parts
    reader = duckdb.connect()
    read = "SELECT * FROM read_parquet('{}')"
    assert reader.execute(read.format(new.path)).fetchall() == (
        reader.execute(read.format(old.path)).fetchall()
    )
    describe = "DESCRIBE " + read
    assert reader.execute(describe.format(new.path)).fetchall() == (
        reader.execute(describe.format(old.path)).fetchall()
    )
    assert pq.read_table(new.path).equals(pq.read_table(old.path))
    assert pq.read_schema(new.path).equals(pq.read_schema(old.path), check_metadata=True)


def test_a_file_not_of_the_release_schema_is_not_written(
    run: FixtureRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The schema DuckDB wrote is checked against the release schema before the file is put in
    place: a difference is an internal error and leaves no file (nor any part) behind."""
    wanted = release_schema(DEFAULT_MULTITURN_TYPES)
    other = wanted.set(0, pa.field("id", pa.int64()))
    monkeypatch.setattr(state.export, "release_schema", lambda types: other)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(StateError, match="differs from the release schema"):
        export_run(run.run_dir, "release-parquet", output=out / "r.parquet")
    assert list(out.iterdir()) == []


def test_default_output_is_in_the_run_export_folder(run: FixtureRun) -> None:
    """Without --output the file goes to <run>/export/<stem><suffix>."""
    report = export_run(run.run_dir, "sharegpt-jsonl")
    assert report.path == run.run_dir / "export" / "sharegpt.jsonl"
    assert report.path.is_file()
    assert default_output(run.run_dir, "release-parquet", include_filtered=True) == (
        run.run_dir / "export" / "release-with-filtered.parquet"
    )


def test_empty_run_writes_a_valid_empty_file(tmp_path: Path) -> None:
    """A run with no done conversation exports a readable file with the schema and no rows."""
    open_store(tmp_path / "empty" / STATE_FILE, create=True).close()
    report = export_run(tmp_path / "empty", "release-parquet", output=tmp_path / "e.parquet")
    table = pq.read_table(report.path)
    assert (report.rows, table.num_rows, table.column_names) == (0, 0, RELEASE_COLUMNS)


def test_an_export_sorts_and_writes_the_runs_export_chunk_at_a_time(
    run: FixtureRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each COPY holds at most [store] export_chunk conversations, as the run's stored config
    says: the bound on what an export keeps in memory (bench/scale.py)."""
    conn = open_store(run.run_dir / STATE_FILE, create=False)
    conn.execute(
        "UPDATE run_meta SET value = ? WHERE key = 'config_json'",
        [json.dumps({"run": {"name": "fx"}, "store": {"export_chunk": 3}})],
    )
    conn.close()
    copies: list[int] = []
    copy = state.export._copy

    def counted(*args: Any) -> int:
        copies.append(rows := copy(*args))
        return rows

    monkeypatch.setattr(state.export, "_copy", counted)
    report = export_run(run.run_dir, "sharegpt-jsonl", output=tmp_path / "s.jsonl")
    done = len(run.by_status("done"))
    assert report.rows == sum(copies) == done
    assert len(copies) == -(-done // 3) and max(copies) == 3


def test_failed_export_keeps_the_old_file_and_leaves_no_temp(
    run: FixtureRun, tmp_path: Path
) -> None:
    """A COPY that fails midway leaves the earlier file intact and no temporary file."""
    conn = duckdb.connect()
    try:
        conn.execute(f"ATTACH '{run.run_dir / STATE_FILE}' AS src (READ_ONLY)")
        for table in ("run_meta", "seeds", "conversations", "messages", "requests"):
            conn.execute(f"CREATE TABLE {table} AS SELECT * FROM src.{table}")
        conn.execute("DETACH src")
        conn.execute("DROP TABLE seeds")  # the release query joins seeds: COPY fails
        out = tmp_path / "out" / "release.jsonl"
        out.parent.mkdir()
        out.write_text("earlier export\n")
        for size in (1000, 3):
            with pytest.raises(duckdb.Error):
                export_with(conn, "release-jsonl", out, chunk_size=size)
            assert out.read_text() == "earlier export\n"
            assert [p.name for p in out.parent.iterdir()] == ["release.jsonl"]
    finally:
        conn.close()


def test_output_that_cannot_be_replaced_leaves_no_temp(run: FixtureRun, tmp_path: Path) -> None:
    """When the final rename fails (a folder is in the way), the temporary file is removed."""
    blocker = tmp_path / "out" / "data.parquet"
    (blocker / "inner").mkdir(parents=True)
    with pytest.raises(OSError):
        export_run(run.run_dir, "release-parquet", output=blocker)
    assert [p.name for p in blocker.parent.iterdir()] == ["data.parquet"]


def test_missing_run_is_a_state_error(tmp_path: Path) -> None:
    """Exporting a directory without a store says there is no run there."""
    with pytest.raises(StateError, match="there is no run at"):
        export_run(tmp_path / "nowhere", "release-jsonl")


@contextlib.contextmanager
def holding(path: Path) -> Iterator[None]:
    """Keep the DuckDB file at ``path`` open read-write in another process, as a run does."""
    code = (
        "import duckdb, sys\n"
        f"c = duckdb.connect({str(path)!r})\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
        proc.stdout.close()


@pytest.fixture
def held(run: FixtureRun) -> Iterator[FixtureRun]:
    """The fixture run, held open read-write by another process until the test ends."""
    with holding(run.run_dir / STATE_FILE):
        yield run


def test_store_held_by_a_running_process_is_refused(held: FixtureRun) -> None:
    """Exporting while another process holds the store says to wait or stop it, then export."""
    with pytest.raises(StateError) as caught:
        export_run(held.run_dir, "release-jsonl")
    message = str(caught.value)
    assert f"run directory {held.run_dir} is in use by a running m2l process (pid " in message
    assert "stop it (Ctrl-C), then export;" in message
    assert isinstance(caught.value, StoreLocked) and caught.value.pid is not None
    assert not (held.run_dir / "export").exists()


def test_formats_are_the_four_documented() -> None:
    """The CLI offers exactly the four documented formats."""
    assert list(FORMATS) == ["release-parquet", "release-jsonl", "messages-jsonl", "sharegpt-jsonl"]


def test_damaged_store_gives_the_schema_modules_error(tmp_path: Path) -> None:
    """A state file that is not a DuckDB database is refused with the store's own message."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / STATE_FILE).write_bytes(b"not a database at all" * 500)
    with pytest.raises(StateError, match="is damaged"):
        export_run(tmp_path / "run", "release-jsonl")


def test_other_schema_version_is_refused(run: FixtureRun) -> None:
    """A store written with another schema version is refused before anything is read."""
    conn = duckdb.connect(str(run.run_dir / STATE_FILE))
    try:
        conn.execute("UPDATE run_meta SET value = '99' WHERE key = 'schema_version'")
    finally:
        conn.close()
    with pytest.raises(StateError, match="schema v99"):
        export_run(run.run_dir, "release-jsonl")
    assert not (run.run_dir / "export").exists()


def test_cli_export_says_what_it_wrote(run: FixtureRun, tmp_path: Path) -> None:
    """`m2l export RUN --format messages-jsonl -o PATH` writes PATH and says how many rows."""
    parser = argparse.ArgumentParser(prog="m2l")
    add_export_parser(parser.add_subparsers())
    out = tmp_path / "m.jsonl"
    args = parser.parse_args(
        ["export", str(run.run_dir), "--format", "messages-jsonl", "-o", str(out)]
    )
    console = Console(record=True, width=300)
    assert args.func(args, console) == 0
    done = len(run.by_status("done"))
    assert f"wrote {done} conversations to {out}" in console.export_text()
    assert len(read_jsonl(out)) == done
