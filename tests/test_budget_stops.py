"""Every way a run stops at its budget says which cap to raise and the exact command that
continues: a USD cap, a token cap, a projected overrun, a cap reached during retries, and batch
mode; the summary, `m2l status` and `m2l run`'s last line agree."""

from __future__ import annotations

import shlex
from pathlib import Path

import anyio
import pytest
from rich.console import Console

from engine.app.run import execute_run
from engine.app.status import show_status
from engine.config import load_config
from engine.progress.store import read_store
from engine.progress.summary import next_steps
from engine.scheduler import RunStatus
from tests.runfixtures import write_config
from tests.test_batch_run import batch_config
from tests.test_crash import finish, m2l


async def stopped_at_budget(path: Path, cap: str) -> None:
    """Run the config; it must stop at the budget and every display must name ``cap`` and the
    exact command that continues."""
    config = load_config(path)
    report = await execute_run(config, env={})
    assert report.result.status is RunStatus.BUDGET_EXHAUSTED, report.result
    assert cap in report.result.message
    command = f"m2l run {shlex.quote(str(await anyio.Path(path).resolve()))} --force"
    # The end summary, from the store as the run wrote it.
    snapshot = read_store(config.run_dir / "state.duckdb")
    assert snapshot.state == "budget_exhausted" and cap in snapshot.message
    step = next(s for s in next_steps(snapshot, run_dir=config.run_dir) if "budget" in s)
    assert f"raise {cap} in " in step and step.endswith(command), step
    # `m2l status` from another terminal, after the run ended.
    console = Console(record=True, width=400)
    assert show_status(config.run_dir, as_json=False, console=console) == 0
    shown = console.export_text()
    assert f"raise {cap} in " in shown and command in shown, shown


@pytest.mark.anyio
async def test_a_usd_cap(tmp_path: Path) -> None:
    """The USD cap reached by a request's worst case names budget.usd."""
    await stopped_at_budget(
        write_config(tmp_path, evols_per_seed=4, extra="[budget]\nusd = 0.0005"), "budget.usd"
    )


@pytest.mark.anyio
async def test_a_token_cap(tmp_path: Path) -> None:
    """A token cap names budget.tokens, not budget.usd."""
    await stopped_at_budget(
        write_config(tmp_path, evols_per_seed=4, extra="[budget]\ntokens = 3000"), "budget.tokens"
    )


@pytest.mark.anyio
async def test_a_projected_overrun_before_anything_was_sent(tmp_path: Path) -> None:
    """A cap below one conversation's projected cost refuses the first one, naming the cap."""
    path = write_config(tmp_path, extra="[budget]\nusd = 0.00002")
    await stopped_at_budget(path, "budget.usd")
    assert read_store(tmp_path / "runs" / "t" / "state.duckdb").requests_sent == 0


@pytest.mark.anyio
async def test_a_cap_reached_during_retries(tmp_path: Path) -> None:
    """Half the requests fail with a 500: the cap is met by a retry, and the stop says so."""
    path = write_config(
        tmp_path,
        evols_per_seed=4,
        faults="server_error = 0.5",
        extra="[budget]\nusd = 0.001",
    )
    await stopped_at_budget(path, "budget.usd")
    assert read_store(tmp_path / "runs" / "t" / "state.duckdb").retries > 0


@pytest.mark.anyio
async def test_batch_mode(tmp_path: Path) -> None:
    """In batch mode the cap that shrinks the last batch also ends the run with the command."""
    await stopped_at_budget(batch_config(tmp_path, extra="[budget]\nusd = 0.0005\n"), "budget.usd")


def test_the_cli_prints_the_command_that_continues(tmp_path: Path) -> None:
    """`m2l run` ends with exit 3 and a line naming the cap and `m2l run CONFIG --force`."""
    path = write_config(tmp_path, evols_per_seed=4, extra="[budget]\ntokens = 3000")
    code, output = finish(m2l("run", "m2l.toml", "--progress", "quiet", cwd=tmp_path))
    assert code == 3, output
    assert "raise budget.tokens in m2l.toml, then continue with: m2l run m2l.toml --force" in (
        output
    ), output
    assert path.exists()
