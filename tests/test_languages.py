"""The language table: coverage of the released dataset's codes, lookups and load errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import ConfigError
from prompts.languages import (
    DEFAULT_LANGUAGES_PATH,
    Language,
    LanguageTable,
    UnknownLanguage,
    load_languages,
)

# The 58 ISO 639-1 codes of the released M2Lingual data.
RELEASED_CODES = [
    "zh",
    "ne",
    "uk",
    "ja",
    "zu",
    "ku",
    "ig",
    "mg",
    "fi",
    "si",
    "id",
    "sw",
    "ar",
    "sv",
    "ru",
    "yo",
    "en",
    "ht",
    "kn",
    "ta",
    "te",
    "sq",
    "mr",
    "am",
    "wo",
    "it",
    "tr",
    "ha",
    "pl",
    "el",
    "lt",
    "ms",
    "jv",
    "sn",
    "ml",
    "ps",
    "ky",
    "es",
    "ga",
    "gu",
    "ko",
    "vi",
    "sd",
    "fa",
    "nl",
    "hu",
    "so",
    "pa",
    "bn",
    "pt",
    "da",
    "hi",
    "eu",
    "de",
    "ur",
    "su",
    "xh",
    "fr",
]


def test_released_code_list_is_58_distinct_codes() -> None:
    """The constant this file checks against really is the issue's list of 58 codes."""
    assert len(set(RELEASED_CODES)) == len(RELEASED_CODES) == 58


def test_table_has_at_least_70_languages() -> None:
    """The built-in table lists at least 70 languages."""
    assert len(load_languages()) >= 70


def test_table_covers_every_released_code() -> None:
    """Every ISO 639-1 code of the released data resolves to a language with that code."""
    table = load_languages()
    missing = [code for code in RELEASED_CODES if table.get(code) is None]
    assert missing == []
    assert all(table.lookup(code).iso639_1 == code for code in RELEASED_CODES)


def test_entries_are_well_formed_and_unique() -> None:
    """Each language has a 3-letter code, an optional 2-letter code, a script and a known tier."""
    langs = list(load_languages())
    assert len({lang.iso639_3 for lang in langs}) == len(langs)
    assert len({lang.name for lang in langs}) == len(langs)
    for lang in langs:
        assert len(lang.iso639_3) == 3 and lang.iso639_3.islower()
        assert lang.iso639_1 is None or (len(lang.iso639_1) == 2 and lang.iso639_1.islower())
        assert lang.script and lang.tier in {"high", "mid", "low"}
    assert {lang.tier for lang in langs} == {"high", "mid", "low"}


@pytest.mark.parametrize(
    ("query", "name", "iso3", "iso1"),
    [
        ("sr", "Serbian", "srp", "sr"),
        ("SRP", "Serbian", "srp", "sr"),
        ("serbian", "Serbian", "srp", "sr"),
        ("Serbian (Cyrillic)", "Serbian", "srp", "sr"),
        ("ary", "Moroccan Arabic", "ary", None),
        ("moroccan arabic", "Moroccan Arabic", "ary", None),
        ("fa", "Persian", "pes", "fa"),
        ("Farsi", "Persian", "pes", "fa"),
        ("fas", "Persian", "pes", "fa"),
        ("arb", "Arabic", "arb", "ar"),
        ("ara", "Arabic", "arb", "ar"),
        ("swa", "Swahili", "swh", "sw"),
        ("npi", "Nepali", "npi", "ne"),
        ("Punjabi (Gurmukhi)", "Punjabi", "pan", "pa"),
        ("  Haitian   Creole ", "Haitian Creole", "hat", "ht"),
        ("pt-BR", "Portuguese", "por", "pt"),
        ("zh_Hans", "Chinese", "zho", "zh"),
    ],
)
def test_lookup_by_code_name_or_alias(query: str, name: str, iso3: str, iso1: str | None) -> None:
    """Codes, English names and aliases resolve case-insensitively to the same language."""
    lang = load_languages().lookup(query)
    assert (lang.name, lang.iso639_3, lang.iso639_1) == (name, iso3, iso1)


