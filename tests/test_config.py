"""Config loading: typed values, and errors that name the file, the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import Config, QualityConfig, config_defaults, config_diff, load_config
from engine.errors import ConfigError

GOOD = """
[run]
name = "t"
[seeds]
file = "seeds.jsonl"
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "seeds.jsonl").write_text('{"inputs": "x", "language": "English"}\n')
    path = tmp_path / "m2l.toml"
    path.write_text(text)
    return path


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    """Only run.name and seeds.file are required; paths in the file resolve against its folder,
    and the default output folder is ./runs where m2l is started."""
    config = load_config(write(tmp_path, GOOD))
    assert config.run.name == "t"
    assert config.seeds.file == tmp_path / "seeds.jsonl"
    assert config.provider.kind == "auto"
    assert config.generation.max_turns == 6
    assert config.run_dir == Path("runs") / "t"
    moved = load_config(write(tmp_path, GOOD.replace('"t"', '"t"\noutput_dir = "out"')))
    assert moved.run_dir == tmp_path / "out" / "t"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("[limits]\ntpm = '300k'", r"limits\.tpm: expected a number, found string '300k'"),
        ("[limits]\nrmp = 100", r"unknown key 'limits\.rmp'; did you mean 'rpm'\?"),
        ("[provider]\nkind = 'azure'", r"provider\.kind: expected 'auto' or 'sim' or 'openai'"),
        ("[generation]\nmax_turns = 9", r"generation\.max_turns: must be between 1 and 6, found 9"),
        ("[generation.max_tokens]\nanswr = 5", r"did you mean 'answer'"),
        ("[provider]\nheaders = { Authorization = 'Bearer x' }", "api_key_env"),
        ("[limits]\nmax_inflight = true", r"limits\.max_inflight: expected an integer"),
        ("[seeds]\nturn_weights = [1, 'a']", r"seeds\.turn_weights\[1\]: expected a number"),
        ("[bogus]\nx = 1", r"unknown key 'bogus'"),
        ("[provider]\nbase_url = 'api.openai.com'", "must start with http"),
        ("[run]\nname = '../x'", "plain folder name"),
        ("[quality]\nkeep_partal = false", r"unknown key 'quality\.keep_partal'; did you mean"),
        ("[quality]\nmax_ngram_repeat_ratio = 1.5", r"\[quality\]: max_ngram_repeat_ratio = 1\.5"),
        ("[quality]\nmax_tokens_growth = 1.0", r"\[quality\]: max_tokens_growth = 1\.0"),
        ("[quality]\ncheck_language = 'no'", r"quality\.check_language: expected true or false"),
        ("[quality]\nmax_tokens_ceiling = 4", r"max_tokens_ceiling = 4: expected 16"),
        (
            "[generation.adaptive_max_tokens]\nmax_redone_share = 0.9",
            r"generation\.adaptive_max_tokens\.max_redone_share: must be between",
        ),
        (
            "[generation.adaptive_max_tokens]\nmin_samples = 100\nwindow = 50",
            r"generation\.adaptive_max_tokens\.window: must be at least min_samples \(100\)",
        ),
        (
            "[generation.adaptive_max_tokens]\ngroup_by = 'country'",
            r"generation\.adaptive_max_tokens\.group_by: expected 'language' or 'script'",
        ),
    ],
)
def test_bad_configs(tmp_path: Path, extra: str, message: str) -> None:
    """Each mistake gets a message naming the file and the key path."""
    text = GOOD + extra if not extra.startswith(("[run]", "[seeds]")) else extra
    if extra.startswith("[run]"):
        text = extra + "\n[seeds]\nfile = 'seeds.jsonl'\n"
    if extra.startswith("[seeds]"):
        text = "[run]\nname = 't'\n" + extra + "\nfile = 'seeds.jsonl'\n"
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_syntax_error_names_file(tmp_path: Path) -> None:
    """Broken TOML says so, with the parser's line and column."""
    path = write(tmp_path, "[run\nname = 1")
    with pytest.raises(ConfigError, match=r"not valid TOML.*line 1"):
        load_config(path)


def test_missing_required_key(tmp_path: Path) -> None:
    """A missing required section is named."""
    path = write(tmp_path, "[run]\nname = 't'\n")
    with pytest.raises(ConfigError, match="needs the key"):
        load_config(path)


def test_missing_seed_file(tmp_path: Path) -> None:
    """A seeds.file that does not exist is named, with a pointer to the bundled sample."""
    path = write(tmp_path, "[run]\nname = 't'\n[seeds]\nfile = 'nope.jsonl'\n")
    with pytest.raises(ConfigError, match=r"seeds\.file: .*nope\.jsonl does not exist"):
        load_config(path)


def test_missing_config_file(tmp_path: Path) -> None:
    """A config path that does not exist is named."""
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.toml")


