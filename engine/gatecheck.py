"""The inline gate's stamp on each message it accepted, so ``m2l filter`` need not judge again
what the same gate already judged.

The run's gate (engine.validation) and ``m2l filter``'s turn checks (engine.posthoc) call the
same check functions with the same [quality] settings, language table and expectations, each
message against the same earlier turns. A message was stored only because the gate accepted it,
so when the filter's gate is the very gate that accepted every message of a conversation, its
turn checks would pass them all again: only the run-wide duplicate check is left to do.

"The very gate" is a fingerprint (``gate_fingerprint``): a hash of the [quality] settings with
the data files they name, the language table, the source of the checking code and its data
files, the language identifier's package (its model included), numpy's version and Python's
(Unicode tables, difflib). A message's stamp (``chain``) hashes that fingerprint with the
conversation's context (language, task, evol type, seed and its reference answer), the stamp of
the message before it, the message's kind and its text: matching stamps prove the text is
unchanged, stands at its place after the same turns, and was accepted by a gate identical to the
one checking it now. Any other m2l version, setting, data file or edit of the store breaks the
match, and the conversation is checked in full. Nothing here raises.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import sys
import unicodedata
from collections.abc import Iterable
from pathlib import Path

from engine.quality import FilterConfig
from prompts.languages import DEFAULT_NAMES_PATH, LanguageTable

__all__ = ["chain", "conversation_key", "gate_fingerprint"]

_ENGINE = Path(__file__).resolve().parent
_PROMPTS = DEFAULT_NAMES_PATH.resolve().parent.parent

# The code whose verdicts a stamp vouches for: the checks and their data, the gate, the
# filter's turn checks, the state machine that stores what the gate accepted, the language
# table's loader and the language-name data the expectations read, and this module.
_CODE: tuple[Path, ...] = (
    *sorted(p for p in (_ENGINE / "quality").iterdir() if p.suffix in (".py", ".toml")),
    _ENGINE / "validation.py",
    _ENGINE / "posthoc.py",
    _ENGINE / "conversation.py",
    _ENGINE / "gatecheck.py",
    _PROMPTS / "languages.py",
    DEFAULT_NAMES_PATH.resolve(),
)


# Fingerprints made, by the config's repr and the table's id (the table kept, so that its id
# cannot be reused while the entry stands); a few entries at most in any process.
_MADE: dict[tuple[str, int], tuple[LanguageTable, bytes]] = {}


def gate_fingerprint(config: FilterConfig, languages: LanguageTable) -> bytes:
    """The fingerprint of a gate checking with ``config`` and ``languages`` and the default
    language identifier, in this process (cached: about 13 ms the first time)."""
    # A frozen dataclass's repr names every field with its value: a canonical form (and one
    # that needs no hash of the config, which a hand-built list of extra markers would lack).
    shown = repr(config)
    found = _MADE.get((shown, id(languages)))
    if found is not None and found[0] is languages:
        return found[1]
    made = _fingerprint(config, shown, languages)
    if len(_MADE) < 16:
        _MADE[(shown, id(languages))] = (languages, made)
    return made


def _fingerprint(config: FilterConfig, shown: str, languages: LanguageTable) -> bytes:
    h = hashlib.blake2b(digest_size=16, person=b"m2l-gate")
    h.update(_code_digest())
    h.update(shown.encode())
    for path in (config.refusals_path, config.markers_path):
        h.update(b"\0" if path is None else _file_digest(Path(path)))
    h.update(repr(tuple(languages)).encode())
    return h.digest()


@functools.cache
def _code_digest() -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for path in _CODE:
        h.update(path.name.encode() + b"\0" + _file_digest(path))
    h.update(f"{sys.version}\0{unicodedata.unidata_version}\0".encode())
    h.update(_version("numpy").encode() + b"\0" + _version("py3langid").encode() + b"\0")
    for path in _package_files("py3langid"):
        h.update(path.name.encode() + b"\0" + _file_digest(path))
    return h.digest()


def _file_digest(path: Path) -> bytes:
    try:
        return hashlib.blake2b(path.read_bytes(), digest_size=16).digest()
    except OSError as exc:
        # Unreadable: a value no readable file gives; the checks themselves will say why.
        return f"unreadable: {type(exc).__name__}".encode()


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _package_files(package: str) -> Iterable[Path]:
    """The files of an installed package (its model data included), in a stable order."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return []
    root = Path(next(iter(spec.submodule_search_locations)))
    return sorted(
        (p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts),
        key=lambda p: p.relative_to(root).as_posix(),
    )


def conversation_key(
    fingerprint: bytes,
    *,
    language_code: str,
    task: str,
    evol_type: str,
    seed_text: str,
    seed_target: str | None,
) -> bytes:
    """The key a conversation's stamps are made with: the gate and everything the turn checks
    read of the conversation besides its messages."""
    h = hashlib.blake2b(digest_size=16, key=fingerprint)
    for part in (language_code, task, evol_type, seed_text):
        h.update(part.encode("utf-8", "surrogatepass") + b"\0")
    h.update(b"\1" if seed_target is None else seed_target.encode("utf-8", "surrogatepass"))
    return h.digest()


def chain(key: bytes, previous: int | None, kind: str, content: str) -> int:
    """The stamp of a message of ``kind`` with ``content`` after the message stamped
    ``previous`` (None: the first message), as a signed 64-bit integer (a BIGINT)."""
    h = hashlib.blake2b(digest_size=8, key=key)
    h.update(b"\0" * 8 if previous is None else previous.to_bytes(8, "big", signed=True))
    h.update(kind.encode() + b"\0")
    h.update(content.encode("utf-8", "surrogatepass"))
    return int.from_bytes(h.digest(), "big", signed=True)
