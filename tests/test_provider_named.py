"""Every display names the provider and the model, and simulated money says it is simulated;
a USD cap on a model m2l cannot price is refused before anything is created."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from rich.console import Console

from engine.app.cli import main
from engine.app.run import execute_run
from engine.clock import MonotonicClock
from engine.config import load_config
from engine.errors import ConfigError
from engine.events import Hooks
from engine.progress import Dashboard, ProgressModel, ProgressSnapshot
from engine.progress.lines import progress_json, progress_line
from engine.progress.store import store_snapshot
from engine.progress.summary import summary_text
from engine.simulator import SimSettings, run_simulator
from tests.runfixtures import write_config

pytestmark = pytest.mark.anyio

KEY = "sk-test-" + "Pn5" * 12


def dashboard_text(s: ProgressSnapshot, width: int) -> str:
    console = Console(record=True, width=width, force_terminal=True)
    console.print(Dashboard(s))
    return console.export_text()


async def test_a_simulated_run_says_so_everywhere(tmp_path: Path) -> None:
    """Dashboard, plain and JSON lines, summary and the stored status name the simulator."""
    config = load_config(write_config(tmp_path))
    model = ProgressModel(MonotonicClock())
    await execute_run(config, env={"OPENAI_API_KEY": KEY}, hooks=Hooks([model]))
    live = model.snapshot()
    with duckdb.connect(str(config.run_dir / "state.duckdb"), read_only=True) as conn:
        stored = store_snapshot(conn)
    for s in (live, stored):
        assert (s.provider, s.model, s.simulated) == ("embedded simulator", "gpt-4o-mini", True)
        assert "gpt-4o-mini on embedded simulator" in dashboard_text(s, 100)
        assert "simulated" in dashboard_text(s, 100)
        line = progress_line(s)
        assert 'provider="embedded simulator"' in line and "model=gpt-4o-mini" in line
        assert "money=simulated" in line
        assert '"simulated":true' in progress_json(s, wall=0.0)
        summary = summary_text(s, run_dir=config.run_dir)
        assert "on embedded simulator" in summary and "simulated cost" in summary


async def test_a_real_provider_is_named_by_its_host_and_its_money_is_real(tmp_path: Path) -> None:
    """Behind a key, the provider is base_url's host and money is not labelled simulated."""
    async with run_simulator(SimSettings(require_api_key=KEY, ttft_s=0, per_token_s=0)) as sim:
        path = write_config(tmp_path)
        text = path.read_text().replace(
            'kind = "sim"', f'kind = "openai"\nbase_url = "{sim.base_url}"'
        )
        path.write_text(text.replace("[generation]", "[generation]\ntemperature = 0.7"))
        config = load_config(path)
        model = ProgressModel(MonotonicClock())
        await execute_run(config, env={"OPENAI_API_KEY": KEY}, hooks=Hooks([model]))
    s = model.snapshot()
    host = sim.base_url.split("//")[1].split("/")[0]
    assert (s.provider, s.simulated) == (host, False)
    assert f"gpt-4o-mini on {host}" in dashboard_text(s, 100)
    assert "money=real" in progress_line(s)
    assert "simulated" not in summary_text(s, run_dir=config.run_dir)


def unpriced(tmp_path: Path) -> Path:
    path = write_config(tmp_path, extra="[budget]\nusd = 1.0")
    path.write_text(path.read_text().replace('model = "gpt-4o-mini"', 'model = "llama-3-70b"'))
    return path


async def test_a_capped_run_without_a_price_is_refused_before_set_up(tmp_path: Path) -> None:
    """No run directory is created; the error gives the TOML lines that add the price."""
    config = load_config(unpriced(tmp_path))
    with pytest.raises(ConfigError, match=r'budget\.prices\."llama-3-70b"'):
        await execute_run(config, env={})
    assert not config.run_dir.exists()


def test_estimate_reports_a_missing_price_under_a_cap_as_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`m2l estimate` exits 2 with the price to add, instead of a note under the figures."""
    assert main(["estimate", str(unpriced(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert 'budget.prices."llama-3-70b"' in err


def test_estimate_names_the_provider(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The estimate's first line names the model, the simulator and that its money is not real."""
    assert main(["estimate", str(write_config(tmp_path))]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("provider: gpt-4o-mini on embedded simulator")
    assert "simulated" in first
