"""`m2l stats` shows the outputs the quality gate threw away, in every form: by reason, step kind
and language, with what they cost and their share of the outputs received."""

from __future__ import annotations

import asyncio
from pathlib import Path

import duckdb
import orjson
from rich.console import Console

from engine.app.run import execute_run
from engine.config import load_config
from state.report_html import render_report
from state.stats import compute_stats, print_stats, stats_json
from tests.runfixtures import write_config


def test_rejections_by_reason_kind_and_language_with_their_cost_in_every_form(
    tmp_path: Path,
) -> None:
    """A run where a third of the replies are in the wrong language: the stats count each
    rejected output once, by reason x step kind x language, at the cost the log recorded."""
    config = load_config(write_config(tmp_path, faults="wrong_language = 0.3"))
    asyncio.run(execute_run(config, env={}))
    with duckdb.connect(str(config.run_dir / "state.duckdb"), read_only=True) as conn:
        stats = compute_stats(conn, run="t")
        truth = {
            (str(reason), str(kind), str(language)): (int(n), float(cost))
            for reason, kind, language, n, cost in conn.execute(
                "SELECT r.reason, r.kind, c.language, count(*), sum(r.cost_usd) "
                "FROM rejections r JOIN conversations c USING (conv_id) GROUP BY ALL"
            ).fetchall()
        }
        received = conn.execute(
            "SELECT count(*) FROM requests WHERE status = 'ok' AND conv_id IS NOT NULL"
        ).fetchone()
    assert truth and received is not None
    found = {(r.reason, r.kind, r.language): (r.outputs, r.cost_usd) for r in stats.rejections}
    assert found.keys() == truth.keys()
    for key, (n, cost) in truth.items():
        assert found[key][0] == n and abs(found[key][1] - cost) < 1e-12
    assert stats.rejected == sum(n for n, _ in truth.values()) > 0
    assert stats.outputs == received[0] and 0 < stats.rejection_rate < 1
    # JSON
    doc = orjson.loads(stats_json(stats))
    assert doc["rejected"]["outputs"] == stats.rejected
    assert doc["rejected"]["rate"] == round(stats.rejection_rate, 4)
    assert {(r["reason"], r["kind"], r["language"]) for r in doc["rejections"]} == truth.keys()
    # Terminal tables
    console = Console(record=True, width=160)
    print_stats(stats, console)
    text = console.export_text()
    assert f"Rejected outputs: {stats.rejected:,} of {stats.outputs:,}" in text
    assert all(language in text for _, _, language in truth)
    # HTML report
    html = render_report(stats)
    assert "rejected outputs by reason and step kind" in html
    assert "cost of rejected outputs" in html
