"""What a language costs in tokens, as data: tokens per letter for each measured language and
script (``data/token_cost.toml``, measured by ``bench/token_cost.py`` with the real tokenizers).

A reply of the same content takes about 1.1 times the tokens of English in German, 2.6 in
Yoruba and 8 in Amharic (o200k_base), so a fixed max_tokens cuts low-resource languages first;
``TokenCosts.factor`` says how much more room a language needs than English. Loading raises
ConfigError when the file is missing or malformed.
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from engine.errors import ConfigError
from prompts.languages import Language, LanguageTable, UnknownLanguage

__all__ = ["DEFAULT_TOKEN_COST_PATH", "LanguageFactors", "TokenCosts", "load_token_costs"]

DEFAULT_TOKEN_COST_PATH = Path(__file__).parent / "data" / "token_cost.toml"
_REFERENCE = "eng"
# A factor is never above this: past it a reply is long in any language, and the ceiling of
# [quality] bounds what a truncated step may still grow to.
_MAX_FACTOR = 16.0


@dataclass(frozen=True, slots=True)
class TokenCosts:
    """Tokens per letter by ISO 639-3 code and by script, per tokenizer encoding."""

    languages: Mapping[str, Mapping[str, float]]
    scripts: Mapping[str, Mapping[str, float]]

    def factor(self, language: Language, encoding: str) -> float:
        """How many times English's tokens the same content takes in ``language`` (>= 1).

        A language never measured takes its script's average; an unmeasured script takes the
        dearest measured non-Latin script, since too little room loses a reply and too much
        only reserves rate limit.
        """
        english = self.languages.get(_REFERENCE, {}).get(encoding)
        if not english:
            return 1.0
        cost = self.languages.get(language.iso639_3, {}).get(encoding)
        if cost is None:
            cost = self.scripts.get(language.script, {}).get(encoding)
        if cost is None:
            others = [
                c[encoding] for s, c in self.scripts.items() if s != "Latin" and encoding in c
            ]
            cost = max(others, default=english)
        return min(_MAX_FACTOR, max(1.0, cost / english))


def _table(path: Path, data: object, name: str) -> dict[str, dict[str, float]]:
    section = data.get(name) if isinstance(data, dict) else None
    if not isinstance(section, dict):
        raise ConfigError(
            f"{path}: missing the [{name}] table; regenerate it with bench/token_cost.py"
        )
    out: dict[str, dict[str, float]] = {}
    for key, row in section.items():
        if not isinstance(row, dict):
            raise ConfigError(f"{path}: [{name}] {key}: expected an inline table of encodings")
        out[key] = {
            enc: float(v) for enc, v in row.items() if enc.endswith("_base") and float(v) > 0
        }
    return out


@functools.cache
def load_token_costs(path: Path = DEFAULT_TOKEN_COST_PATH) -> TokenCosts:
    """Read the token-cost table (cached per path); raises ConfigError if unreadable."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: token-cost table not found; reinstall m2l") from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable token-cost table ({exc})") from None
    return TokenCosts(_table(path, data, "language"), _table(path, data, "script"))


class LanguageFactors:
    """``TokenCosts.factor`` by language code or name for one encoding, cached; 1.0 for every
    language when scaling is off or the language is unknown (the prompter, the budget's
    projection and the estimate all size caps with it, so they agree)."""

    __slots__ = ("_costs", "_encoding", "_factors", "_languages", "enabled")

    def __init__(
        self, languages: LanguageTable, costs: TokenCosts, encoding: str, *, enabled: bool = True
    ) -> None:
        self._languages = languages
        self._costs = costs
        self._encoding = encoding
        self.enabled = enabled
        self._factors: dict[str, float] = {}

    def factor(self, code_or_name: str) -> float:
        found = self._factors.get(code_or_name)
        if found is None:
            found = 1.0
            if self.enabled:
                try:
                    language = self._languages.lookup(code_or_name)
                except UnknownLanguage:
                    language = None
                if language is not None:
                    found = self._costs.factor(language, self._encoding)
            self._factors[code_or_name] = found
        return found
