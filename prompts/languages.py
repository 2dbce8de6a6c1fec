"""The language table as data: English names, ISO 639 codes, script and resource tier.

Loading raises ConfigError (naming file, entry and key) when the TOML is malformed; lookups of an
unknown language raise UnknownLanguage, which is both a KeyError and a ConfigError.
"""

from __future__ import annotations

import difflib
import functools
import re
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn, cast, get_args

from engine.errors import ConfigError

__all__ = [
    "DEFAULT_LANGUAGES_PATH",
    "DEFAULT_NAMES_PATH",
    "Language",
    "LanguageTable",
    "Tier",
    "UnknownLanguage",
    "load_language_names",
    "load_languages",
]

Tier = Literal["high", "mid", "low"]
_TIERS: tuple[str, ...] = get_args(Tier)

DEFAULT_LANGUAGES_PATH = Path(__file__).parent / "data" / "languages.toml"
DEFAULT_NAMES_PATH = Path(__file__).parent / "data" / "language_names.toml"

_KEYS = frozenset({"name", "iso639_3", "iso639_1", "script", "other_scripts", "tier", "aliases"})
_ISO3 = re.compile(r"^[a-z]{3}$")
_ISO1 = re.compile(r"^[a-z]{2}$")


@dataclass(frozen=True, slots=True)
class Language:
    """One language as m2l names it: the English name is what datasets and prompts show."""

    name: str
    iso639_3: str
    iso639_1: str | None
    script: str
    tier: Tier
    aliases: tuple[str, ...] = ()
    # Other scripts the language is normally written in (Serbian in Latin, romanised Hindi):
    # text in any of them is text in the language.
    other_scripts: tuple[str, ...] = ()


class UnknownLanguage(KeyError, ConfigError):
    """A language code or name is not in the table; the message suggests close matches."""

    def __str__(self) -> str:
        # KeyError's __str__ quotes its argument as a repr; users should read a sentence.
        return str(self.args[0]) if self.args else ""


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


class LanguageTable:
    """Languages indexed by name, ISO 639-1, ISO 639-3 and alias, all case-insensitive.

    Raises ConfigError on construction when two languages claim the same name, code or alias.
    """

    __slots__ = ("_index", "_languages", "_source")

    def __init__(self, languages: Iterable[Language], *, source: Path | None = None) -> None:
        self._languages = tuple(languages)
        self._source = source
        self._index: dict[str, Language] = {}
        for lang in self._languages:
            keys = [lang.name, lang.iso639_3, *([lang.iso639_1] if lang.iso639_1 else [])]
            for key in [*keys, *lang.aliases]:
                other = self._index.get(_norm(key))
                if other is not None and other is not lang:
                    where = f"{source}: " if source else ""
                    raise ConfigError(
                        f"{where}entry {lang.name!r}: {key!r} already names {other.name!r}; "
                        "every name, code and alias must identify one language"
                    )
                self._index[_norm(key)] = lang

    def get(self, code_or_name: str) -> Language | None:
        """The language for a code, English name or alias (case-insensitive), or None."""
        key = _norm(code_or_name)
        found = self._index.get(key)
        if found is None and re.fullmatch(r"[a-z]{2,3}[-_][a-z0-9-_]+", key):
            # BCP 47 tags such as "pt-BR" or "sr-Cyrl" name the language by their first subtag.
            found = self._index.get(re.split(r"[-_]", key, maxsplit=1)[0])
        return found

    def lookup(self, code_or_name: str) -> Language:
        """The language for a code, English name or alias; raises UnknownLanguage if absent."""
        found = self.get(code_or_name)
        if found is not None:
            return found
        choices = {_norm(lang.name): lang.name for lang in self._languages}
        for lang in self._languages:
            for other in (
                lang.iso639_3,
                *([lang.iso639_1] if lang.iso639_1 else []),
                *lang.aliases,
            ):
                choices.setdefault(_norm(other), f"{other} ({lang.name})")
        close = difflib.get_close_matches(_norm(code_or_name), list(choices), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(repr(choices[c]) for c in close)}? " if close else ""
        raise UnknownLanguage(
            f"unknown language {code_or_name!r}: {hint}give an English name, an ISO 639-1 or "
            f"ISO 639-3 code from the language table ({self._source or 'built-in'}), "
            "or add the language there"
        )

    def __contains__(self, code_or_name: object) -> bool:
        return isinstance(code_or_name, str) and self.get(code_or_name) is not None

    def __iter__(self) -> Iterator[Language]:
        return iter(self._languages)

    def __len__(self) -> int:
        return len(self._languages)

    def __repr__(self) -> str:
        return f"LanguageTable({len(self)} languages from {self._source or 'memory'})"


