"""Bad config values are refused by `m2l run` before anything is created: exit 2, a message that
names the config file, the key and the allowed range, and no run directory afterwards."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from engine.app.cli import main
from tests.runfixtures import write_seeds

# A config that would run: every case below changes one thing in it.
BASE: dict[str, dict[str, str]] = {
    "run": {"name": '"t"', "output_dir": '"runs"', "grace_s": "5"},
    "seeds": {"file": '"seeds.jsonl"'},
    "provider": {"kind": '"sim"', "model": '"gpt-4o-mini"'},
    "limits": {"rpm": "6000"},
    "retry": {"base_delay_s": "0.5", "max_delay_s": "30"},
    "budget": {"usd": "5.0"},
    "sim": {"seed": "1"},
}

# (key path as written in the file, TOML value, regex the message must match after
# "<file>: "). The key path in the message is the one the user wrote.
CASES: list[tuple[str, str, str]] = [
    # The values issue 12 lists as accepted before.
    ("budget.usd", "-1", r"budget\.usd: must be more than 0 \(leave it out for no cap\), found -1"),
    ("budget.usd", "0", r"budget\.usd: must be more than 0 .*, found 0"),
    ("budget.tokens", "-100", r"budget\.tokens: must be at least 1 .*, found -100"),
    ("budget.tokens", "0", r"budget\.tokens: must be at least 1 .*, found 0"),
    ("budget.requests", "0", r"budget\.requests: must be at least 1 .*, found 0"),
    ("retry.max_attempts", "0", r"retry\.max_attempts: must be at least 1, found 0"),
    ("retry.max_attempts", "-1", r"retry\.max_attempts: must be at least 1, found -1"),
    ("retry.base_delay_s", "-1", r"retry\.base_delay_s: must be 0 or more, found -1"),
    (
        "retry.max_delay_s",
        "0.1",
        r"retry\.max_delay_s: must be at least base_delay_s \(0\.5\), found 0\.1",
    ),
    ("limits.initial_burst_s", "0", r"limits\.initial_burst_s: must be more than 0, found 0"),
    ("run.grace_s", "-5", r"run\.grace_s: must be 0 or more, found -5"),
    (
        "budget.prices",
        '{ "gpt-4o-mini" = { input = -1, output = 0.6 } }',
        r"budget\.prices\.gpt-4o-mini\.input: must be 0 or more, found -1",
    ),
    (
        "budget.prices",
        '{ "gpt-4o-mini" = { input = 0.15, output = -0.5 } }',
        r"budget\.prices\.gpt-4o-mini\.output: must be 0 or more, found -0\.5",
    ),
    (
        "budget.prices",
        '{ "gpt-4o-mini" = { input = 0.15, output = 0.6, cached_input = -1 } }',
        r"budget\.prices\.gpt-4o-mini\.cached_input: must be 0 or more, found -1",
    ),
    # Other nonsense.
    (
        "budget.prices",
        '{ "gpt-4o-mini" = { input = 0.1234567, output = 0.6 } }',
        r"budget\.prices\.gpt-4o-mini\.input: must have at most 6 decimal places",
    ),
    (
        "provider.capabilities",
        '{ "gpt-4o-mini" = { context_window = 0 } }',
        r"provider\.capabilities\.gpt-4o-mini\.context_window: must be at least 1",
    ),
    (
        "provider.capabilities",
        '{ "gpt-4o-mini" = { efforts = ["max"] } }',
        r"provider\.capabilities\.gpt-4o-mini\.efforts: takes only .*, found \['max'\]",
    ),
    ("retry.rate_limit_patience", "0", r"retry\.rate_limit_patience: must be at least 1, found 0"),
    ("retry.refused_before_fatal", "0", r"retry\.refused_before_fatal: must be at least 1"),
    ("retry.unreachable_s", "-1", r"retry\.unreachable_s: must be 0 or more, found -1"),
    ("retry.malformed_before_fatal", "0", r"retry\.malformed_before_fatal: must be at least 1"),
    ("run.systematic_failure_window", "-1", r"run\.systematic_failure_window: must be 0 or more"),
    ("provider.read_timeout_s", "-1", r"provider\.read_timeout_s: must be more than 0 .*found -1"),
    ("provider.connect_timeout_s", "0", r"provider\.connect_timeout_s: must be more than 0"),
    ("provider.total_timeout_s", "-3", r"provider\.total_timeout_s: must be more than 0"),
    ("provider.pool_size", "0", r"provider\.pool_size: must be at least 1, found 0"),
    ("provider.model", '" "', r"provider\.model: must name a model"),
    ("limits.rpm", "0", r"limits\.rpm: must be more than 0 \(leave it out for no limit\)"),
    ("limits.tpm", "-5", r"limits\.tpm: must be more than 0 .*, found -5"),
    ("limits.tpm", "inf", r"limits\.tpm: expected a finite number, found number inf"),
    ("limits.max_inflight", "0", r"limits\.max_inflight: must be at least 1 .*, found 0"),
    ("run.max_active", "0", r"run\.max_active: must be at least 1, found 0"),
    ("budget.usd", "nan", r"budget\.usd: expected a finite number"),
    ("generation.temperature", "2.5", r"generation\.temperature: must be between 0 and 2"),
    ("generation.max_regenerations", "-1", r"generation\.max_regenerations: must be 0 or more"),
    ("generation.max_tokens.answer", "0", r"generation\.max_tokens\.answer: must be at least 1"),
    ("seeds.total", "0", r"seeds\.total: must be at least 1 \(or unset\), found 0"),
    ("seeds.per_language", "0", r"seeds\.per_language: must be at least 1"),
    ("seeds.turn_weights", "[1, -1]", r"seeds\.turn_weights\[1\]: must be 0 or more, found -1"),
    ("seeds.turn_weights", "[0, 0]", r"seeds\.turn_weights: needs at least one weight above 0"),
    ("seeds.language_weights", "{ Swahili = -2 }", r"seeds\.language_weights\.Swahili: must be 0"),
    ("seeds.tier_weights", "{ top = 1 }", r"seeds\.tier_weights\.top: is not a tier"),
    ("sim.rpm", "0", r"sim\.rpm: must be at least 1 .*, found 0"),
    ("sim.jitter", "1", r"sim\.jitter: must be at least 0 and below 1, found 1"),
    ("sim.port", "70000", r"sim\.port: must be between 0 and 65535, found 70000"),
    ("sim.faults.reset", "2", r"sim\.faults\.reset: must be between 0 and 1, found 2"),
    ("sim.max_completion_tokens", "5", r"sim\.max_completion_tokens: must be at least min_"),
    # Already refused before this test existed (type errors, unknown keys, names).
    ("generation.max_turns", "9", r"generation\.max_turns: must be between 1 and 6, found 9"),
    ("limits.tpm", "'300k'", r"limits\.tpm: expected a number, found string '300k'"),
    ("limits.rmp", "100", r"unknown key 'limits\.rmp'; did you mean 'rpm'\?"),
    ("provider.kind", "'azure'", r"provider\.kind: expected 'auto' or 'sim' or 'openai'"),
    ("provider.base_url", "'api.openai.com'", r"provider\.base_url: must start with http://"),
    ("run.name", "'../x'", r"run\.name: must be a plain folder name"),
    # Internal fields are not keys of the file.
    ("source", "'elsewhere.toml'", r"unknown key 'source'"),
    ("limits.safety_margin", "0.2", r"unknown key 'limits\.safety_margin'"),
    ("retry.backoff", "false", r"unknown key 'retry\.backoff'"),
    ("sim.require_api_key", "'k'", r"unknown key 'sim\.require_api_key'"),
]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        # No price for the model while a USD cap is set: refused before set-up, not after.
        (
            {"provider.model": '"my-own-model"'},
            r"budget\.usd = 5 caps what this run may spend, but m2l has no price for model",
        ),
        # A real provider named, and its key variable unset.
        (
            {"provider.kind": '"openai"', "provider.api_key_env": '"M2L_TEST_UNSET_KEY"'},
            r"provider\.kind is 'openai' but the environment variable M2L_TEST_UNSET_KEY",
        ),
    ],
)
def test_config_refused_by_the_run_creates_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    overrides: dict[str, str],
    message: str,
) -> None:
    """Checks that need more than the file (the price table, the environment) also come before
    the run folder is made, and name the config file."""
    monkeypatch.delenv("M2L_TEST_UNSET_KEY", raising=False)
    config = write(tmp_path, overrides)
    code = main(["run", str(config), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"m2l: error: {config}: "), err
    assert re.search(message, err), err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("seeds.mapping", '"nonsense"', r"unknown column mapping 'nonsense'"),
        ("seeds.multiturn", "{ NOPE = 1.0 }", r"unknown multi-turn family 'NOPE'"),
        ("seeds.language_weights", "{ Klingon = 1.0 }", r"no conversations could be planned"),
    ],
)
def test_config_refused_at_set_up_leaves_no_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, value: str, message: str
) -> None:
    """Values only the seed file can judge are refused by set-up, which commits nothing: the
    folder it had opened goes too, so fixing the value and running again starts clean."""
    config = write(tmp_path, {key: value})
    code = main(["run", str(config), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert re.search(message, err), err
    assert not (tmp_path / "runs").exists()


def test_a_refused_resume_keeps_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A folder that existed before (a run to resume) is never removed by a refusal."""
    (tmp_path / "runs" / "t").mkdir(parents=True)
    (tmp_path / "runs" / "t" / "keep.txt").write_text("mine")
    config = write(tmp_path, {"seeds.mapping": '"nonsense"'})
    assert main(["run", str(config), "--quiet"]) == 2
    capsys.readouterr()
    assert (tmp_path / "runs" / "t" / "keep.txt").read_text() == "mine"


