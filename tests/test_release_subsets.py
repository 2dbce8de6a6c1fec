"""The release's three subsets, int32 ids stable across re-exports, and the export's dataset card.

The card test loads every config of an export directory with the `datasets` library, offline
(HF_DATASETS_OFFLINE=1, a private HF_HOME), in a subprocess as a user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest

from state.card import CARD_MARKER
from state.export import STATE_FILE, export_run, export_subsets
from state.release import release_schema
from tests.test_export import FixtureRun, build_run, copy_run


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> FixtureRun:
    """The export tests' fixture run, with a source response for every seed but the first."""
    run = build_run(tmp_path_factory.mktemp("template") / "run")
    conn = duckdb.connect(str(run.run_dir / STATE_FILE))
    try:
        conn.execute("UPDATE seeds SET target = 'response to ' || instruction WHERE seed_id > 1")
    finally:
        conn.close()
    return run


@pytest.fixture
def run(template: FixtureRun, tmp_path: Path) -> FixtureRun:
    return copy_run(template, tmp_path / "run")


def _rows(path: Path) -> list[dict[str, object]]:
    return pq.read_table(path).to_pylist()


def test_subsets_hold_seeds_evolved_pairs_and_conversations(run: FixtureRun) -> None:
    """seed_data: seeds; seed_evol_data: one evolved pair per conversation; full_data: all."""
    reports = {r.path.stem: r for r in export_subsets(run.run_dir, "release-parquet")}
    assert set(reports) == {"seed_data", "seed_evol_data", "full_data"}
    done = sorted(run.by_status("done"), key=lambda c: c.conv_id)
    largest = max(run.convs)
    seeds = _rows(reports["seed_data"].path)
    # Seed 1 has no source response: no pair can be made of it.
    assert [r["id"] for r in seeds] == [c.conv_id for c in done if c.conv_id > 1]
    first = seeds[0]
    assert first["task_evol_type"] is None and first["no_of_turns"] == 1
    assert first["conversation"] == [
        {"role": "user", "content": first["seed_prompt"]},
        {"role": "assistant", "content": f"response to {first['seed_prompt']}"},
    ]
    pairs = _rows(reports["seed_evol_data"].path)
    assert [r["id"] for r in pairs] == [largest + c.conv_id for c in done]
    for row, conv in zip(pairs, done, strict=True):
        assert row["no_of_turns"] == 1 and row["multiturn_evol_type"] == []
        assert row["task_evol_type"] == conv.evol_type
        assert [m["content"] for m in row["conversation"]] == conv.texts[:2]
    full = _rows(reports["full_data"].path)
    multi = [c for c in done if c.turns > 1]
    assert len(full) == len(seeds) + len(pairs) + len(multi)
    ids = [r["id"] for r in full]
    assert len(set(ids)) == len(ids) and all(0 < i < 2**31 for i in ids)
    assert [r for r in full if r["id"] in {s["id"] for s in seeds}] == seeds
    conversations = [r for r in full if r["id"] > 2 * largest]
    assert [r["no_of_turns"] for r in conversations] == [c.turns for c in multi]
    for table in reports.values():
        assert (
            pq.read_schema(table.path)
            .remove_metadata()
            .equals(release_schema(tuple(_types(table.path))))
        )


def _types(path: Path) -> list[str]:
    field = pq.read_schema(path).field("multiturn_evol_prompt")
    return [f.name for f in field.type.value_type]


def test_ids_are_stable_across_re_exports(run: FixtureRun, tmp_path: Path) -> None:
    """Exporting the same run again, even after more conversations finish, keeps every id."""
    first = _rows(export_run(run.run_dir, "release-parquet", subset="full_data").path)
    conn = duckdb.connect(str(run.run_dir / STATE_FILE))
    try:
        conn.execute("UPDATE conversations SET status = 'done' WHERE status = 'filtered'")
    finally:
        conn.close()
    again = _rows(export_run(run.run_dir, "release-parquet", subset="full_data").path)
    by_id = {r["id"]: r for r in again}
    assert all(by_id[r["id"]] == r for r in first)
    assert len(again) > len(first)


def test_subset_needs_a_release_format(run: FixtureRun) -> None:
    """A subset of a chat format, or an unknown subset, is a ConfigError."""
    from engine.errors import ConfigError

    with pytest.raises(ConfigError, match="release-parquet or release-jsonl"):
        export_run(run.run_dir, "messages-jsonl", subset="full_data")
    with pytest.raises(ConfigError, match="unknown subset 'seeds'"):
        export_run(run.run_dir, "release-parquet", subset="seeds")


