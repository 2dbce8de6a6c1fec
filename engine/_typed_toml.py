"""Turn a parsed TOML table into frozen dataclasses, with errors that name file, key and fix.

A field's type annotation is the schema: int, float, str, bool, Path, Literal[...], X | None,
tuple[X, ...], Mapping/dict[str, X] and nested dataclasses. Unknown keys are rejected with a
"did you mean" hint, because a misspelt limit that is silently ignored is how budgets get blown.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from engine.errors import ConfigError

__all__ = ["from_table", "type_name"]

T = TypeVar("T")


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


def _convert(tp: Any, value: Any, key: str, ctx: _Ctx) -> Any:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(tp)
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
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
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
    except (ValueError, TypeError, ConfigError) as exc:  # __post_init__ checks across keys
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
