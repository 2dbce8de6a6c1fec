"""Whole runs on today's OpenAI models against the simulator: a reasoning model under flex, a
server that refuses max_tokens, a refusal that stops the run, and models m2l cannot price."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pytest

from budgets.prices import load_price_table
from engine.app.estimate import estimate_lines, project_run
from engine.app.modelcheck import check_model
from engine.app.pilot import run_pilot
from engine.app.run import execute_run, exit_code
from engine.config import load_config
from engine.errors import ConfigError
from engine.scheduler import RunStatus
from engine.simulator import SimSettings, run_simulator
from state.stats import RunStats, compute_stats
from tests.runfixtures import write_seeds

pytestmark = pytest.mark.anyio

KEY = "sk-" + "m2ltest" * 4  # built at run time: secret scanners look for literals


def config_file(folder: Path, provider: str, *, sim: str = "", extra: str = "") -> Path:
    write_seeds(folder / "seeds.jsonl", rows=4)
    path = folder / "m2l.toml"
    path.write_text(
        f"""
[run]
name = "t"
output_dir = "runs"
seed = 3
max_active = 8
grace_s = 5

[seeds]
file = "seeds.jsonl"

[provider]
{provider}

[generation]
max_tokens = {{ evolve = 64, answer = 128, follow_up = 64 }}

[retry]
base_delay_s = 0.01
max_delay_s = 0.05

{extra}

