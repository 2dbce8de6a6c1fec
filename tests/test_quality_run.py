"""Quality on a real simulated run: wrong-language and repetitive replies are regenerated inline,
or end their conversation with the reason; the post-hoc pass finds nothing they let through."""

from __future__ import annotations

from pathlib import Path

import duckdb
import orjson
import pyarrow.parquet as pq
import pytest

from engine.app.run import execute_run
from engine.config import load_config
from engine.conversation import Conversation, Status
from engine.errors import ConfigError
from engine.posthoc import filter_run, run_quality
from engine.quality import FilterConfig
from engine.scheduler import RunStatus
from engine.validation import QualityValidator
from prompts.languages import load_languages
from state.export import export_run, export_subsets
from state.journal import load_conversations
from tests.runfixtures import write_config

pytestmark = pytest.mark.anyio
BUNDLED_SEEDS = Path(__file__).resolve().parent.parent / "examples" / "seeds.jsonl"


async def test_bad_replies_are_regenerated_or_fail_with_their_reason(tmp_path: Path) -> None:
    """Injected wrong-language and repeated replies never reach the dataset."""
    config = load_config(
        write_config(tmp_path, evols_per_seed=3, faults="wrong_language = 0.12\nrepetition = 0.12")
    )
    report = await execute_run(config, env={})
    assert report.result.status is RunStatus.FINISHED
    with duckdb.connect(str(config.run_dir / "state.duckdb"), read_only=True) as conn:
        regenerated = conn.execute(
            """SELECT count(*) FROM (SELECT conv_id, step FROM requests WHERE status = 'ok'
               GROUP BY ALL HAVING count(*) > 1)"""
        ).fetchone()
        failures = conn.execute(
            "SELECT error FROM conversations WHERE status = 'failed'"
        ).fetchall()
        stored = load_conversations(conn, statuses=["done"], after=0, limit=1_000_000)
    assert regenerated is not None and regenerated[0] > 0, "no step was ever regenerated"
    for (error,) in failures:
        reason = str(error).split(" after ")[0]
        assert reason in {"wrong_language", "repetition", "truncated"}, error
    # Every stored output passes the same checks the engine applied inline.
    validator = QualityValidator(load_languages(), FilterConfig())
    for conv in stored:
        for i, step in enumerate(conv.steps):
            before = Conversation(conv.plan, conv.steps[:i], Status.ACTIVE)
            verdict = validator.check(before, step.kind, step.message.content)
            assert verdict.ok, (conv.plan.conv_id, step.kind, verdict)
    post = filter_run(config.run_dir, dry_run=True)
    assert post.checked == report.counts["done"]
    reasons = dict(post.by_reason)
    assert "wrong_language" not in reasons and "repetition" not in reasons


