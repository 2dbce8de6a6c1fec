"""Adaptive max_tokens in a real run: learned from the request log, kept across a resume, and
never keeping a cut reply."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from engine.app.run import execute_run
from engine.config import load_config
from engine.events import ConversationFinished, Event
from engine.modelprofile import model_profile
from engine.scheduler import RunStatus, StopControl
from engine.tokens import TokenCounter
from prompts.languages import load_languages
from prompts.tokencost import LanguageFactors, load_token_costs
from state.requestlog import completion_lengths
from tests.runfixtures import write_config

pytestmark = pytest.mark.anyio

ADAPTIVE = """
[generation.adaptive_max_tokens]
enabled = true
min_samples = 10
group_by = "script"
"""


def rows(run_dir: Path, sql: str) -> list[tuple[object, ...]]:
    with duckdb.connect(str(run_dir / "state.duckdb"), read_only=True) as conn:
        return conn.execute(sql).fetchall()


class StopAfter:
    """Asks the run to stop once ``n`` conversations have finished."""

    def __init__(self, stop: StopControl, n: int) -> None:
        self.stop, self.left = stop, n

    def on_event(self, event: Event) -> None:
        if isinstance(event, ConversationFinished):
            self.left -= 1
            if self.left == 0:
                self.stop.request("enough")


async def test_caps_are_learned_kept_across_a_resume_and_cut_replies_never_kept(
    tmp_path: Path,
) -> None:
    """Answers (12-60 tokens from the simulator) go out with caps below the configured ones
    once ten are in; a resumed session starts with learned caps from the log; every reply
    cut at a learned cap was redone and none is stored."""
    config = load_config(write_config(tmp_path, evols_per_seed=4, extra=ADAPTIVE))
    stop = StopControl()
    first = await execute_run(config, env={}, hooks=StopAfter(stop, 12), stop=stop)
    assert first.result.status is RunStatus.INTERRUPTED
    (last_first,) = rows(config.run_dir, "SELECT max(request_id) FROM requests")[0]
    report = await execute_run(config, env={})
    assert report.result.status is RunStatus.FINISHED
    # Odd steps are answers, configured at 128 times each language's token-cost factor.
    factors = LanguageFactors(
        load_languages(),
        load_token_costs(),
        TokenCounter(config.provider.model).encoding_name,
        enabled=config.quality.scale_max_tokens,
    )
    caps = model_profile(config).step_caps
    answers = rows(
        config.run_dir,
        """SELECT r.request_id, r.max_tokens, c.language_code FROM requests r
           JOIN conversations c USING (conv_id) WHERE r.step % 2 = 1 ORDER BY r.request_id""",
    )
    learned = [
        rid
        for rid, cap, code in answers
        if isinstance(cap, int) and cap < caps.cap("answer", factor=factors.factor(str(code)))
    ]
    assert len(learned) > len(answers) // 2
    resumed = [rid for rid, _, _ in answers if isinstance(rid, int) and rid > int(str(last_first))]
    assert resumed and resumed[0] in learned, "the resumed session started from scratch"
    # No stored message is a cut reply; a cut at a learned cap is on record, and redone.
    assert rows(config.run_dir, "SELECT count(*) FROM messages WHERE finish_reason = 'length'") == [
        (0,)
    ]
    cut = rows(config.run_dir, "SELECT detail FROM rejections WHERE reason = 'truncated'")
    assert all("learned" in str(d) or "max_tokens" in str(d) for (d,) in cut)
    # Both sessions counted their caps: about the first ten first tries of a step kind went
    # out at the configured cap, the others waited for their replies (probes cut short by the
    # stop taught nothing, so the resumed session may send a few more).
    ((counted,),) = rows(config.run_dir, "SELECT value FROM run_meta WHERE key = 'adaptive_caps'")
    sources = json.loads(str(counted))
    assert set(sources) == {"evolve", "answer", "follow_up"}
    for kind, counts in sources.items():
        assert counts.get("configured", 0) <= 20, (kind, counts)
        assert counts.get("pooled", 0) + counts.get("own", 0) > 0, (kind, counts)


def test_completion_lengths_keep_the_latest_per_step_kind_and_language(tmp_path: Path) -> None:
    """The log's answered attempts, at most N per (step kind, language), oldest first; failed
    attempts and rows without a step are left out."""
    with duckdb.connect(str(tmp_path / "s.duckdb")) as conn:
        conn.execute("CREATE TABLE conversations(conv_id BIGINT, language_code VARCHAR)")
        conn.execute(
            """CREATE TABLE requests(request_id BIGINT, conv_id BIGINT, step SMALLINT,
               status VARCHAR, completion_tokens INTEGER, max_tokens INTEGER)"""
        )
        conn.execute("INSERT INTO conversations VALUES (1, 'eng'), (2, 'amh')")
        conn.executemany(
            "INSERT INTO requests VALUES (?, ?, ?, ?, ?, ?)",
            [
                (1, 1, 0, "ok", 10, 64),
                (2, 1, 1, "ok", 20, 128),
                (3, 1, 3, "ok", 21, 128),
                (4, 1, 5, "ok", 22, 128),
                (5, 1, 2, "ok", 5, 64),
                (6, 2, 1, "ok", 90, 600),
                (7, 1, 1, "error", None, 128),
                (8, None, None, "ok", 3, 9),
            ],
        )
        got = completion_lengths(conn, per_group=2)
    assert got == [
        (0, "eng", 10, 64),
        (3, "eng", 21, 128),
        (5, "eng", 22, 128),
        (2, "eng", 5, 64),
        (1, "amh", 90, 600),
    ]
