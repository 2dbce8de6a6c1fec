"""Redaction: the API key, and anything shaped like a key or a bearer token, taken out of text.

Servers and proxies echo requests back (a debugging proxy puts the Authorization header in its
body, an error page quotes the headers it got), so every text taken from a response passes
through ``Redactor.text`` at the client boundary before it can reach the store, a status file,
an export or the terminal.
"""

from __future__ import annotations

import re

from engine.config import Secret

__all__ = ["MASK", "Redactor", "scrub"]

MASK = "***"

# OpenAI-style keys (sk-..., sk-proj-..., sess-...): the first four characters after the prefix
# stay, so a user can still tell which key a message was about.
_KEYLIKE = re.compile(r"\b((?:sk|sess|rk)-[A-Za-z0-9_\-]{4})[A-Za-z0-9_\-*]{8,}")
# Whatever follows "Bearer" (or "Basic") in an echoed Authorization header or error text.
_BEARER = re.compile(r"(?i)\b(bearer|basic)(\s+|%20|\+)[A-Za-z0-9._~+/\-]{12,}=*")
# api-key / x-api-key / api_key = ... as a header line, a query parameter or a JSON field.
_KEYFIELD = re.compile(r"(?i)(\b(?:x-)?api[-_]?key\b[\"']?\s*[:=]\s*[\"']?)[A-Za-z0-9._~+/\-]{6,}")


# Every pattern above needs one of these (lower-cased) in the text: a text without any is
# returned as it is, without running the expressions (a reply's finish reason and model name
# pass through here on every reply).
_TRIGGERS = ("sk-", "sess-", "rk-", "bearer", "basic", "api")
_KEY_PREFIXES = ("sk-", "sess-", "rk-")


def scrub(text: str, secret: Secret | None = None) -> str:
    """``text`` without ``secret`` and without anything shaped like a key or a bearer token."""
    if secret is not None:
        value = secret.reveal()
        if value:
            text = text.replace(value, MASK)
    lowered = text.lower()
    if not any(trigger in lowered for trigger in _TRIGGERS):
        return text
    text = _KEYLIKE.sub(rf"\1{MASK}", text)
    text = _BEARER.sub(rf"\1\2{MASK}", text)
    return _KEYFIELD.sub(rf"\1{MASK}", text)


class Redactor:
    """Scrubs texts for one client: its own key (when it has one) and key-shaped strings."""

    __slots__ = ("_secret",)

    def __init__(self, secret: Secret | None) -> None:
        self._secret = secret if secret is not None and secret.reveal() else None

    def text(self, text: str) -> str:
        """A diagnostic text (error body, header, snippet) with every secret and token masked."""
        return scrub(text, self._secret)

    def may_hold_secret(self, raw: bytes) -> bool:
        """Whether ``raw`` could hold something ``content`` masks (a cheap test that lets a
        reply without any key-like prefix skip the regular expression)."""
        if self._secret is not None and self._secret.reveal().encode() in raw:
            return True
        return any(prefix in raw for prefix in (b"sk-", b"sess-", b"rk-"))

    def content(self, text: str) -> str:
        """A reply's text with the key and key-shaped strings masked.

        Looser patterns (``Bearer`` + a word) are left out here: they would rewrite ordinary
        prose ("bearer bonds"), and reply text is the dataset.
        """
        if self._secret is not None:
            text = text.replace(self._secret.reveal(), MASK)
        if not any(prefix in text for prefix in _KEY_PREFIXES):
            return text
        return _KEYLIKE.sub(rf"\1{MASK}", text)