[sim]
seed = 11
ttft_s = 0.0
per_token_s = 0.0
jitter = 0.0
min_completion_tokens = 12
max_completion_tokens = 60
{sim}
"""
    )
    return path


def read_stats(run_dir: Path) -> RunStats:
    with duckdb.connect(str(run_dir / "state.duckdb"), read_only=True) as conn:
        return compute_stats(conn, run="t")


def rows(run_dir: Path, sql: str) -> list[tuple[object, ...]]:
    with duckdb.connect(str(run_dir / "state.duckdb"), read_only=True) as conn:
        return conn.execute(sql).fetchall()


async def test_gpt5_mini_under_flex_runs_and_accounts_reasoning_apart(tmp_path: Path) -> None:
    """gpt-5-mini, flex, low effort, with flex capacity short a third of the time: every
    conversation finishes, each request carries room for reasoning, replies are priced at flex,
    capacity refusals are neither billed nor rate limits, and stats show reasoning apart."""
    config = load_config(
        config_file(
            tmp_path,
            'kind = "sim"\nmodel = "gpt-5-mini"\nservice_tier = "flex"\nreasoning_effort = "low"',
            sim="flex_unavailable = 0.3",
            extra="[budget]\nusd = 5.0",
        )
    )
    report = await execute_run(config, env={})
    assert report.result.status is RunStatus.FINISHED
    assert set(report.counts) == {"done"}
    run_dir = config.run_dir
    ok = rows(
        run_dir,
        """SELECT count(*), min(reasoning_tokens), min(max_tokens), count(DISTINCT service_tier),
           any_value(service_tier) FROM requests WHERE status = 'ok'""",
    )[0]
    assert ok[1] is not None and int(ok[1]) >= 64  # low effort reasons 64..512 tokens
    assert int(ok[2]) >= 64 + 2048  # evolve's 64 plus the low effort's reasoning room
    assert ok[3:] == (1, "flex")
    refused = rows(
        run_dir,
        """SELECT count(*), coalesce(sum(cost_usd), 0), count(*) FILTER (WHERE status = 'ok')
           FROM requests WHERE error_class = 'capacity_unavailable'""",
    )[0]
    assert int(refused[0]) > 0 and refused[1] == 0 and refused[2] == 0
    limited = rows(run_dir, "SELECT count(*) FROM requests WHERE error_class = 'rate_limited'")
    assert limited == [(0,)]
    stats = read_stats(run_dir)
    assert stats.total.reasoning_tokens > 0
    assert 0 < stats.total.reasoning_usd < stats.total.cost_usd
    assert any("hidden reasoning" in line for line in stats.total.model_lines())
    # flex is half the standard price: the spend is what flex rates make of the usage
    (prompt, completion, cached, cost) = rows(
        run_dir,
        """SELECT sum(prompt_tokens), sum(completion_tokens), sum(cached_tokens), sum(cost_usd)
           FROM requests WHERE status = 'ok'""",
    )[0]
    flex_cost = (
        (int(prompt) - int(cached)) * 0.125 + int(cached) * 0.0125 + int(completion) * 1.0  # type: ignore[call-overload]
    ) / 1e6
    assert float(cost) == pytest.approx(flex_cost, rel=1e-6)  # type: ignore[arg-type]


async def test_a_server_refusing_max_tokens_switches_once_for_the_whole_run(
    tmp_path: Path,
) -> None:
    """A non-OpenAI server that refuses max_tokens: the run switches to max_completion_tokens
    once, records it, bills nothing for the refusals, and finishes every conversation."""
    settings = SimSettings(ttft_s=0.0, per_token_s=0.0, refuse_params=("max_tokens",))
    async with run_simulator(settings) as sim:
        provider = f'kind = "openai"\nbase_url = "{sim.base_url}"\nmodel = "gpt-4o-mini"'
        config = load_config(config_file(tmp_path, provider))
        report = await execute_run(config, env={"OPENAI_API_KEY": KEY})
    assert report.result.status is RunStatus.FINISHED
    assert set(report.counts) == {"done"}
    refused = rows(
        config.run_dir,
        """SELECT status, coalesce(cost_usd, 0) FROM requests
           WHERE error_class = 'unsupported_parameter'""",
    )
    assert refused and all(row == ("rejected", 0) for row in refused)
    meta = dict(rows(config.run_dir, "SELECT key, value FROM run_meta"))
    assert meta["adapted_params"] == '{"max_tokens":"max_completion_tokens"}'


async def test_a_refusal_every_request_meets_stops_the_run_at_once(tmp_path: Path) -> None:
    """max_tokens_param = "max_tokens" on gpt-5-mini: the run stops with exit 1 after the first
    refusals, naming the parameter and its config key, and fails no conversation for it."""
    config = load_config(
        config_file(tmp_path, 'kind = "sim"\nmodel = "gpt-5-mini"\nmax_tokens_param = "max_tokens"')
    )
    report = await execute_run(config, env={})
    assert report.result.status is RunStatus.FAILED
    assert exit_code(report.result.status) == 1
    assert "'max_tokens'" in report.result.message
    assert "provider.max_tokens_param" in report.result.message
    assert report.counts.get("failed", 0) == 0
    sent = rows(config.run_dir, "SELECT count(*) FROM requests")[0][0]
    assert isinstance(sent, int) and sent <= 8  # at most one wave of max_active, no retries


def test_an_unpriced_model_with_money_at_stake_is_refused_with_the_lines_to_add(
    tmp_path: Path,
) -> None:
    """A USD cap on a model with no price, or OpenAI's API with a model m2l does not know: a
    ConfigError with TOML to paste; with neither (a self-hosted model), no error."""
    capped = load_config(
        config_file(tmp_path, 'kind = "sim"\nmodel = "acme-9"', extra="[budget]\nusd = 1.0")
    )
    with pytest.raises(ConfigError) as info:
        check_model(capped, {})
    text = str(info.value)
    assert '[budget.prices."acme-9"]' in text and "cached_input = " in text
    assert "# flex_input" in text
    openai = load_config(config_file(tmp_path, 'kind = "openai"\nmodel = "acme-9"'))
    with pytest.raises(ConfigError) as info:
        check_model(openai, {"OPENAI_API_KEY": KEY})
    assert '[provider.capabilities."acme-9"]' in str(info.value)
    assert not (tmp_path / "runs").exists()
    local = load_config(
        config_file(
            tmp_path, 'kind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "acme-9"'
        )
    )
    assert check_model(local, {"OPENAI_API_KEY": KEY}) == []


def test_flex_on_a_model_without_flex_prices_and_a_cap_is_refused(tmp_path: Path) -> None:
    """gpt-4.1 offers no flex: asking for it is refused at load, naming the key."""
    config = load_config(
        config_file(
            tmp_path,
            'kind = "sim"\nmodel = "gpt-4.1"\nservice_tier = "flex"',
            extra="[budget]\nusd = 1.0",
        )
    )
    with pytest.raises(ConfigError, match='service_tier = "flex"'):
        check_model(config, {})


def test_the_estimate_counts_hidden_reasoning_at_flex_prices(tmp_path: Path) -> None:
    """m2l estimate on gpt-5-mini: hidden reasoning by effort, billed as output at flex prices;
    the same plan on gpt-4o-mini has none. The price table's date is given and, past six
    months, a warning."""
    reasoning = load_config(
        config_file(
            tmp_path,
            'kind = "sim"\nmodel = "gpt-5-mini"\nservice_tier = "flex"\nreasoning_effort = "low"',
        )
    )
    estimate = project_run(reasoning, simulated=False)
    assert estimate.reasoning_tokens == pytest.approx(estimate.requests * 512)
    assert estimate.price is not None
    flex = estimate.price.tiers["flex"]
    expected = (
        estimate.prompt_tokens * flex.input_usd_per_mtok
        + (estimate.completion_tokens + estimate.reasoning_tokens) * flex.output_usd_per_mtok
    ) / 1e6
    assert estimate.cost_usd == pytest.approx(expected, rel=0.01)
    lines = estimate_lines(estimate)
    assert any("hidden reasoning" in line for line in lines)
    assert any(line.startswith("price table: built-in prices as of") for line in lines)
    plain = project_run(
        load_config(config_file(tmp_path, 'kind = "sim"\nmodel = "gpt-4o-mini"')), simulated=False
    )
    assert plain.reasoning_tokens == 0
    day = load_price_table().as_of
    as_of = day.isoformat()
    assert check_model(reasoning, {}, today=day + dt.timedelta(days=30)) == []
    (warning,) = check_model(reasoning, {}, today=day + dt.timedelta(days=400))
    assert as_of in warning and "months ago" in warning


async def test_a_pilot_measures_hidden_reasoning(tmp_path: Path) -> None:
    """A pilot on gpt-5-mini reports the reasoning it measured and what it cost."""
    config = load_config(
        config_file(tmp_path, 'kind = "sim"\nmodel = "gpt-5-mini"\nreasoning_effort = "low"')
    )
    pilot = await run_pilot(config, 2, env={}, population=10)
    assert pilot.reasoning.reasoning_tokens >= 64 * pilot.requests  # low: 64..512 a reply
    assert pilot.reasoning.reasoning_usd > 0
    assert any(line.startswith("pilot hidden reasoning:") for line in pilot.lines())