def test_api_key_comes_from_environment_and_hides(tmp_path: Path) -> None:
    """The key is read from the named variable, never stored, and its repr hides it."""
    config = load_config(write(tmp_path, GOOD + "[provider]\napi_key_env = 'MY_KEY'\n"))
    assert config.uses_simulator({})
    secret = config.api_key({"MY_KEY": "sk-" + "abc" * 8})  # a fake, built so no scan sees a key
    assert secret is not None and secret.reveal().startswith("sk-")
    assert "sk-" not in repr(secret) and "sk-" not in str(secret)
    assert "sk-" not in str(config.snapshot())
    assert not config.uses_simulator({"MY_KEY": "sk-x"})


def test_openai_kind_without_key_is_an_error(tmp_path: Path) -> None:
    """kind = 'openai' with no key set tells the user which variable to export."""
    config = load_config(write(tmp_path, GOOD + "[provider]\nkind = 'openai'\n"))
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        config.api_key({})


def test_config_diff_classifies_safe_and_content_changes(tmp_path: Path) -> None:
    """Limit changes are safe on resume; a model change alters content."""
    old = load_config(write(tmp_path, GOOD)).snapshot()
    new_config: Config = load_config(
        write(tmp_path, GOOD + "[limits]\nrpm = 10\n[provider]\nmodel = 'gpt-4.1'\n")
    )
    diffs = {key: safe for key, _old, _new, safe in config_diff(old, new_config.snapshot())}
    assert diffs == {"limits.rpm": True, "provider.model": False}


def test_hash_is_stable(tmp_path: Path) -> None:
    """The same config hashes the same; a change changes the hash."""
    a = load_config(write(tmp_path, GOOD))
    b = load_config(write(tmp_path, GOOD))
    c = load_config(write(tmp_path, GOOD + "[limits]\nrpm = 5\n"))
    assert a.hash() == b.hash() != c.hash()


def test_sim_capacity_is_set_in_the_sim_section(tmp_path: Path) -> None:
    """[sim] takes the server-capacity model; changing it on resume is not a content change,
    and an impossible value names the key."""
    config = load_config(write(tmp_path, GOOD + "[sim]\nslots = 8\nqueue_limit = 16\n"))
    assert (config.sim.slots, config.sim.batch_slowdown, config.sim.queue_limit) == (8, 1.5, 16)
    assert load_config(write(tmp_path, GOOD)).sim.slots is None
    diff = config_diff({"sim": {"slots": 8}}, {"sim": {"slots": 1}})
    assert diff == [("sim.slots", 8, 1, True)]
    with pytest.raises(ConfigError, match="slots"):
        load_config(write(tmp_path, GOOD + "[sim]\nslots = 0\n"))


def test_quality_section_is_read_and_every_key_is_documented(tmp_path: Path) -> None:
    """[quality] keys load into QualityConfig, and the README lists every one of them."""
    text = GOOD + "[quality]\nkeep_partial = false\nmax_tokens_ceiling = 2048\n"
    config = load_config(write(tmp_path, text))
    assert config.quality.keep_partial is False and config.quality.max_tokens_ceiling == 2048
    assert config.quality.check_language is True
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Quality checks", 1)[1].split("\n## ", 1)[0]
    for name in QualityConfig.field_names():
        assert f"`{name}`" in section, f"quality.{name} is not in the README"


def test_max_inflight_is_auto_by_default_and_a_number_is_a_fixed_cap(tmp_path: Path) -> None:
    """limits.max_inflight defaults to "auto" (adaptive); a number stays a fixed cap; anything
    else names the key and what it may be."""
    auto = load_config(write(tmp_path, GOOD)).limits
    assert (auto.max_inflight, auto.adaptive, auto.fixed_inflight) == ("auto", True, None)
    fixed = load_config(write(tmp_path, GOOD + "[limits]\nmax_inflight = 4\n")).limits
    assert (fixed.adaptive, fixed.fixed_inflight) == (False, 4)
    with pytest.raises(ConfigError, match=r"limits\.max_inflight: expected an integer or 'auto'"):
        load_config(write(tmp_path, GOOD + '[limits]\nmax_inflight = "fast"\n'))
    with pytest.raises(ConfigError, match=r"limits\.max_inflight: must be at least 1"):
        load_config(write(tmp_path, GOOD + "[limits]\nmax_inflight = 0\n"))


def test_a_setting_added_after_a_run_started_is_no_change_at_its_default(tmp_path: Path) -> None:
    """A run stored before [store] had vacuum_tasks and export_chunk resumes without --force
    when they hold their defaults; set otherwise, or a content key, they are still changes."""
    stored = load_config(write(tmp_path, GOOD)).snapshot()
    del stored["store"]["vacuum_tasks"], stored["store"]["export_chunk"]
    del stored["quality"]["check_language"]
    now = load_config(write(tmp_path, GOOD)).snapshot()
    defaults = config_defaults()
    assert config_diff(stored, now, defaults=defaults) == [
        ("quality.check_language", None, True, False)
    ]
    chunked = load_config(write(tmp_path, GOOD + "[store]\nexport_chunk = 500\n")).snapshot()
    assert ("store.export_chunk", None, 500, True) in config_diff(
        stored, chunked, defaults=defaults
    )
    # Without defaults every added key is a change, as before.
    assert ("store.vacuum_tasks", None, 0, True) in config_diff(stored, now)