def test_scripts_of_languages_written_in_two_scripts_elsewhere() -> None:
    """Serbian is Cyrillic, Punjabi Gurmukhi and Moroccan Arabic Arabic script in this table."""
    table = load_languages()
    assert table.lookup("sr").script == "Cyrillic"
    assert table.lookup("pa").script == "Gurmukhi"
    assert table.lookup("ary").script == "Arabic"


def test_unknown_language_suggests_close_names() -> None:
    """An unknown name raises UnknownLanguage, a KeyError and ConfigError, saying 'did you mean'."""
    with pytest.raises(UnknownLanguage) as info:
        load_languages().lookup("Serbain")
    assert isinstance(info.value, KeyError) and isinstance(info.value, ConfigError)
    assert "did you mean" in str(info.value) and "'Serbian'" in str(info.value)
    assert str(info.value).startswith("unknown language 'Serbain'")


def test_get_returns_none_and_contains_is_false_for_unknown() -> None:
    """get() returns None rather than raising, and `in` agrees with it."""
    table = load_languages()
    assert table.get("klingon") is None
    assert "klingon" not in table and "yo" in table


def test_default_table_is_cached() -> None:
    """Loading the built-in table twice returns the same object."""
    assert load_languages() is load_languages(DEFAULT_LANGUAGES_PATH)


def test_custom_table_loads_from_a_path(tmp_path: Path) -> None:
    """A user's own table file is read instead of the built-in one."""
    path = tmp_path / "langs.toml"
    path.write_text(
        '[[language]]\nname = "Esperanto"\niso639_1 = "eo"\niso639_3 = "epo"\n'
        'script = "Latin"\ntier = "low"\naliases = ["Lingvo Internacia"]\n',
        encoding="utf-8",
    )
    table = load_languages(path)
    assert len(table) == 1
    assert table.lookup("lingvo internacia") == Language(
        "Esperanto", "epo", "eo", "Latin", "low", ("Lingvo Internacia",)
    )


GOOD = 'name = "Esperanto"\niso639_3 = "epo"\nscript = "Latin"\ntier = "low"\n'


@pytest.mark.parametrize(
    ("body", "key", "words"),
    [
        (GOOD.replace('tier = "low"', 'tier = "tiny"'), "tier", "high, mid, low"),
        (GOOD.replace('script = "Latin"\n', ""), "script", "missing"),
        (GOOD.replace('"epo"', '"EPO1"'), "iso639_3", "three lowercase letters"),
        (GOOD + "iso639_1 = 7\n", "iso639_1", "two lowercase letters"),
        (GOOD + 'family = "constructed"\n', "family", "unknown key"),
        (GOOD + 'aliases = "Eo"\n', "aliases", "list of non-empty strings"),
    ],
)
def test_malformed_language_names_file_entry_and_key(
    tmp_path: Path, body: str, key: str, words: str
) -> None:
    """Each malformed entry is reported with the file, the entry and the key at fault."""
    path = tmp_path / "langs.toml"
    path.write_text("[[language]]\n" + body, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_languages(path)
    message = str(info.value)
    assert "langs.toml" in message and f"key {key!r}" in message and words in message
    assert "'Esperanto'" in message


def test_two_languages_claiming_one_code_is_an_error() -> None:
    """A code or alias that names two languages is rejected when the table is built."""
    a = Language("Alpha", "aaa", "aa", "Latin", "low")
    b = Language("Beta", "bbb", None, "Latin", "low", aliases=("aa",))
    with pytest.raises(ConfigError, match=r"'aa' already names 'Alpha'"):
        LanguageTable([a, b])


def test_bad_toml_and_missing_file_are_config_errors(tmp_path: Path) -> None:
    """Broken TOML and a missing file raise ConfigError naming the path."""
    broken = tmp_path / "broken.toml"
    broken.write_text('[[language]]\nname = "Esperanto\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"broken\.toml: invalid TOML"):
        load_languages(broken)
    with pytest.raises(ConfigError, match=r"nope\.toml: language table not found"):
        load_languages(tmp_path / "nope.toml")