async def test_every_thrown_away_output_is_stored_and_late_failures_keep_their_turns(
    tmp_path: Path,
) -> None:
    """Each paid reply becomes a message or a stored rejection; failed late turns keep the rest."""
    config = load_config(
        write_config(tmp_path, evols_per_seed=3, faults="wrong_language = 0.45\nrepetition = 0.1")
    )
    report = await execute_run(config, env={})
    assert report.result.status is RunStatus.FINISHED
    with duckdb.connect(str(config.run_dir / "state.duckdb"), read_only=True) as conn:
        unaccounted = conn.execute(
            """WITH paid AS (SELECT conv_id, step, count(*) AS n FROM requests
                             WHERE status = 'ok' GROUP BY ALL),
                    kept AS (SELECT conv_id, step, count(*) AS n FROM messages GROUP BY ALL),
                    thrown AS (SELECT conv_id, step, count(*) AS n FROM rejections GROUP BY ALL)
               SELECT p.conv_id, p.step, p.n, coalesce(k.n, 0), coalesce(t.n, 0) FROM paid p
               LEFT JOIN kept k USING (conv_id, step) LEFT JOIN thrown t USING (conv_id, step)
               WHERE p.n <> coalesce(k.n, 0) + coalesce(t.n, 0)"""
        ).fetchall()
        rejected = conn.execute(
            """SELECT reason, count(*), count(*) FILTER (WHERE content = ''),
                      count(*) FILTER (WHERE cost_usd IS NULL OR completion_tokens IS NULL)
               FROM rejections WHERE reason <> 'unanswered' GROUP BY reason"""
        ).fetchall()
        partial = conn.execute(
            """SELECT c.conv_id, c.turns_planned, c.steps_done, c.error,
                      (SELECT count(*) FROM messages m WHERE m.conv_id = c.conv_id)
               FROM conversations c WHERE status = 'done' AND steps_done < 2 * turns_planned"""
        ).fetchall()
        over = conn.execute(
            """SELECT count(*) FROM (SELECT conv_id, step FROM requests WHERE status = 'ok'
               GROUP BY ALL HAVING count(*) > ?)""",
            [config.generation.max_regenerations + 1],
        ).fetchone()
    assert unaccounted == [], "a paid reply is neither a message nor a stored rejection"
    reasons = {reason: n for reason, n, _, _ in rejected}
    assert reasons.get("wrong_language", 0) > 0, reasons
    assert all(empty == 0 and missing == 0 for _, _, empty, missing in rejected), rejected
    assert partial, "no conversation kept its good turns after a late failure"
    for _conv, planned, steps, error, messages in partial:
        assert steps % 2 == 0 and 2 <= steps < 2 * planned and messages == steps
        assert str(error).startswith(f"kept {steps // 2} of {planned} turns: turn ")
    assert over == (0,)
    # Exports: the quality fields show planned vs made turns and the thrown-away outputs;
    # partial conversations can be left out.
    full = export_run(config.run_dir, "release-jsonl", output=tmp_path / "q.jsonl",
                      quality_fields=True)  # fmt: skip
    rows = [orjson.loads(line) for line in full.path.read_bytes().splitlines()]
    short = [r for r in rows if r["turns_made"] < r["turns_planned"]]
    assert len(short) == len(partial)
    assert all(r["kept_reason"].startswith("kept ") and r["no_of_turns"] == r["turns_made"]
               for r in short)  # fmt: skip
    assert sum(len(r["rejected"]) for r in rows) > 0
    assert {x["reason"] for r in rows for x in r["rejected"]} <= {
        "wrong_language", "repetition", "truncated", "unanswered", "not_evolved",
        "leaked_markers", "refusal", "cross_turn_repetition", "empty", "too_short",
    }  # fmt: skip
    # The same fields in release Parquet, typed as the dataset card lists them.
    parquet = export_run(config.run_dir, "release-parquet", output=tmp_path / "q.parquet",
                         quality_fields=True)  # fmt: skip
    table = pq.read_table(parquet.path)
    assert table.column_names[-4:] == ["turns_planned", "turns_made", "kept_reason", "rejected"]
    fields = ("id", "turns_planned", "turns_made", "kept_reason", "rejected")
    assert [{k: r[k] for k in fields} for r in table.to_pylist()] == [
        {k: r[k] for k in fields} for r in rows
    ]
    assert parquet.card is not None and "name: turns_made" in parquet.card.read_text()
    with pytest.raises(ConfigError, match="subset mirrors one of M2Lingual's released files"):
        export_subsets(config.run_dir, "release-parquet", directory=tmp_path / "s",
                       quality_fields=True)  # fmt: skip
    with pytest.raises(ConfigError, match="fine-tuning validator"):
        export_run(config.run_dir, "messages-jsonl", output=tmp_path / "m.jsonl",
                   quality_fields=True)  # fmt: skip
    whole = export_run(config.run_dir, "release-jsonl", output=tmp_path / "a.jsonl")
    assert "rejected" not in orjson.loads(whole.path.read_bytes().splitlines()[0])
    trimmed = export_run(config.run_dir, "sharegpt-jsonl", output=tmp_path / "b.jsonl",
                         exclude_partial=True)  # fmt: skip
    assert trimmed.rows == whole.rows - len(partial)
    # m2l filter can count the outputs thrown away inline next to its own findings.
    post = filter_run(config.run_dir, dry_run=True, include_rejected=True)
    with duckdb.connect(str(config.run_dir / "state.duckdb"), read_only=True) as conn:
        thrown = conn.execute("SELECT count(*) FROM rejections").fetchone()
    assert thrown is not None and sum(n for _, n in post.rejected) == thrown[0] > 0
    assert filter_run(config.run_dir, dry_run=True).rejected == ()


def test_filter_uses_the_quality_settings_the_run_was_made_with() -> None:
    """run_quality reads [quality] from the stored config; a store without one gets defaults."""
    conn = duckdb.connect()
    conn.execute("CREATE TABLE run_meta(key VARCHAR PRIMARY KEY, value VARCHAR)")
    assert run_quality(conn) == FilterConfig()
    stored = {"quality": {"check_language": False, "refusals_path": None, "extra_markers": ["X"]}}
    conn.execute("INSERT INTO run_meta VALUES ('config_json', ?)", [orjson.dumps(stored).decode()])
    quality = run_quality(conn)
    assert quality.check_language is False and quality.extra_markers == ("X",)


async def test_bundled_translation_seeds_finish_without_rejections(tmp_path: Path) -> None:
    """The simulator and the quality gate agree on translations: the demo's translation seeds
    (each into English, 13 languages) all finish, none rejected, when no fault is injected."""
    config_path = write_config(tmp_path, evols_per_seed=2)
    lines = [ln for ln in BUNDLED_SEEDS.read_text(encoding="utf-8").splitlines() if ln.strip()]
    translations = [ln for ln in lines if orjson.loads(ln)["task_type"] == "translation"]
    assert len(translations) >= 10
    (tmp_path / "seeds.jsonl").write_text("\n".join(translations) + "\n", encoding="utf-8")
    config = load_config(config_path)
    report = await execute_run(config, env={})
    assert report.result.status is RunStatus.FINISHED
    with duckdb.connect(str(config.run_dir / "state.duckdb"), read_only=True) as conn:
        rejected = conn.execute("SELECT conv_id, step, reason, detail FROM rejections").fetchall()
        statuses = conn.execute("SELECT status, count(*) FROM conversations GROUP BY 1").fetchall()
    assert rejected == []
    assert dict(statuses) == {"done": 2 * len(translations)}
