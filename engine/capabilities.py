"""Model capabilities as data (``capabilities.toml``): which models reason, what they accept.

A vocabulary module: it imports nothing of m2l but errors. ``load_capabilities`` reads the table
in the package; ``CapabilityOverride`` is the config's per-model override (``[provider.
capabilities."name"]``), checked where it is defined. Raises ConfigError for a malformed table.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import importlib.resources
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from engine._typed_toml import Invalid, at_least
from engine.errors import ConfigError

__all__ = [
    "EFFORTS",
    "Capabilities",
    "CapabilityOverride",
    "CapabilityTable",
    "load_capabilities",
    "model_key",
]

# Every reasoning_effort value OpenAI has used, least to most; a model takes a subset.
EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
_FIELDS = frozenset(
    {"reasoning", "temperature", "top_p", "context_window", "max_output", "efforts", "flex"}
)
# A dated snapshot: o3-2025-04-16, gpt-4-0613 (the same rule as the price table's).
_SNAPSHOT = re.compile(r"^(?P<base>.+?)-(?:\d{4}-\d{2}-\d{2}|\d{4})$")


def model_key(model: str) -> str:
    """The table key of a model name: lower case, without a router's "openai/" prefix."""
    return model.strip().lower().rsplit("/", 1)[-1]


def _check_efforts(efforts: tuple[str, ...], where: str) -> None:
    unknown = [e for e in efforts if e not in EFFORTS]
    if unknown:
        raise ConfigError(
            f"{where}: unknown reasoning_effort value(s) {unknown}; known: {', '.join(EFFORTS)}"
        )


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What one model accepts; ``origin`` says which entry (or the fallback) it came from."""

    model: str
    reasoning: bool = False
    temperature: bool = True  # takes a temperature other than the default 1
    top_p: bool = True
    context_window: int = 128_000
    max_output: int = 16_384
    efforts: tuple[str, ...] = ()  # reasoning_effort values taken; () = never send it
    flex: bool = False  # offers service_tier = "flex"
    origin: str = "built-in table"

    def __post_init__(self) -> None:
        if self.context_window < 2 or self.max_output < 1:
            raise ConfigError(
                f"capabilities of {self.model!r} ({self.origin}): context_window must be >= 2 "
                f"and max_output >= 1, got {self.context_window} and {self.max_output}"
            )
        _check_efforts(self.efforts, f"capabilities of {self.model!r} ({self.origin})")


@dataclass(frozen=True, slots=True)
class CapabilityOverride:
    """One model's capabilities set in the run's config; unset fields keep the table's."""

    reasoning: bool | None = None
    temperature: bool | None = None
    top_p: bool | None = None
    context_window: int | None = None
    max_output: int | None = None
    efforts: tuple[str, ...] | None = None
    flex: bool | None = None

    def __post_init__(self) -> None:
        for name in ("context_window", "max_output"):
            at_least(self, name, 1, unset=" (leave it out for the table's)")
        if self.efforts is not None:
            unknown = [e for e in self.efforts if e not in EFFORTS]
            if unknown:
                raise Invalid("efforts", f"takes only {', '.join(EFFORTS)}", unknown)

    def apply(self, base: Capabilities, model: str) -> Capabilities:
        changes = {
            name: getattr(self, name) for name in sorted(_FIELDS) if getattr(self, name) is not None
        }
        reasoning = changes.get("reasoning", base.reasoning)
        if reasoning and not base.reasoning:
            # A model declared reasoning takes no sampling settings unless said otherwise.
            changes.setdefault("temperature", False)
            changes.setdefault("top_p", False)
        origin = "config provider.capabilities"
        return replace(base, model=model_key(model), origin=origin, **changes)


@dataclass(frozen=True, slots=True)
class CapabilityTable:
    """The built-in capabilities: models by name, families by pattern, reasoning room by effort."""

    models: Mapping[str, Capabilities]
    families: tuple[tuple[str, Capabilities], ...]
    reasoning_room: Mapping[str, int]
    as_of: dt.date
    reasoning_expected: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    def lookup(self, model: str) -> Capabilities | None:
        """The entry for ``model``: exact, dated snapshot, then family pattern; None if unknown."""
        key = model_key(model)
        found = self.models.get(key)
        if found is None and (match := _SNAPSHOT.match(key)) is not None:
            found = self.models.get(match.group("base"))
        if found is None:
            for pattern, caps in self.families:
                if fnmatch.fnmatchcase(key, pattern):
                    return replace(caps, model=key)
        return found

    def resolve(
        self, model: str, overrides: Mapping[str, CapabilityOverride] | None = None
    ) -> Capabilities | None:
        """The capabilities the run uses: the table's entry with the config's override applied."""
        override = None
        for name, value in (overrides or {}).items():
            if model_key(name) == model_key(model):
                override = value
        base = self.lookup(model)
        if override is None:
            return base
        return override.apply(base or Capabilities(model_key(model), origin="config"), model)

    def expected(self, effort: str | None) -> int:
        """Reasoning tokens a reply is assumed to spend at ``effort``, where none was measured."""
        table = self.reasoning_expected
        return table.get(effort or "medium", table.get("medium", 0))

    def room(self, effort: str | None) -> int:
        """Tokens of room a reply's hidden reasoning gets at ``effort`` (None: the default)."""
        return self.reasoning_room.get(effort or "medium", self.reasoning_room.get("medium", 0))


def _capabilities(name: str, raw: Any, where: str) -> Capabilities:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {name!r} must be a table")
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise ConfigError(f"{where}: {name!r} has unknown keys {unknown}; known: {sorted(_FIELDS)}")
    reasoning = bool(raw.get("reasoning", False))
    return Capabilities(
        model=model_key(name),
        reasoning=reasoning,
        temperature=bool(raw.get("temperature", not reasoning)),
        top_p=bool(raw.get("top_p", not reasoning)),
        context_window=int(raw.get("context_window", 128_000)),
        max_output=int(raw.get("max_output", 16_384)),
        efforts=tuple(raw.get("efforts", ())),
        flex=bool(raw.get("flex", False)),
        origin=f"built-in table ({where})",
    )


def load_capabilities(text: str | None = None) -> CapabilityTable:
    """The capability table (the package's ``capabilities.toml`` by default); ConfigError."""
    where = "engine/capabilities.toml"
    if text is None:
        text = importlib.resources.files("engine").joinpath("capabilities.toml").read_text("utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    as_of, models, room = data.get("as_of"), data.get("models"), data.get("reasoning_room", {})
    if not isinstance(as_of, dt.date) or not isinstance(models, dict) or not isinstance(room, dict):
        raise ConfigError(f"{where}: needs as_of (a date), [reasoning_room] and [models.NAME]")
    families = data.get("families", {})
    return CapabilityTable(
        models=MappingProxyType(
            {model_key(n): _capabilities(n, raw, where) for n, raw in models.items()}
        ),
        families=tuple((p.lower(), _capabilities(p, raw, where)) for p, raw in families.items()),
        reasoning_room=MappingProxyType({str(k): int(v) for k, v in room.items()}),
        as_of=as_of,
        reasoning_expected=MappingProxyType(
            {str(k): int(v) for k, v in data.get("reasoning_expected", {}).items()}
        ),
    )
