"""Seeds asked, available and taken per language, as `m2l estimate` and `m2l run` show them."""

from __future__ import annotations

from pathlib import Path

import pytest

from budgets.estimate import estimate_run
from engine.app.estimate import estimate_json, estimate_lines, selection_lines
from engine.app.run import execute_run
from engine.config import load_config
from engine.scheduler import RunStatus
from state.setup import SetupReport
from tests import ayafiles


def _config(tmp_path: Path, total: int) -> Path:
    rows = ayafiles.collection_rows(1, codes=["arb", "ary", "eng", "hin"])
    rows += ayafiles.collection_rows(1, codes=["yor"])[:5]
    ayafiles.write(tmp_path / "aya.jsonl", rows)
    path = tmp_path / "m2l.toml"
    path.write_text(
        f"""[run]
name = "aya"
output_dir = "runs"
max_active = 16

[seeds]
file = "aya.jsonl"
total = {total}

[provider]
kind = "sim"
model = "gpt-4o-mini"

[generation]
max_tokens = {{ evolve = 64, answer = 96, follow_up = 64 }}
max_turns = 2

[sim]
ttft_s = 0.0
per_token_s = 0.0
""",
        "utf-8",
    )
    return path


def test_estimate_shows_each_languages_asked_available_taken(tmp_path: Path) -> None:
    """Yoruba has 5 of its 10: the estimate says so and the other languages take the rest."""
    estimate = estimate_run(load_config(_config(tmp_path, 50)), simulated=False)
    assert estimate.seeds == 50
    lines = estimate_lines(estimate)
    assert "seeds: 50 taken of 50 asked; per language asked / available / taken:" in lines
    assert "  Yoruba (yor): 10 / 5 / 5 (short)" in lines
    assert any(line.startswith("1 language short of seeds: 5 seeds") for line in lines)
    assert "  Hindi (hin): 10 / 24 / 12" in lines or "  Hindi (hin): 10 / 24 / 11" in lines
    per_language = {t["language_code"]: t for t in estimate_json(estimate)["seeds_per_language"]}
    assert per_language["yor"]["taken"] == 5
    assert sum(t["taken"] for t in per_language.values()) == 50


@pytest.mark.anyio
async def test_run_start_reports_the_selection_before_any_request(tmp_path: Path) -> None:
    """execute_run hands a new run's set-up to on_setup; a resumed run has none to report."""
    config = load_config(_config(tmp_path, 30))
    seen: list[SetupReport] = []
    report = await execute_run(config, env={}, on_setup=seen.append)
    assert report.result.status is RunStatus.FINISHED
    assert len(seen) == 1
    compact = selection_lines(seen[0].selection, every=False)
    assert compact[0] == "seeds: 30 taken of 30 asked; per language asked / available / taken:"
    assert "  Yoruba (yor): 6 / 5 / 5 (short)" in compact
    assert "  the other 4 languages: asked 6, taken 6–7 each" in compact
    again: list[SetupReport] = []
    await execute_run(config, env={}, on_setup=again.append)
    assert again == []