_LOAD = """
import json, sys
import datasets
out = {}
for name in sys.argv[2:]:
    ds = datasets.load_dataset(sys.argv[1], name, split="train")
    first = ds[0] if ds.num_rows else None
    out[name] = {"rows": ds.num_rows, "features": str(ds.features), "first": first}
print(json.dumps(out, default=str))
"""


def _load(folder: Path, configs: list[str], tmp_path: Path) -> dict[str, Any]:
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    env["HF_HOME"] = str(tmp_path / "hf")
    done = subprocess.run(
        [sys.executable, "-c", _LOAD, str(folder), *configs],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded: dict[str, Any] = json.loads(done.stdout)
    return loaded


def test_every_export_directory_loads_with_datasets_offline(
    run: FixtureRun, tmp_path: Path
) -> None:
    """The card's YAML lets datasets.load_dataset(dir, config) load each subset, no network."""
    pytest.importorskip("datasets")
    export_subsets(run.run_dir, "release-parquet")
    export_run(run.run_dir, "release-parquet")
    export_run(run.run_dir, "messages-jsonl")  # every run writes it: listed, not configured
    folder = run.run_dir / "export"
    card = (folder / "README.md").read_text("utf-8")
    assert card.startswith(f"---\n{CARD_MARKER}\n")
    for needle in ("config_name: full_data", "default: true", "dtype: int32", "- hi", "- sw"):
        assert needle in card
    assert "size_categories:\n- n<1K" in card
    assert 'load_dataset("json", data_files="path/to/this/folder/messages.jsonl"' in card
    configs = ["seed_data", "seed_evol_data", "full_data", "release"]
    loaded = _load(folder, configs, tmp_path)
    for name in configs:
        assert loaded[name]["rows"] == pq.read_metadata(folder / f"{name}.parquet").num_rows
    assert "int32" in loaded["full_data"]["features"]
    release = loaded["release"]["first"]
    assert isinstance(release["id"], int)
    prompts = release["multiturn_evol_prompt"]
    assert all(sum(v is not None for v in record.values()) == 1 for record in prompts)


def test_a_jsonl_export_directory_loads_too(run: FixtureRun, tmp_path: Path) -> None:
    """Subsets as JSON lines, with the chat formats beside them, each load by config name."""
    pytest.importorskip("datasets")
    folder = tmp_path / "jsonl"
    export_subsets(run.run_dir, "release-jsonl", directory=folder)
    export_run(run.run_dir, "messages-jsonl", output=folder / "messages.jsonl")
    export_run(run.run_dir, "sharegpt-jsonl", output=folder / "sharegpt.jsonl")
    loaded = _load(folder, ["full_data", "seed_data", "messages", "sharegpt"], tmp_path)
    assert loaded["messages"]["rows"] == loaded["sharegpt"]["rows"] > 0
    assert loaded["seed_data"]["rows"] > 0
    record = next(r for r in loaded["full_data"]["first"]["conversation"])
    assert set(record) == {"role", "content"}


def test_a_readme_m2l_did_not_write_is_left_alone(run: FixtureRun, tmp_path: Path) -> None:
    """Exporting next to the user's own README.md never overwrites it."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "README.md").write_text("# my notes\n", "utf-8")
    report = export_run(run.run_dir, "release-jsonl", output=out / "data.jsonl")
    assert report.card is None
    assert (out / "README.md").read_text("utf-8") == "# my notes\n"


def test_cli_export_subsets_writes_three_files_and_the_card(run: FixtureRun) -> None:
    """`m2l export RUN --format release-parquet --subsets` writes each subset and says so."""
    import argparse

    from rich.console import Console

    from engine.app.outputs import add_export_parser

    parser = argparse.ArgumentParser()
    add_export_parser(parser.add_subparsers())
    args = parser.parse_args(["export", str(run.run_dir), "--subsets"])
    console = Console(record=True, width=200)
    assert args.func(args, console) == 0
    text = console.export_text()
    folder = run.run_dir / "export"
    for subset in ("seed_data", "seed_evol_data", "full_data"):
        assert str(folder / f"{subset}.parquet") in text
    assert f"dataset card: {folder / 'README.md'}" in text
    bad = parser.parse_args(["export", str(run.run_dir), "--subsets", "--format", "sharegpt-jsonl"])
    from engine.errors import ConfigError

    with pytest.raises(ConfigError, match="release-parquet or release-jsonl"):
        bad.func(bad, console)
