"""A real provider endpoint (the simulator behind a key): fatal errors stop fast, no key leaks."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from engine.app.run import execute_run
from engine.config import load_config
from engine.scheduler import RunStatus
from engine.simulator import SimSettings, run_simulator
from tests.runfixtures import write_config

pytestmark = pytest.mark.anyio

KEY = "sk-test-" + "Zq7" * 12  # shaped like a real key, so any leak is easy to find


def provider_config(tmp_path: Path, base_url: str, *, model: str = "gpt-4o-mini") -> Path:
    path = write_config(tmp_path)
    text = path.read_text().replace('kind = "sim"', f'kind = "openai"\nbase_url = "{base_url}"')
    text = text.replace('model = "gpt-4o-mini"', f'model = "{model}"\napi_key_env = "M2L_TEST_KEY"')
    path.write_text(text)
    return path


async def test_wrong_key_stops_the_run_within_seconds(tmp_path: Path) -> None:
    """A 401 is fatal: the run stops at once, saying which variable holds the key."""
    async with run_simulator(SimSettings(require_api_key=KEY, ttft_s=0, per_token_s=0)) as sim:
        config = load_config(provider_config(tmp_path, sim.base_url))
        started = time.monotonic()
        report = await execute_run(config, env={"M2L_TEST_KEY": "sk-wrong-key-000000000000"})
    assert time.monotonic() - started < 15
    assert report.result.status is RunStatus.FAILED
    assert "401" in report.result.message and "M2L_TEST_KEY" in report.result.message
    assert "sk-wrong-key-000000000000" not in report.result.message


async def test_unknown_model_stops_the_run(tmp_path: Path) -> None:
    """A 404 for the model is fatal and names the model and the base URL."""
    settings = SimSettings(models=("gpt-4o-mini",), unknown_models_404=True, ttft_s=0)
    async with run_simulator(settings) as sim:
        config = load_config(provider_config(tmp_path, sim.base_url, model="gpt-9-nonexistent"))
        report = await execute_run(config, env={"M2L_TEST_KEY": KEY})
    assert report.result.status is RunStatus.FAILED
    assert "gpt-9-nonexistent" in report.result.message
    assert "provider.model" in report.result.message


async def test_api_key_reaches_no_file_and_no_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With a working key the run finishes, and the key is in no file it wrote and no log."""
    caplog.set_level(logging.DEBUG)
    async with run_simulator(SimSettings(require_api_key=KEY, ttft_s=0, per_token_s=0)) as sim:
        config = load_config(provider_config(tmp_path, sim.base_url))
        report = await execute_run(config, env={"M2L_TEST_KEY": KEY})
    assert report.result.status is RunStatus.FINISHED
    written = [p for p in config.run_dir.rglob("*") if p.is_file()]
    assert any(p.name == "state.duckdb" for p in written)
    for path in written:
        assert KEY.encode() not in path.read_bytes(), path
        assert b"Zq7Zq7Zq7" not in path.read_bytes(), path
    assert KEY not in caplog.text
