"""Turn a parsed TOML table into frozen dataclasses, with errors that name file, key and fix.

A field's type annotation is the schema: int, float, str, bool, Path, Literal[...], X | None,
tuple[X, ...], Mapping/dict[str, X] and nested dataclasses. Unknown keys are rejected with a
"did you mean" hint, because a misspelt limit that is silently ignored is how budgets get blown.
Numbers must be finite (TOML allows ``inf`` and ``nan``; no m2l setting means them).

Ranges are checked by the dataclasses themselves (``__post_init__``), with the helpers here:
they raise ``Invalid`` naming the field, the allowed range and the value found, and ``from_table``
adds the file and the key path. A field marked ``internal()`` is set by code only (tests, the
loader), never from a file, and is left out of ``plain`` (the stored snapshot).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from engine.errors import ConfigError

__all__ = [
    "INTERNAL",
    "Invalid",
    "at_least",
    "between",
    "from_table",
    "internal",
    "is_internal",
    "non_negative",
    "plain",
    "positive",
    "type_name",
]

T = TypeVar("T")

_INTERNAL = "m2l.internal"
INTERNAL: Mapping[str, bool] = types.MappingProxyType({_INTERNAL: True})  # a field's metadata


class Invalid(ConfigError, ValueError):
    """A value outside its allowed range: ``key`` (relative to its table), ``rule``, ``found``."""

    def __init__(self, key: str, rule: str, found: Any) -> None:
        super().__init__(f"{key}: {_problem(rule, found)}")
        self.key = key
        self.rule = rule
        self.found = found

    def under(self, prefix: str) -> Invalid:
        """The same problem with its key path prefixed by the enclosing table's."""
        return Invalid(f"{prefix}.{self.key}" if prefix else self.key, self.rule, self.found)


def _problem(rule: str, found: Any) -> str:
    # ``...`` as the value found: a value never to be shown (an API key put in a header).
    return rule if found is ... else f"{rule}, found {_show(found)}"


def _show(value: Any) -> str:
    if isinstance(value, float):
        return format(value, "g")
    if isinstance(value, str):
        return repr(value)
    return str(value)


def internal(default: Any, *, repr: bool = True) -> Any:
    """A dataclass field that code may set but a config file may not (and a snapshot omits)."""
    return dataclasses.field(default=default, repr=repr, compare=False, metadata=INTERNAL)


def is_internal(f: dataclasses.Field[Any]) -> bool:
    return bool(f.metadata.get(_INTERNAL))


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def at_least(obj: object, name: str, low: float, *, unset: str = "") -> None:
    """Raise Invalid unless ``obj.name`` is at least ``low`` (None passes when ``unset`` says
    what None means)."""
    value = getattr(obj, name)
    if value is None and unset:
        return
    if not (_finite(value) and value >= low):
        raise Invalid(name, f"must be at least {low:g}{unset}", value)


def positive(obj: object, name: str, *, unset: str = "") -> None:
    """Raise Invalid unless ``obj.name`` is more than 0 (None passes when ``unset`` is given)."""
    value = getattr(obj, name)
    if value is None and unset:
        return
    if not (_finite(value) and value > 0):
        raise Invalid(name, f"must be more than 0{unset}", value)


def non_negative(obj: object, name: str) -> None:
    """Raise Invalid unless ``obj.name`` is 0 or more."""
    value = getattr(obj, name)
    if value is not None and not (_finite(value) and value >= 0):
        raise Invalid(name, "must be 0 or more", value)


def between(obj: object, name: str, low: float, high: float, *, high_open: bool = False) -> None:
    """Raise Invalid unless ``low <= obj.name <= high`` (``< high`` when ``high_open``)."""
    value = getattr(obj, name)
    ok = _finite(value) and low <= value and (value < high if high_open else value <= high)
    if not ok:
        rule = (
            f"must be at least {low:g} and below {high:g}"
            if high_open
            else f"must be between {low:g} and {high:g}"
        )
        raise Invalid(name, rule, value)