def _fail(path: Path, entry: str, key: str, problem: str) -> NoReturn:
    raise ConfigError(f"{path}: entry {entry!r}, key {key!r}: {problem}")


def _parse_language(path: Path, position: int, raw: Any) -> Language:
    entry = f"#{position}"
    if not isinstance(raw, dict):
        _fail(path, entry, "language", "expected a [[language]] table")
    if isinstance(raw.get("name"), str):
        entry = raw["name"]
    for key in raw:
        if key not in _KEYS:
            _fail(path, entry, key, f"unknown key; allowed keys are {', '.join(sorted(_KEYS))}")
    for key in ("name", "iso639_3", "script", "tier"):
        if key not in raw:
            _fail(path, entry, key, "missing; every language needs name, iso639_3, script, tier")
        if not isinstance(raw[key], str) or not raw[key].strip():
            _fail(path, entry, key, f"expected a non-empty string, got {raw[key]!r}")
    if not _ISO3.match(raw["iso639_3"]):
        _fail(path, entry, "iso639_3", "expected three lowercase letters, e.g. 'srp'")
    iso1 = raw.get("iso639_1")
    if iso1 is not None and not (isinstance(iso1, str) and _ISO1.match(iso1)):
        _fail(path, entry, "iso639_1", "expected two lowercase letters, e.g. 'sr'; omit if none")
    if raw["tier"] not in _TIERS:
        _fail(path, entry, "tier", f"expected one of {', '.join(_TIERS)}, got {raw['tier']!r}")
    aliases = raw.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
        _fail(path, entry, "aliases", "expected a list of non-empty strings")
    others = raw.get("other_scripts", [])
    if not isinstance(others, list) or not all(isinstance(a, str) and a for a in others):
        _fail(path, entry, "other_scripts", "expected a list of script names, e.g. ['Latin']")
    return Language(
        name=raw["name"],
        iso639_3=raw["iso639_3"],
        iso639_1=iso1,
        script=raw["script"],
        tier=cast(Tier, raw["tier"]),
        aliases=tuple(aliases),
        other_scripts=tuple(others),
    )


def _read(path: Path) -> LanguageTable:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: language table not found; check the path") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc}); fix the syntax") from None
    raw = data.get("language")
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{path}: expected one or more [[language]] tables")
    return LanguageTable(
        (_parse_language(path, i, item) for i, item in enumerate(raw, 1)), source=path
    )


@functools.cache
def _read_default() -> LanguageTable:
    return _read(DEFAULT_LANGUAGES_PATH)


def load_languages(path: Path | None = None) -> LanguageTable:
    """Load the language table (the built-in one by default, cached); raises ConfigError."""
    if path is None or path.resolve() == DEFAULT_LANGUAGES_PATH.resolve():
        return _read_default()
    return _read(path)


@functools.cache
def load_language_names(
    path: Path = DEFAULT_NAMES_PATH, table: LanguageTable | None = None
) -> dict[str, tuple[str, ...]]:
    """Names of each language as instructions write them, by ISO 639-3 code (cached).

    Holds the data file's names plus every language's English name and aliases from ``table``
    (the built-in one by default). Raises ConfigError when the file is missing or malformed,
    or names a language the table does not have.
    """
    table = table or load_languages()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: language names not found; check the path") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable language names ({exc}); fix the file") from None
    raw = data.get("names", {})
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a [names] table of code = [names]")
    out: dict[str, list[str]] = {
        lang.iso639_3: [lang.name, *(a for a in lang.aliases if len(a) > 3)] for lang in table
    }
    for code, names in raw.items():
        lang = table.get(code)
        if lang is None:
            raise ConfigError(f"{path}: [names] {code!r} is not in the language table")
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise ConfigError(f"{path}: [names] {code}: expected a list of non-empty strings")
        out[lang.iso639_3].extend(names)
    return {code: tuple(dict.fromkeys(names)) for code, names in out.items()}
