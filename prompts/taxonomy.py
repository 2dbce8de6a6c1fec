"""The Evol taxonomy as data: tasks, Guided Evol types, Multi-turn Evol types and the answer prompt.

A taxonomy directory holds five TOML files (tasks, evol_general, evol_task, multiturn, answer);
the loader validates them together and raises ConfigError naming file, entry and key.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import re
import string
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, NoReturn

from engine.errors import ConfigError

__all__ = [
    "ALLOWED_PLACEHOLDERS",
    "DEFAULT_TAXONOMY_DIR",
    "ENTRY_FILES",
    "KINDS",
    "REWRITE_MARKER",
    "TARGET_LANGUAGE_LINE",
    "TASKS_FILE",
    "Kind",
    "PromptEntry",
    "Task",
    "Taxonomy",
    "load_taxonomy",
]

Kind = Literal["evol_general", "evol_task", "multiturn", "answer"]
KINDS: tuple[Kind, ...] = ("evol_general", "evol_task", "multiturn", "answer")

DEFAULT_TAXONOMY_DIR = Path(__file__).parent / "data"
TASKS_FILE = "tasks.toml"
ENTRY_FILES: Mapping[Kind, str] = MappingProxyType({kind: f"{kind}.toml" for kind in KINDS})

# The simulator (and any reader of a run's requests) relies on these two conventions: the target
# language stands on its own line, and a rewrite request says "Return only the new ...".
TARGET_LANGUAGE_LINE = "Target language: {language}"
# The system prompts in answer.toml, one per step kind (their ``family``).
SYSTEM_FAMILIES = ("evolve", "answer", "follow_up")
REWRITE_MARKER = "Return only the new"

_EVOL = frozenset({"seed", "language", "task"})
ALLOWED_PLACEHOLDERS: Mapping[Kind, frozenset[str]] = MappingProxyType(
    {
        "evol_general": _EVOL,
        "evol_task": _EVOL,
        "multiturn": frozenset({"conversation", "last_user", "last_assistant", "language", "task"}),
        "answer": frozenset({"language", "task"}),
    }
)
# A template must use at least one of these, or it cannot be about the conversation at hand.
_REQUIRED_ONE_OF: Mapping[Kind, frozenset[str]] = MappingProxyType(
    {
        "evol_general": frozenset({"seed"}),
        "evol_task": frozenset({"seed"}),
        "multiturn": frozenset({"conversation", "last_user", "last_assistant"}),
        "answer": frozenset({"language"}),
    }
)

_ENTRY_KEYS = ("id", "family", "description", "template", "tasks")
_TASK_KEYS = ("id", "name", "description")
_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_TOML_KEY_LINE = re.compile(r"^\s*([A-Za-z_][\w-]*)\s*=")
_TOML_ID_LINE = re.compile(r"""^\s*id\s*=\s*["']([^"']*)["']""")
ALL_TASKS = "*"


@dataclass(frozen=True, slots=True)
class Task:
    """An NLP task a seed belongs to; ``name`` is what prompts show for ``{task}``."""

    id: str
    name: str
    description: str
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PromptEntry:
    """One prompt type of the taxonomy; ``tasks == ("*",)`` means it applies to every task."""

    id: str
    kind: Kind
    family: str
    description: str
    template: str
    tasks: tuple[str, ...]

    def applies_to(self, task_id: str) -> bool:
        """Whether this type may be used for seeds of ``task_id``."""
        return ALL_TASKS in self.tasks or task_id in self.tasks

    def placeholders(self) -> frozenset[str]:
        """The ``{name}`` placeholders the template uses."""
        return frozenset(_fields(self.template))

    def render(self, **values: str) -> str:
        """Fill the template; extra values are ignored; raises ConfigError if one is missing."""
        missing = sorted(self.placeholders() - values.keys())
        if missing:
            raise ConfigError(
                f"prompt {self.id!r} ({self.kind}) needs a value for "
                f"{', '.join('{' + m + '}' for m in missing)}; pass it to render()"
            )
        return self.template.format_map(values)


def _fields(template: str) -> list[str]:
    # Raises ValueError on unbalanced braces; callers translate it where they know the location.
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


def _norm_task(text: str) -> str:
    return re.sub(r"[\s\-]+", "_", text.strip().casefold())


@dataclass(frozen=True, slots=True)
class Taxonomy:
    """A validated taxonomy; ``fingerprint`` changes whenever any of its files changes."""

    tasks: Mapping[str, Task]
    entries: tuple[PromptEntry, ...]
    source: Path
    fingerprint: str
    _by_id: Mapping[str, PromptEntry] = field(repr=False, compare=False)
    _aliases: Mapping[str, str] = field(repr=False, compare=False)

    def task(self, task_id_or_alias: str) -> Task:
        """The task for an id or alias (case, hyphens and spaces ignored); raises ConfigError."""
        key = _norm_task(task_id_or_alias)
        task_id = key if key in self.tasks else self._aliases.get(key)
        if task_id is not None:
            return self.tasks[task_id]
        close = difflib.get_close_matches(key, [*self.tasks, *self._aliases], n=3, cutoff=0.6)
        ids = dict.fromkeys(c if c in self.tasks else self._aliases[c] for c in close)
        hint = f"did you mean {', '.join(map(repr, ids))}? " if ids else ""
        raise ConfigError(
            f"unknown task {task_id_or_alias!r}: {hint}known tasks are "
            f"{', '.join(self.tasks)}; add an alias in {self.source / TASKS_FILE} to map "
            "another name"
        )

    def evol_types(self, task_id: str) -> tuple[PromptEntry, ...]:
        """Guided Evol types for a task: general ones first, then task-specific, in file order."""
        tid = self.task(task_id).id
        general = [e for e in self.entries if e.kind == "evol_general" and e.applies_to(tid)]
        specific = [e for e in self.entries if e.kind == "evol_task" and e.applies_to(tid)]
        return (*general, *specific)

    def multiturn_types(
        self, family: str | None = None, *, task: str | None = None
    ) -> tuple[PromptEntry, ...]:
        """Multi-turn Evol types, optionally of one family and applicable to one task.

        Raises ConfigError for an unknown family or task.
        """
        if family is not None and family not in self.families():
            raise ConfigError(
                f"unknown multi-turn family {family!r}; families are {', '.join(self.families())}"
            )
        tid = self.task(task).id if task is not None else None
        return tuple(
            e
            for e in self.entries
            if e.kind == "multiturn"
            and (family is None or e.family == family)
            and (tid is None or e.applies_to(tid))
        )

    def families(self) -> tuple[str, ...]:
        """Multi-turn families in the order they first appear."""
        return tuple(dict.fromkeys(e.family for e in self.entries if e.kind == "multiturn"))

    def get(self, entry_id: str) -> PromptEntry:
        """The entry with this id (exact, or case-insensitive); raises ConfigError if absent."""
        found = self._by_id.get(entry_id) or self._by_id.get(entry_id.upper())
        if found is not None:
            return found
        close = difflib.get_close_matches(entry_id.upper(), list(self._by_id), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
        raise ConfigError(
            f"unknown prompt type {entry_id!r}: {hint}`m2l prompts list` shows the ids "
            f"in {self.source}"
        )

    def of_kind(self, kind: Kind) -> tuple[PromptEntry, ...]:
        """All entries of one kind, in file order."""
        return tuple(e for e in self.entries if e.kind == kind)

    def answer_system(self) -> PromptEntry:
        """The system prompt that makes the model answer in the conversation's language."""
        return self.system("answer")

    def system(self, step: str) -> PromptEntry:
        """The system prompt of a step kind ("evolve", "answer" or "follow_up").

        Every request carries one, so no server injects its own default persona. Raises
        ConfigError when the taxonomy has none for ``step``.
        """
        for entry in self.of_kind("answer"):
            if entry.family == step:
                return entry
        raise ConfigError(
            f"the taxonomy has no system prompt for {step} steps: add a [[prompt]] with "
            f"family = {step!r} to {ENTRY_FILES['answer']}"
        )


