"""Source dataset → task: which m2l task a seed gets from the dataset it came from.

The table is data (``prompts/data/source_tasks.toml`` unless the user gives their own); names
are matched in a loose normal form so the templated and translated variants of a dataset's name
(``translated_dolly``, ``Dolly-v2 (T)``) find the same entry. Loading raises ConfigError naming
the file and key of the first problem.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import tomllib
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from engine.errors import ConfigError
from prompts.taxonomy import Taxonomy

__all__ = ["DEFAULT_SOURCE_TASKS_PATH", "SourceTasks", "load_source_tasks", "source_key"]

DEFAULT_SOURCE_TASKS_PATH = Path(__file__).parent / "data" / "source_tasks.toml"

# Aya Collection subsets are named translated_<name> and templated_<name>; dataset_name values
# carry "(T)" for translated ones, and some end in -inst, -submix or -train.
_PREFIXES = ("translated_", "templated_")
_SUFFIXES = ("_t", "_inst", "_submix", "_train")
_NON_WORD = re.compile(r"[^0-9a-z]+")


def source_key(name: str) -> str:
    """The normal form a source dataset name is matched in (``"Dolly-v2 (T)"`` → ``dolly_v2``)."""
    key = _NON_WORD.sub("_", unicodedata.normalize("NFKC", name).casefold()).strip("_")
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix) and len(key) > len(prefix):
                key, changed = key[len(prefix) :], True
        for suffix in _SUFFIXES:
            if key.endswith(suffix) and len(key) > len(suffix):
                key, changed = key[: -len(suffix)], True
    return key


@dataclass(frozen=True, slots=True)
class SourceTasks:
    """A validated source → task table; ``fingerprint`` changes whenever its file does."""

    tasks: Mapping[str, str]  # source_key(name) -> task id
    path: Path
    fingerprint: str

    def task_for(self, source: str) -> str | None:
        """The task id for a source dataset name, or None when the table does not list it."""
        return self.tasks.get(source_key(source))


def _fail(path: Path, key: str, problem: str) -> ConfigError:
    return ConfigError(f"{path}: key {key!r}: {problem}")


def _parse(path: Path, taxonomy: Taxonomy) -> SourceTasks:
    try:
        raw_bytes = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: source → task table not found; check seeds.source_tasks, or copy "
            f"{DEFAULT_SOURCE_TASKS_PATH} and edit it"
        ) from None
    try:
        data = tomllib.loads(raw_bytes.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 ({exc}); save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}; fix the syntax") from None
    for key in data:
        if key != "datasets":
            raise _fail(path, key, "unknown key; this file holds one [datasets] table")
    table = data.get("datasets")
    if not isinstance(table, dict) or not table:
        raise _fail(path, "datasets", "expected a [datasets] table of name = task id lines")
    tasks: dict[str, str] = {}
    spelled: dict[str, str] = {}
    for name, value in table.items():
        if not isinstance(value, str) or not value.strip():
            got = type(value).__name__
            raise _fail(path, f"datasets.{name}", f"expected a task id string, got {got}")
        try:
            task = taxonomy.task(value).id
        except ConfigError:
            close = difflib.get_close_matches(value, list(taxonomy.tasks), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _fail(
                path,
                f"datasets.{name}",
                f"unknown task {value!r}{hint}; tasks are {', '.join(taxonomy.tasks)}",
            ) from None
        key = source_key(name)
        if not key:
            raise _fail(path, f"datasets.{name}", "the name has no letters or digits")
        if key in tasks and tasks[key] != task:
            raise _fail(
                path,
                f"datasets.{name}",
                f"matches the same names as {spelled[key]!r} (both read as {key!r}) but "
                f"gives task {task!r}, not {tasks[key]!r}; keep one",
            )
        tasks[key] = task
        spelled.setdefault(key, name)
    digest = hashlib.sha256(raw_bytes).hexdigest()
    return SourceTasks(MappingProxyType(tasks), path, digest)


# The built-in table checked against each taxonomy it was loaded for, by the taxonomy's print.
_DEFAULTS: dict[str, SourceTasks] = {}


def load_source_tasks(taxonomy: Taxonomy, path: Path | None = None) -> SourceTasks:
    """Load a source → task table (the built-in one by default), checked against the taxonomy.

    Raises ConfigError for a missing or malformed file, an unknown task id, or two names that
    match the same datasets but give different tasks.
    """
    if path is None or path.resolve() == DEFAULT_SOURCE_TASKS_PATH.resolve():
        found = _DEFAULTS.get(taxonomy.fingerprint)
        if found is None:
            found = _DEFAULTS[taxonomy.fingerprint] = _parse(DEFAULT_SOURCE_TASKS_PATH, taxonomy)
        return found
    return _parse(path, taxonomy)