def render(overrides: dict[str, str]) -> str:
    """BASE with ``overrides`` (dotted key → TOML value) as a TOML document."""
    top: dict[str, str] = {}
    tables: dict[str, dict[str, str]] = {k: dict(v) for k, v in BASE.items()}
    for dotted, value in overrides.items():
        section, _, rest = dotted.partition(".")
        if not rest:
            top[section] = value
        else:
            tables.setdefault(section, {})[rest] = value
    lines = [f"{k} = {v}" for k, v in top.items()]
    for section, items in tables.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {v}" for k, v in items.items()]
    return "\n".join(lines) + "\n"


def write(folder: Path, overrides: dict[str, str]) -> Path:
    write_seeds(folder / "seeds.jsonl")
    path = folder / "m2l.toml"
    path.write_text(render(overrides))
    return path


@pytest.mark.parametrize(
    ("key", "value", "message"), CASES, ids=[f"{k}={v}"[:40] for k, v, _ in CASES]
)
def test_bad_value_is_refused_before_set_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, value: str, message: str
) -> None:
    """`m2l run` exits 2 naming the file, the key and the allowed range; no run folder exists."""
    config = write(tmp_path, {key: value})
    code = main(["run", str(config), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"m2l: error: {config}: "), err
    assert re.search(message, err), err
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_base_config_runs() -> None:
    """The base the cases change is itself valid, so each case fails for its own value only."""
    import tomllib

    from engine.config import parse_config

    data = tomllib.loads(render({}))
    data["seeds"]["file"] = __file__  # any existing file
    parse_config(data, source="base.toml", base_dir=None)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("retry.max_attempts", "0", "retry.max_attempts: must be at least 1, found 0"),
        ("budget.usd", "-1", "budget.usd: must be more than 0"),
    ],
)
def test_real_process_exits_2_and_creates_nothing(
    tmp_path: Path, key: str, value: str, message: str
) -> None:
    """The same through a real `m2l` process: exit status 2, the message on stderr, no run."""
    write(tmp_path, {key: value})
    proc = subprocess.run(
        [sys.executable, "-m", "engine.app.cli", "run", "m2l.toml", "--quiet"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2, proc.stderr
    assert f"m2l.toml: {message}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()
