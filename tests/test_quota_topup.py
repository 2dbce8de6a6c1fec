"""Quotas that top up: a language short of seeds gives its share to the languages that have them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from engine.config import load_config
from engine.errors import ConfigError
from prompts.languages import load_languages
from prompts.taxonomy import load_taxonomy
from state.schema import create_schema
from state.seeds import ingest_seeds
from state.selection import SelectionSpec, plan_quotas, select_seeds
from state.setup import plan_run, selection_spec
from tests import ayafiles

# 70 languages as the pool would name them; the last 20 have only 7 seeds each.
_LANGS = [(f"Lang{i:02d}", f"l{i:02d}", "low" if i >= 50 else "high") for i in range(70)]
_SUPPLY = {
    **{(name, "general"): 60 for name, _, tier in _LANGS if tier == "high"},
    **{(name, "open_qa"): 30 for name, _, tier in _LANGS if tier == "high"},
    **{(name, "general"): 7 for name, _, tier in _LANGS if tier == "low"},
}


def _spread(values: list[int]) -> float:
    return max(values) / min(values)


def test_redistribute_meets_the_total_and_keeps_languages_with_supply_balanced() -> None:
    """total = 1400 over 70 languages, 20 of them short: 1400 are taken, max/min ≤ 1.1."""
    plan = plan_quotas(_SUPPLY, _LANGS, SelectionSpec(total=1400))
    assert plan.requested == 1400 and plan.taken == 1400
    by_lang = {t.language: t for t in plan.languages}
    short = [t for t in plan.languages if t.available < t.asked]
    assert len(short) == 20 and all(t.taken == t.available == 7 for t in short)
    full = [t.taken for t in plan.languages if t.available >= t.asked]
    assert len(full) == 50 and _spread(full) <= 1.1
    assert sum(full) == 1400 - 20 * 7
    assert by_lang["Lang00"].asked == 20 and by_lang["Lang00"].taken > 20
    # The short languages are still reported, with what they have.
    assert {s.language for s in plan.shortfalls if s.task is None} == {t.language for t in short}


def test_skip_leaves_the_run_smaller_and_says_so() -> None:
    """shortfall = skip: every language gets at most its share; the total is not met."""
    plan = plan_quotas(_SUPPLY, _LANGS, SelectionSpec(total=1400, shortfall="skip"))
    assert plan.taken == 50 * 20 + 20 * 7
    assert all(t.taken <= t.asked for t in plan.languages)


def test_weighted_languages_stay_in_proportion_after_top_up() -> None:
    """With tier weights, taken/weight stays balanced among languages with supply."""
    spec = SelectionSpec(total=1000, language_weights="tier", tier_weights={"high": 2, "low": 1})
    plan = plan_quotas(_SUPPLY, _LANGS, spec)
    assert plan.taken == 1000
    high = [t.taken for t in plan.languages if t.language_code < "l50"]
    assert _spread(high) <= 1.1 and min(high) > 2 * 7
    assert all(t.taken == 7 for t in plan.languages if t.language_code >= "l50")


def test_total_larger_than_the_pool_takes_everything_and_reports_it() -> None:
    """When the whole pool is smaller than the total, every seed is taken and the rest is short."""
    small = {(name, "general"): 3 for name, _, _ in _LANGS[:5]}
    plan = plan_quotas(small, _LANGS[:5], SelectionSpec(total=100))
    assert plan.taken == 15 and plan.requested == 100
    assert all(t.taken == 3 for t in plan.languages)


def test_shortfall_mode_is_validated() -> None:
    """An unknown mode is a ConfigError naming both choices."""
    with pytest.raises(ConfigError, match=r"'redistribute'.*'skip'"):
        SelectionSpec(total=5, shortfall="spread")  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    conn = duckdb.connect(str(tmp_path / "state.duckdb"))
    create_schema(conn)
    yield conn
    conn.close()


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_select_on_an_aya_collection_file_tops_up_and_reports_each_language(
    tmp_path: Path, store: duckdb.DuckDBPyConnection, suffix: str
) -> None:
    """Yoruba has few rows: the others take its share; the report gives asked/available/taken."""
    rows = ayafiles.collection_rows(per_cell=2, codes=["arb", "ary", "eng", "hin", "swh"])
    rows += ayafiles.collection_rows(per_cell=1, codes=["yor"])[:10]
    path = ayafiles.write(tmp_path / f"c{suffix}", rows)
    ingest_seeds(store, path, languages=load_languages(), taxonomy=load_taxonomy())
    report = select_seeds(store, SelectionSpec(total=240, seed=3))
    assert report.requested == report.selected_seeds == 240
    takes = {t.language_code: t for t in report.languages}
    assert takes["yor"].asked == 40 and takes["yor"].available == takes["yor"].taken == 10
    others = [t.taken for code, t in takes.items() if code != "yor"]
    assert sum(others) == 230 and _spread(others) <= 1.1
    got = dict(store.execute("SELECT language_code, count(*) FROM seeds GROUP BY ALL").fetchall())
    assert got == {code: t.taken for code, t in takes.items()}
    text = str(report)
    assert "1 language short of seeds: 30 seeds of their share went to" in text
    assert "shortfall: Yoruba: 10 seeds for a quota of 40" in text


def _config(tmp_path: Path, seeds_lines: str) -> Path:
    ayafiles.write(tmp_path / "aya.parquet", ayafiles.collection_rows(1))
    path = tmp_path / "m2l.toml"
    path.write_text(f'[run]\nname = "t"\n\n[seeds]\nfile = "aya.parquet"\n{seeds_lines}\n', "utf-8")
    return path


def test_config_keys_reach_selection_and_ingestion(tmp_path: Path) -> None:
    """seeds.shortfall, evol_mix, source_tasks and default_task are read, typed and passed on."""
    (tmp_path / "mine.toml").write_text('[datasets]\nntx_llm = "ner"\n', "utf-8")
    lines = (
        'shortfall = "skip"\nevol_mix = { agnostic = 1, specific = 3 }\n'
        'source_tasks = "mine.toml"\ndefault_task = "creative_writing"'
    )
    config = load_config(_config(tmp_path, lines))
    spec = selection_spec(config)
    assert spec.shortfall == "skip" and dict(spec.evol_mix) == {"agnostic": 1, "specific": 3}
    assert config.seeds.source_tasks == tmp_path / "mine.toml"
    conn = duckdb.connect()
    create_schema(conn)
    try:
        report = plan_run(config, load_taxonomy(), load_languages(), {"k": "v"})(conn)
        tasks = dict(conn.execute("SELECT source, task FROM seeds").fetchall())
    finally:
        conn.close()
    assert report.ingest.source_tasks == tmp_path / "mine.toml"
    assert tasks["NTX-LLM"] == "ner"  # the user's table, not the built-in one
    assert tasks["Ukranian GEC"] == "creative_writing"  # unknown source and task_type
    assert tasks["HotpotQA"] == "open_qa"  # not in the user's table: task_type decides
    assert report.selection.shortfall_mode == "skip"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('shortfall = "spread"', "shortfall"),
        ("evol_mix = { general = 1 }", "evol_mix"),
        ("evol_mix = { agnostic = 0, specific = 0 }", "evol_mix"),
    ],
)
def test_bad_config_values_name_the_key(tmp_path: Path, line: str, message: str) -> None:
    """A wrong value is a ConfigError at load naming the file and the key."""
    path = _config(tmp_path, line)
    with pytest.raises(ConfigError, match=message) as err:
        load_config(path)
    assert str(path) in str(err.value)
