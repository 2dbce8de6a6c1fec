"""`m2l run` end to end, in process: the embedded simulator, a real DuckDB store."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

from engine.app.run import RunOptions, execute_run
from engine.config import load_config
from engine.errors import ConfigError
from engine.scheduler import RunStatus, StopControl
from tests.runfixtures import write_config

pytestmark = pytest.mark.anyio


def rows(run_dir: Path, sql: str) -> list[tuple[object, ...]]:
    with duckdb.connect(str(run_dir / "state.duckdb"), read_only=True) as conn:
        return conn.execute(sql).fetchall()


async def test_run_finishes_every_conversation(tmp_path: Path) -> None:
    """Every planned conversation ends done with exactly its planned steps, stored once."""
    config = load_config(write_config(tmp_path, evols_per_seed=2))
    report = await execute_run(config, env={})
    assert report.result.status is RunStatus.FINISHED
    assert report.counts == {"done": 16}
    mismatched = rows(
        config.run_dir,
        """SELECT c.conv_id FROM conversations c LEFT JOIN messages m USING (conv_id)
           GROUP BY c.conv_id, c.turns_planned HAVING count(m.step) != 2 * c.turns_planned""",
    )
    assert mismatched == []
    roles = rows(config.run_dir, "SELECT DISTINCT step % 2, role FROM messages ORDER BY 1")
    assert roles == [(0, "user"), (1, "assistant")]
    # Every stored step came from a request that succeeded; regenerations add more.
    ok = rows(config.run_dir, "SELECT count(*) FROM requests WHERE status = 'ok'")[0][0]
    steps = rows(config.run_dir, "SELECT count(*) FROM messages")[0][0]
    assert isinstance(ok, int) and isinstance(steps, int) and ok >= steps > 0


async def test_rerun_of_a_finished_run_does_nothing(tmp_path: Path) -> None:
    """Running a finished run again sends no request and stores nothing twice."""
    config = load_config(write_config(tmp_path))
    await execute_run(config, env={})
    before = rows(config.run_dir, "SELECT count(*) FROM requests")
    report = await execute_run(config, env={})
    assert report.result.status is RunStatus.FINISHED
    assert rows(config.run_dir, "SELECT count(*) FROM requests") == before


async def test_changed_content_config_is_refused_with_a_diff(tmp_path: Path) -> None:
    """A resumed run whose model changed is refused, naming the key and both values."""
    path = write_config(tmp_path)
    await execute_run(load_config(path), env={})
    path.write_text(path.read_text().replace('model = "gpt-4o-mini"', 'model = "gpt-4o"'))
    with pytest.raises(ConfigError, match=r"provider\.model: 'gpt-4o-mini' → 'gpt-4o'"):
        await execute_run(load_config(path), env={})


async def test_safe_change_needs_force(tmp_path: Path) -> None:
    """A changed limit is accepted on resume only with --force."""
    path = write_config(tmp_path)
    await execute_run(load_config(path), env={})
    path.write_text(path.read_text().replace("max_active = 16", "max_active = 4"))
    with pytest.raises(ConfigError, match="--force"):
        await execute_run(load_config(path), env={})
    report = await execute_run(load_config(path), env={}, options=RunOptions(force=True))
    assert report.result.status is RunStatus.FINISHED


async def _set_up_with_stored_config(
    path: Path, edit: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    """Set up the run of the config at ``path`` (no request sent), then ``edit`` its stored
    config in place, as an older m2l would have stored it; the edited config."""
    config = load_config(path)
    stop = StopControl()
    stop.request("test: set-up only")
    await execute_run(config, env={}, stop=stop)
    with duckdb.connect(str(config.run_dir / "state.duckdb")) as conn:
        (text,) = conn.execute("SELECT value FROM run_meta WHERE key = 'config_json'").fetchone()
        stored: dict[str, Any] = orjson.loads(text)
        edit(stored)
        conn.execute(
            "UPDATE run_meta SET value = ? WHERE key = 'config_json'",
            [orjson.dumps(stored).decode()],
        )
    return stored


async def test_a_run_stored_by_an_older_m2l_resumes_without_force(tmp_path: Path) -> None:
    """Settings added to m2l since a run started (here [store]'s vacuum_tasks and export_chunk,
    taken out of its stored config) are no change on resume while they hold their defaults."""
    path = write_config(tmp_path)

    def older(stored: dict[str, Any]) -> None:
        del stored["store"]["vacuum_tasks"], stored["store"]["export_chunk"]

    await _set_up_with_stored_config(path, older)
    report = await execute_run(load_config(path), env={})
    assert report.result.status is RunStatus.FINISHED


async def test_a_content_setting_added_since_the_run_started_continues_with_force(
    tmp_path: Path,
) -> None:
    """A content setting m2l gained after a run started (here quality.check_language, taken
    out of the stored config) cannot be restored: the refusal names it as new, with advice a
    user can follow (--force, the old m2l, a new run.name), and --force continues the run."""
    path = write_config(tmp_path)
    config = load_config(path)

    def older(stored: dict[str, Any]) -> None:
        del stored["quality"]["check_language"]

    stored = await _set_up_with_stored_config(path, older)
    with duckdb.connect(str(config.run_dir / "state.duckdb")) as conn:
        conn.execute("UPDATE run_meta SET value = '0.0.1' WHERE key = 'm2l_version'")
    with pytest.raises(ConfigError) as refused:
        await execute_run(load_config(path), env={})
    message = str(refused.value)
    assert "quality.check_language: new in this m2l, at its default True" in message
    assert "--force" in message and "m2l 0.0.1" in message and "restore" not in message
    report = await execute_run(load_config(path), env={}, options=RunOptions(force=True))
    assert report.result.status is RunStatus.FINISHED, report.result.message
    # Set to something else than its default, the new key is a content change as any other.
    path.write_text(
        path.read_text().replace("[retry]", "[quality]\ncheck_language = false\n\n[retry]")
    )
    with duckdb.connect(str(config.run_dir / "state.duckdb")) as conn:
        conn.execute(
            "UPDATE run_meta SET value = ? WHERE key = 'config_json'",
            [orjson.dumps(stored).decode()],
        )
    with pytest.raises(ConfigError, match="restore the old values"):
        await execute_run(load_config(path), env={}, options=RunOptions(force=True))


async def test_transient_faults_do_not_change_the_dataset(tmp_path: Path) -> None:
    """With 500s, 503s, resets and truncated bodies injected, the conversations are the same."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    clean = load_config(write_config(tmp_path / "a"))
    await execute_run(clean, env={})
    faulty = load_config(
        write_config(
            tmp_path / "b",
            faults="server_error = 0.1\nunavailable = 0.05\nreset = 0.05\ntruncated = 0.05",
        )
    )
    report = await execute_run(faulty, env={})
    assert report.result.status is RunStatus.FINISHED
    sql = "SELECT conv_id, step, content FROM messages ORDER BY conv_id, step"
    assert rows(clean.run_dir, sql) == rows(faulty.run_dir, sql)
    errors = rows(faulty.run_dir, "SELECT count(*) FROM requests WHERE status != 'ok'")
    assert errors[0][0] > 0


async def test_exhausted_retries_fail_the_conversation_not_the_run(tmp_path: Path) -> None:
    """A request that fails on every attempt ends its conversation with the reason; the run goes
    on to the end (fewer conversations than the systematic-failure window) and, every one of
    them failed, ends as failed."""
    config = load_config(write_config(tmp_path, faults="server_error = 1.0"))
    report = await execute_run(config, env={})
    assert report.result.status is RunStatus.FAILED
    assert report.counts == {"failed": 8}
    errors = rows(config.run_dir, "SELECT DISTINCT error FROM conversations")
    assert len(errors) == 1 and str(errors[0][0]).startswith("server_error:")
    attempts = rows(config.run_dir, "SELECT count(*) FROM requests WHERE conv_id = 1")
    assert attempts == [(6,)]  # retry.max_attempts, then the conversation failed