def plain(value: Any) -> Any:
    """Dataclasses, mappings, tuples and paths → JSON-able dicts, lists and strings; internal
    fields are left out."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: plain(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not is_internal(f)
        }
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def type_name(tp: Any) -> str:
    """A short human name for a type annotation, for error messages."""
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(type_name(a) for a in args)
    if origin is tuple:
        return f"a list of {type_name(typing.get_args(tp)[0])}"
    if origin in (dict, Mapping, typing.Mapping):
        return f"a table of {type_name(typing.get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return {
        int: "an integer",
        float: "a number",
        str: "a string",
        bool: "true or false",
        Path: "a path (string)",
    }.get(tp, getattr(tp, "__name__", str(tp)))


def _found(value: Any) -> str:
    kind = {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "list",
        dict: "table",
    }.get(type(value), type(value).__name__)
    text = repr(value)
    return f"{kind} {text if len(text) <= 40 else text[:37] + '...'}"


class _Ctx:
    __slots__ = ("base_dir", "source")

    def __init__(self, source: str, base_dir: Path | None) -> None:
        self.source = source
        self.base_dir = base_dir

    def fail(self, key: str, expected: str, value: Any) -> ConfigError:
        return ConfigError(f"{self.source}: {key}: expected {expected}, found {_found(value)}")

    def invalid(self, exc: Invalid) -> ConfigError:
        return ConfigError(f"{self.source}: {exc.key}: {_problem(exc.rule, exc.found)}")


def _convert(tp: Any, value: Any, key: str, ctx: _Ctx) -> Any:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(tp)
        real = [a for a in args if a is not type(None)]
        if len(real) == 1:  # X | None: X's own error is the precise one
            return _convert(real[0], value, key, ctx)
        tables = [a for a in real if dataclasses.is_dataclass(a)]
        if isinstance(value, dict) and len(tables) == 1:  # a table: the table's own error
            return _convert(tables[0], value, key, ctx)
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, key, ctx)
            except ConfigError as exc:
                errors.append(exc)
        raise ctx.fail(key, type_name(tp), value)
    if origin is typing.Literal:
        if value in typing.get_args(tp):
            return value
        raise ctx.fail(key, type_name(tp), value)
    if origin is tuple:
        if not isinstance(value, list):
            raise ctx.fail(key, type_name(tp), value)
        (item_tp, *_rest) = typing.get_args(tp)
        return tuple(_convert(item_tp, v, f"{key}[{i}]", ctx) for i, v in enumerate(value))
    if origin in (dict, Mapping, typing.Mapping) or (
        isinstance(origin, type) and issubclass(origin, Mapping)
    ):
        if not isinstance(value, dict):
            raise ctx.fail(key, type_name(tp), value)
        value_tp = typing.get_args(tp)[1]
        return types.MappingProxyType(
            {str(k): _convert(value_tp, v, f"{key}.{k}", ctx) for k, v in value.items()}
        )
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise ctx.fail(key, "a table", value)
        return _build(tp, value, key, ctx)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ctx.fail(key, type_name(tp), value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ctx.fail(key, type_name(tp), value)
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ctx.fail(key, "a finite number", value)
            return float(value)
        raise ctx.fail(key, type_name(tp), value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise ctx.fail(key, type_name(tp), value)
    if tp is Path:
        if isinstance(value, str):
            path = Path(value).expanduser()
            if not path.is_absolute() and ctx.base_dir is not None:
                path = ctx.base_dir / path
            return path
        raise ctx.fail(key, type_name(tp), value)
    raise TypeError(f"config schema uses an unsupported type {tp!r} at {key}")


def _build(cls: type[T], table: Mapping[str, Any], prefix: str, ctx: _Ctx) -> T:
    hints = typing.get_type_hints(cls)
    fields = {
        f.name: f
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.init and not is_internal(f)
    }
    kwargs: dict[str, Any] = {}
    for name, value in table.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in fields:
            hint = difflib.get_close_matches(name, list(fields), n=1, cutoff=0.6)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            known = ", ".join(sorted(fields))
            raise ConfigError(
                f"{ctx.source}: unknown key {key!r}{suggestion} (known keys here: {known})"
            )
        kwargs[name] = _convert(hints[name], value, key, ctx)
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        where = f"[{prefix}]" if prefix else "the top level"
        raise ConfigError(f"{ctx.source}: {where} needs the key(s) {', '.join(missing)}")
    try:
        return cls(**kwargs)
    except Invalid as exc:  # a range check in __post_init__: name the key path
        raise ctx.invalid(exc.under(prefix)) from None
    except (ValueError, TypeError, ConfigError) as exc:  # any other check across keys
        where = f"[{prefix}]" if prefix else "config"
        raise ConfigError(f"{ctx.source}: {where}: {exc}") from None


def from_table(
    cls: type[T],
    table: Mapping[str, Any],
    *,
    source: str,
    prefix: str = "",
    base_dir: Path | None = None,
) -> T:
    """Build ``cls`` from ``table``; relative paths resolve against ``base_dir``.

    Raises ConfigError naming ``source``, the key path, what was expected and what was found.
    """
    return _build(cls, table, prefix, _Ctx(source, base_dir))
