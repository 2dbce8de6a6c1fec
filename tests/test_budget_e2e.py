"""A USD cap on a real `m2l run` process: SIGKILLed mid-run, resumed, stopped at the cap with
the spend (from the request log and the price table) within it; a higher cap then continues."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import duckdb
import pytest

from budgets.prices import load_price_table
from engine.app.run import execute_run
from engine.config import load_config
from engine.scheduler import RunStatus
from state.requestlog import may_be_billed
from tests.runfixtures import write_config
from tests.test_crash import finish, m2l

pytestmark = pytest.mark.slow

CAP_USD = 0.004  # the whole run costs about $0.02 (`m2l estimate` says so; checked below)
FAULTS = "server_error = 0.03\nreset = 0.02\ntruncated = 0.02"


def spend_usd(run_dir: Path) -> float:
    """The run's spend recomputed here from its request log and the built-in price table:
    real usage of settled requests; the worst case of any attempt that may have been billed."""
    price = load_price_table().lookup("gpt-4o-mini")
    assert price is not None
    per_token_in = price.input_usd_per_mtok / 1e6
    per_token_out = price.output_usd_per_mtok / 1e6
    per_token_cached = price.cached_input_usd_per_mtok / 1e6
    total = 0.0
    with duckdb.connect(str(run_dir / "state.duckdb"), read_only=True) as conn:
        rows = conn.execute(
            "SELECT status, error_class, prompt_tokens, completion_tokens, cached_tokens, "
            "max_tokens FROM requests"
        ).fetchall()
    for status, error_class, prompt, completion, cached, max_tokens in rows:
        if status == "ok":
            cached = cached or 0
            total += (prompt - cached) * per_token_in + cached * per_token_cached
            total += (completion or 0) * per_token_out
        elif status == "reserved" or (status == "error" and may_be_billed(error_class)):
            total += prompt * per_token_in + max_tokens * per_token_out
    return total


def meta(run_dir: Path, key: str) -> str:
    with duckdb.connect(str(run_dir / "state.duckdb"), read_only=True) as conn:
        row = conn.execute("SELECT value FROM run_meta WHERE key = ?", [key]).fetchone()
    assert row is not None
    return str(row[0])


def statuses(run_dir: Path) -> dict[str, int]:
    with duckdb.connect(str(run_dir / "state.duckdb"), read_only=True) as conn:
        rows = conn.execute("SELECT status, count(*) FROM conversations GROUP BY 1").fetchall()
    return {str(s): int(n) for s, n in rows}


def test_cap_holds_through_sigkill_and_resume(tmp_path: Path) -> None:
    """Killed mid-run and resumed, a capped run stops with `budget_exhausted` (exit 3) and has
    spent no more than its cap; resumed with a higher cap (--force), it finishes."""
    config = write_config(
        tmp_path,
        evols_per_seed=6,
        extra=f"[budget]\nusd = {CAP_USD}",
        faults=FAULTS,
        ttft_s=0.02,
        per_token_s=0.001,
    )
    run_dir = tmp_path / "runs" / "t"

    code, output = finish(m2l("estimate", "m2l.toml", cwd=tmp_path))
    assert code == 0, output
    assert "budget: over the" in output, output  # the cap really is below the full cost

    started = time.monotonic()
    proc = m2l("run", "m2l.toml", "--quiet", cwd=tmp_path)
    while not (run_dir / "status.json").exists():
        assert time.monotonic() - started < 30, "the run never started"
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)  # reaps it and closes its pipes
    assert spend_usd(run_dir) <= CAP_USD + 1e-12

    code, output = finish(m2l("run", "m2l.toml", "--quiet", cwd=tmp_path))
    assert code == 3, output
    assert "budget" in output
    assert meta(run_dir, "status") == "budget_exhausted"
    assert spend_usd(run_dir) <= CAP_USD + 1e-12
    assert statuses(run_dir).get("pending", 0) > 0

    config.write_text(config.read_text().replace(f"usd = {CAP_USD}", "usd = 1.0"))
    code, output = finish(m2l("run", "m2l.toml", "--quiet", "--force", cwd=tmp_path))
    assert code == 0, output
    counts = statuses(run_dir)
    assert counts.get("pending", 0) == counts.get("active", 0) == 0
    assert spend_usd(run_dir) <= 1.0


@pytest.mark.anyio
async def test_a_capped_run_spends_most_of_its_cap_and_leaves_few_half_done(
    tmp_path: Path,
) -> None:
    """At the cap the run has used most of it, and few conversations are left half-done."""
    path = write_config(tmp_path, evols_per_seed=6, extra=f"[budget]\nusd = {CAP_USD}")
    report = await execute_run(load_config(path), env={})
    assert report.result.status is RunStatus.BUDGET_EXHAUSTED
    run_dir = tmp_path / "runs" / "t"
    spent = spend_usd(run_dir)
    assert CAP_USD / 2 <= spent <= CAP_USD + 1e-12
    assert statuses(run_dir).get("active", 0) <= 4