# --- loading ------------------------------------------------------------------------------------


def _fail(path: Path, entry: str, key: str, problem: str) -> NoReturn:
    raise ConfigError(f"{path}: entry {entry!r}, key {key!r}: {problem}")


def _locate(text: str, lineno: int) -> tuple[str, str]:
    """Best guess of the entry id and key around a TOML syntax error on line ``lineno``."""
    lines = text.splitlines()[:lineno]
    key = next((m[1] for ln in reversed(lines) if (m := _TOML_KEY_LINE.match(ln))), "?")
    start = max((i for i, ln in enumerate(lines) if ln.lstrip().startswith("[")), default=0)
    # The id may come after the broken line within the same table, so look to the table's end.
    rest = text.splitlines()[start:]
    entry = "?"
    for i, ln in enumerate(rest):
        if i > 0 and ln.lstrip().startswith("["):
            break
        if m := _TOML_ID_LINE.match(ln):
            entry = m[1]
            break
    return entry, key


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: missing; a taxonomy directory needs {TASKS_FILE} and "
            f"{', '.join(ENTRY_FILES.values())} (copy them from {DEFAULT_TAXONOMY_DIR})"
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 ({exc}); save it as UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        entry, key = _locate(text, int(m[1])) if m else ("?", "?")
        _fail(path, entry, key, f"invalid TOML: {exc}; fix the syntax")


