"""``[[providers]]`` entries: a bad one is refused by `m2l run` before anything is created, with
the file and the entry's key named; models that differ are refused unless said to be the same;
and a resume may add or re-weight endpoints but not change what is generated."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from engine.app.cli import main
from engine.config import config_diff, load_config
from tests.runfixtures import write_seeds

HEAD = """
[run]
name = "t"
output_dir = "runs"

[seeds]
file = "seeds.jsonl"
"""

EAST = """
[[providers]]
name = "east"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key_env = "M2L_KEY_EAST"
model = "gpt-4o-mini"
"""


def entry(name: str, *lines: str, env: str = "M2L_KEY_WEST") -> str:
    body = "\n".join(lines)
    return (
        f'\n[[providers]]\nname = "{name}"\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"'
        f'\napi_key_env = "{env}"\nmodel = "gpt-4o-mini"\n{body}\n'
    )


def write(folder: Path, text: str) -> Path:
    write_seeds(folder / "seeds.jsonl")
    path = folder / "m2l.toml"
    path.write_text(HEAD + text)
    return path


CASES: list[tuple[str, str]] = [
    (EAST + entry("east"), r"providers\[1\]\.name: is already the name of providers\[0\]"),
    (EAST + entry("west", "weight = 0"), r"providers\[1\]\.weight: must be more than 0, found 0"),
    (EAST + entry("west", "weight = -2"), r"providers\[1\]\.weight: must be more than 0"),
    (EAST + entry("we st"), r"providers\[1\]\.name: must name the endpoint .*found 'we st'"),
    (EAST + entry("west", "limits = { rpm = 0 }"), r"providers\[1\]\.limits\.rpm: must be more"),
    (
        EAST + entry("west", 'model = "gpt-4o"').replace('model = "gpt-4o-mini"\nmodel', "model"),
        r"providers\[1\]\.model: differs from providers\[0\]\.model \('gpt-4o-mini'\).*"
        r"providers\[1\]\.same_model = true, found 'gpt-4o'",
    ),
    (
        EAST + entry("west", "wieght = 2"),
        r"unknown key 'providers\[1\]\.wieght'; did you mean 'weight'\?",
    ),
    (
        '[provider]\nmodel = "gpt-4o-mini"\n' + EAST,
        r"provider: give either one \[provider\] section or \[\[providers\]\] entries",
    ),
    (
        EAST + entry("west", 'reasoning_effort = "high"'),
        r"providers\[1\]\.reasoning_effort: must be the same on every endpoint",
    ),
    # A real endpoint's key variable not set: named with its entry.
    (
        EAST + entry("west", env="M2L_KEY_NOWHERE"),
        r"providers\[1\]\.api_key_env: providers\[1\]\.kind is 'openai' but the environment "
        r"variable M2L_KEY_NOWHERE is not set",
    ),
]


@pytest.mark.parametrize(("text", "message"), CASES)
def test_a_bad_entry_is_refused_naming_file_and_key(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    text: str,
    message: str,
) -> None:
    """`m2l run` exits 2 with one line naming the file and the entry's key; nothing is made."""
    monkeypatch.setenv("M2L_KEY_EAST", "sk-east-0000")
    monkeypatch.setenv("M2L_KEY_WEST", "sk-west-0000")
    monkeypatch.delenv("M2L_KEY_NOWHERE", raising=False)
    config = write(tmp_path, text)
    code = main(["run", str(config), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{config}: " in err
    assert re.search(message, err), err
    assert "Traceback" not in err and "sk-east-0000" not in err
    assert not (tmp_path / "runs").exists()


def test_a_mix_of_real_and_simulated_endpoints_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An "auto" entry whose key is not set would be the simulator beside a real endpoint."""
    monkeypatch.setenv("M2L_KEY_EAST", "sk-east-0000")
    monkeypatch.delenv("M2L_KEY_WEST", raising=False)
    config = write(tmp_path, EAST + entry("west").replace('kind = "openai"', 'kind = "auto"'))
    assert main(["run", str(config), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "providers[1].api_key_env" in err and "M2L_KEY_WEST is not set" in err
    assert "cannot mix" in err
    assert not (tmp_path / "runs").exists()


def test_same_model_lets_a_deployment_name_differ(tmp_path: Path) -> None:
    """A deployment serving the same model under another name is accepted when said so."""
    config = load_config(
        write(tmp_path, EAST + entry("west", "same_model = true").replace("gpt-4o-mini", "dep-2"))
    )
    assert [e.model for e in config.endpoints()] == ["gpt-4o-mini", "dep-2"]
    assert config.provider.model == "gpt-4o-mini"  # the run's model: the first entry's


def test_a_single_provider_is_one_endpoint_and_snapshots_as_before(tmp_path: Path) -> None:
    """`[provider]` is one endpoint named "provider"; its stored snapshot has no providers
    key, so runs stored before [[providers]] existed resume unchanged."""
    text = '[provider]\nkind = "sim"\nmodel = "gpt-4o-mini"\n[limits]\nrpm = 100\n'
    config = load_config(write(tmp_path, text))
    (only,) = config.endpoints()
    assert (only.name, only.model, config.endpoint_limits(only).rpm) == (
        "provider",
        "gpt-4o-mini",
        100,
    )
    assert "providers" not in config.snapshot()


def snapshot(folder: Path, text: str) -> dict[str, object]:
    data = orjson.loads(orjson.dumps(load_config(write(folder, text)).snapshot()))
    assert isinstance(data, dict)
    return data


def test_resume_may_add_an_endpoint_or_change_its_weight_and_limits(tmp_path: Path) -> None:
    """Adding, removing or re-weighting an endpoint of the run's model is safe on resume;
    changing the run's model is not."""
    old = snapshot(tmp_path, EAST + entry("west"))
    added = snapshot(
        tmp_path, EAST + entry("west", "weight = 3", "limits = { rpm = 50 }") + entry("north")
    )
    assert config_diff(old, added) and all(safe for *_, safe in config_diff(old, added))
    gone = snapshot(tmp_path, EAST)
    assert all(safe for *_, safe in config_diff(old, gone))
    other = snapshot(tmp_path, (EAST + entry("west")).replace("gpt-4o-mini", "gpt-4o"))
    unsafe = [key for key, _, _, safe in config_diff(old, other) if not safe]
    assert "provider.model" in unsafe
