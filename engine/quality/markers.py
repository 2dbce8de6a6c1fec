"""Leaked markers: prompt-template text, chat tokens, AI disclaimers, placeholders, role labels,
and output labels ("New instruction:", "Maagizo mapya:") in each supported language.

Loading raises ConfigError naming the file, the key and the problem; matching never raises.
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from engine.errors import ConfigError
from engine.quality.text import normalize_for_match, normalize_lines, prose

__all__ = [
    "DEFAULT_MARKERS_PATH",
    "MarkerKind",
    "MarkerMatch",
    "Markers",
    "default_markers",
    "load_markers",
]

DEFAULT_MARKERS_PATH = Path(__file__).parent / "markers.toml"

MarkerKind = Literal["template", "disclaimer", "placeholder", "role_label", "label"]
_LISTS = ("template", "disclaimers", "placeholders", "role_labels", "labels")


@dataclass(frozen=True, slots=True)
class MarkerMatch:
    """A leaked marker: what kind it is and the text that matched (as folded for matching)."""

    kind: MarkerKind
    text: str


class Markers:
    """The four marker lists compiled into matchers over folded, code-free text."""

    __slots__ = (
        "_disclaimer",
        "_label",
        "_placeholder",
        "_role",
        "_template",
        "disclaimers",
        "labels",
        "placeholders",
        "role_labels",
        "template",
    )

    def __init__(
        self,
        *,
        template: Iterable[str] = (),
        disclaimers: Iterable[str] = (),
        placeholders: Iterable[str] = (),
        role_labels: Iterable[str] = (),
        labels: Iterable[str] = (),
    ) -> None:
        self.template = tuple(template)
        self.labels = tuple(labels)
        self.disclaimers = tuple(disclaimers)
        self.placeholders = tuple(placeholders)
        self.role_labels = tuple(role_labels)
        self._template = _alternation(self.template, prefix="")
        # A disclaimer opens a sentence or clause ("However, as an AI language model"); "acts
        # as a language model" inside an honest answer about LLMs is no leak.
        self._disclaimer = _alternation(self.disclaimers, prefix=r"(?:^|[.!?:;,\n]\s*)")
        self._placeholder = _alternation(self.placeholders, prefix=r"\{\{?\s*", suffix=r"\s*\}\}?")
        # Optional markdown emphasis, quote marks and bullets around the label, then a colon.
        self._role = _alternation(self.role_labels, prefix=r"(?m)^[ \t>*_#-]*", suffix=r"[*_ \t]*:")
        # An output label opens the text or a line, then a colon: "**Maagizo mapya:**".
        self._label = _alternation(self.labels, prefix=r"(?m)^[ \t>*_#-]*", suffix=r"[*_ \t]*[:：]")

    def with_extra(self, phrases: Iterable[str]) -> Markers:
        """A copy with ``phrases`` added to the template list."""
        extra = tuple(phrases)
        if not extra:
            return self
        return Markers(
            template=self.template + extra,
            disclaimers=self.disclaimers,
            placeholders=self.placeholders,
            role_labels=self.role_labels,
            labels=self.labels,
        )

    def find(
        self,
        text: str,
        *,
        role_labels: bool = True,
        labels: bool = True,
        folded_lines: str | None = None,
    ) -> MarkerMatch | None:
        """The first leaked marker in ``text`` outside code, or None.

        ``labels``: look for output labels too (they matter in instructions, which must be the
        text itself; a reply may well say "Follow-up question:"). ``folded_lines``: the
        ``normalize_lines`` of the text's ``prose``, when the caller has it
        (engine.quality.analysis).
        """
        # Lines are folded apart so that role labels stay at line starts.
        folded = normalize_lines(prose(text)) if folded_lines is None else folded_lines
        checks: tuple[tuple[MarkerKind, re.Pattern[str] | None], ...] = (
            ("template", self._template),
            ("label", self._label if labels else None),
            ("disclaimer", self._disclaimer),
            ("placeholder", self._placeholder),
            ("role_label", self._role if role_labels else None),
        )
        for kind, pattern in checks:
            found = pattern.search(folded) if pattern is not None else None
            if found is not None:
                hit = found.group("marker")
                return MarkerMatch(kind, f"{{{hit}}}" if kind == "placeholder" else hit)
        return None

    def __repr__(self) -> str:
        sizes = (len(self.template), len(self.disclaimers), len(self.placeholders))
        return (
            f"Markers({sizes[0]} template, {sizes[1]} disclaimers, {sizes[2]} placeholders, "
            f"{len(self.labels)} labels)"
        )


def _alternation(
    phrases: Iterable[str], *, prefix: str, suffix: str = ""
) -> re.Pattern[str] | None:
    folded = {normalize_for_match(p) for p in phrases} - {""}
    if not folded:
        return None
    # Longest first, so that the most specific phrase is the one reported.
    body = "|".join(re.escape(p) for p in sorted(folded, key=len, reverse=True))
    return re.compile(f"{prefix}(?P<marker>{body}){suffix}")


def load_markers(path: Path | None = None) -> Markers:
    """Read marker lists from TOML (keys: template, disclaimers, placeholders, role_labels).

    Raises ConfigError naming the file and key when the file is missing or malformed.
    """
    if path is None:
        return default_markers()
    return _read(path)


@functools.cache
def default_markers() -> Markers:
    """The bundled marker lists, read once."""
    return _read(DEFAULT_MARKERS_PATH)


def _read(path: Path) -> Markers:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: marker list not found; check the path") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc}); fix the syntax") from None
    unknown = set(data) - set(_LISTS)
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(_LISTS)}"
        )
    lists: dict[str, tuple[str, ...]] = {}
    for key in _LISTS:
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{path}: {key} must be a list of non-empty strings")
        lists[key] = tuple(value)
    return Markers(
        template=lists["template"],
        disclaimers=lists["disclaimers"],
        placeholders=lists["placeholders"],
        role_labels=lists["role_labels"],
        labels=lists["labels"],
    )