def _tables(path: Path, data: dict[str, Any], name: str) -> list[Any]:
    for key in data:
        if key != name:
            _fail(path, "(top level)", key, f"unknown key; this file holds only [[{name}]] tables")
    tables = data.get(name)
    if not isinstance(tables, list) or not tables:
        _fail(path, "(top level)", name, f"expected one or more [[{name}]] tables")
    return tables


def _check_keys(
    path: Path, position: int, raw: Any, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> str:
    """Check presence, type and spelling of keys; returns the entry's id for error messages."""
    entry = raw.get("id") if isinstance(raw, dict) else None
    label = entry if isinstance(entry, str) and entry else f"#{position}"
    if not isinstance(raw, dict):
        _fail(path, label, "(table)", "expected a table")
    for key in raw:
        if key not in required and key not in optional:
            allowed = ", ".join([*required, *optional])
            _fail(path, label, key, f"unknown key; allowed keys are {allowed}")
    for key in required:
        if key not in raw:
            _fail(path, label, key, f"missing; every entry needs {', '.join(required)}")
        if key != "tasks" and (not isinstance(raw[key], str) or not raw[key].strip()):
            got = type(raw[key]).__name__
            _fail(path, label, key, f"expected a non-empty string, got {got} {raw[key]!r}")
    if not _ID.match(raw["id"]):
        _fail(path, label, "id", "ids are letters, digits and underscores, starting with a letter")
    return label


def _str_list(path: Path, entry: str, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        got = type(value).__name__
        _fail(path, entry, key, f"expected a list of non-empty strings, got {got} {value!r}")
    return tuple(value)


def _parse_tasks(path: Path) -> tuple[dict[str, Task], dict[str, str]]:
    tasks: dict[str, Task] = {}
    aliases: dict[str, str] = {}
    for i, raw in enumerate(_tables(path, _read_toml(path), "task"), 1):
        label = _check_keys(path, i, raw, _TASK_KEYS, ("aliases",))
        if raw["id"] in tasks:
            _fail(path, label, "id", "duplicate task id; each task is defined once")
        task_aliases = _str_list(path, label, "aliases", raw.get("aliases", []))
        for alias in task_aliases:
            key = _norm_task(alias)
            owner = aliases.get(key) or (key if key in tasks else None)
            if owner is not None and owner != raw["id"]:
                _fail(path, label, "aliases", f"alias {alias!r} already names task {owner!r}")
            aliases[key] = raw["id"]
        if raw["id"] in aliases and aliases[raw["id"]] != raw["id"]:
            _fail(path, label, "id", f"already an alias of task {aliases[raw['id']]!r}")
        tasks[raw["id"]] = Task(raw["id"], raw["name"], raw["description"], task_aliases)
    return tasks, {a: t for a, t in aliases.items() if a != t}


def _check_template(path: Path, entry: str, kind: Kind, template: str) -> None:
    try:
        names = _fields(template)
    except ValueError as exc:
        _fail(path, entry, "template", f"{exc}; write literal braces as {{{{ and }}}}")
    allowed = ALLOWED_PLACEHOLDERS[kind]
    for name in names:
        if name not in allowed:
            shown = ", ".join("{" + a + "}" for a in sorted(allowed))
            _fail(path, entry, "template", f"unknown placeholder {{{name}}}; {kind} allows {shown}")
    if not _REQUIRED_ONE_OF[kind] & set(names):
        need = " or ".join("{" + n + "}" for n in sorted(_REQUIRED_ONE_OF[kind]))
        _fail(path, entry, "template", f"must use {need}")
    if TARGET_LANGUAGE_LINE not in (line.strip() for line in template.splitlines()):
        _fail(path, entry, "template", f"needs the line {TARGET_LANGUAGE_LINE!r} on its own")
    if kind != "answer" and REWRITE_MARKER not in template:
        _fail(
            path,
            entry,
            "template",
            f"a rewrite prompt must say {REWRITE_MARKER!r} (e.g. 'Return only the new "
            "instruction, written in {language}, with no preamble.')",
        )


def _parse_entries(path: Path, kind: Kind, tasks: Mapping[str, Task]) -> list[PromptEntry]:
    entries: list[PromptEntry] = []
    for i, raw in enumerate(_tables(path, _read_toml(path), "prompt"), 1):
        label = _check_keys(path, i, raw, _ENTRY_KEYS)
        applies = _str_list(path, label, "tasks", raw["tasks"])
        if not applies:
            _fail(path, label, "tasks", 'empty; list task ids, or ["*"] for every task')
        for task_id in applies:
            if task_id != ALL_TASKS and task_id not in tasks:
                close = difflib.get_close_matches(task_id, list(tasks), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                _fail(path, label, "tasks", f"unknown task {task_id!r}{hint}")
        if ALL_TASKS in applies and len(applies) > 1:
            _fail(path, label, "tasks", '"*" already means every task; list nothing else')
        _check_template(path, label, kind, raw["template"])
        template = raw["template"].strip("\n")
        entries.append(
            PromptEntry(raw["id"], kind, raw["family"], raw["description"], template, applies)
        )
    return entries


def _check_counts(root: Path, taxonomy: Taxonomy, min_evols_per_task: int) -> None:
    for task_id in taxonomy.tasks:
        found = taxonomy.evol_types(task_id)
        if len(found) < min_evols_per_task:
            general = sum(e.kind == "evol_general" for e in found)
            raise ConfigError(
                f"{root / ENTRY_FILES['evol_task']}: task {task_id!r}, key 'tasks': only "
                f"{len(found)} evol types apply ({general} general + {len(found) - general} "
                f"task-specific), fewer than min_evols_per_task={min_evols_per_task}; add "
                f"entries whose tasks list {task_id!r}, or lower min_evols_per_task"
            )
    families = [e.family for e in taxonomy.of_kind("answer")]
    if sorted(families) != sorted(SYSTEM_FAMILIES):
        raise ConfigError(
            f"{root / ENTRY_FILES['answer']}: expected one system [[prompt]] for each of the "
            f"families {', '.join(SYSTEM_FAMILIES)}, found {', '.join(families) or 'none'}"
        )


def _fingerprint(root: Path) -> str:
    digest = hashlib.sha256()
    for name in (TASKS_FILE, *ENTRY_FILES.values()):
        # Names are hashed too, so moving text from one file to another changes the print.
        digest.update(name.encode() + b"\0" + (root / name).read_bytes() + b"\0")
    return digest.hexdigest()


def _load(root: Path, min_evols_per_task: int) -> Taxonomy:
    if not root.is_dir():
        raise ConfigError(f"{root}: taxonomy directory not found; check the taxonomy path")
    tasks, aliases = _parse_tasks(root / TASKS_FILE)
    entries: list[PromptEntry] = []
    seen: dict[str, Path] = {}
    for kind, name in ENTRY_FILES.items():
        for entry in _parse_entries(root / name, kind, tasks):
            if entry.id in seen:
                _fail(
                    root / name, entry.id, "id", f"duplicate id, already used in {seen[entry.id]}"
                )
            seen[entry.id] = root / name
            entries.append(entry)
    taxonomy = Taxonomy(
        tasks=MappingProxyType(tasks),
        entries=tuple(entries),
        source=root,
        fingerprint=_fingerprint(root),
        _by_id=MappingProxyType({e.id: e for e in entries}),
        _aliases=MappingProxyType(aliases),
    )
    _check_counts(root, taxonomy, min_evols_per_task)
    return taxonomy


@functools.cache
def _load_default(min_evols_per_task: int) -> Taxonomy:
    return _load(DEFAULT_TAXONOMY_DIR, min_evols_per_task)


def load_taxonomy(directory: Path | None = None, *, min_evols_per_task: int = 9) -> Taxonomy:
    """Load and validate a taxonomy directory (the built-in one by default, cached).

    Raises ConfigError naming the file, entry and key of the first problem found.
    """
    if min_evols_per_task < 1:
        raise ConfigError(f"min_evols_per_task must be at least 1, got {min_evols_per_task}")
    if directory is None or directory.resolve() == DEFAULT_TAXONOMY_DIR.resolve():
        return _load_default(min_evols_per_task)
    return _load(directory, min_evols_per_task)
