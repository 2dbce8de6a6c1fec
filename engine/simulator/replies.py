"""What the simulator answers to an admitted request: content, finish reason, usage, latency.

Pure: the reply is a function of (simulator seed, body key) and, for the content faults and the
latency jitter, of the attempt number too. Nothing here raises.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace

from engine.simsettings import SimSettings
from engine.simulator.counting import UsageCounter
from engine.simulator.faults import rng_for, uniform
from engine.simulator.languages import ENGLISH, LANGUAGES, Language, find_language
from engine.simulator.lengths import reply_budget
from engine.simulator.request import SimRequest
from engine.simulator.text import ReplySpec, composer_for, json_keys_in, language_factor

__all__ = ["Reply", "ReplyWriter", "target_language"]

_TARGET = re.compile(r"^[ \t]*target language[ \t]*:[ \t]*(.+?)[ \t]*$", re.IGNORECASE | re.M)
_JSON_WORD = re.compile(r"\bJSON\b")
_REWRITE_MARK = "return only the new"
# m2l's answer prompt names the task ("For translation requests, ..."). A real model answering
# the first turn of a translation conversation writes the translation, in the language the
# seed translates into; the bundled seeds all translate into English, and so does the simulator
# (its instructions name no language, and English is its default target).
_TRANSLATION_MARK = "for translation requests"
# Drafting past max_tokens by this much, then cutting at max_tokens, gives a "length" reply
# that really was cut off rather than one that ended by chance just at the limit.
_OVERDRAFT = 8
_REALISTIC_OVERDRAFT = 64


@dataclass(frozen=True, slots=True)
class Reply:
    """One reply: its text, why it ended, its tokens, and when its tokens go out."""

    completion_id: str
    content: str
    finish_reason: str  # "stop" | "length"
    completion_tokens: int  # visible and hidden reasoning tokens, as OpenAI counts them
    language: str
    ttft_s: float
    total_s: float  # time to first token + time for all the others
    reasoning_tokens: int = 0  # hidden, spent before the first visible token


def _last_user(messages: tuple[tuple[str, str], ...]) -> str:
    for role, content in reversed(messages):
        if role == "user":
            return content
    return ""


def target_language(messages: tuple[tuple[str, str], ...]) -> Language:
    """The language named on a ``Target language:`` line (last user message first, then the
    system/developer messages, latest first); English when none names a known language."""
    candidates = [_last_user(messages)]
    candidates += [c for r, c in reversed(messages) if r in ("system", "developer")]
    for text in candidates:
        for match in _TARGET.finditer(text):
            lang = find_language(match.group(1))
            if lang is not None:
                return lang
    return ENGLISH


def _first_turn_of_translation(messages: tuple[tuple[str, str], ...], last_user: str) -> bool:
    """An answer to a translation conversation's first user turn (not a rewrite of it)."""
    if _REWRITE_MARK in last_user.lower() or sum(r == "user" for r, _ in messages) != 1:
        return False
    return any(r in ("system", "developer") and _TRANSLATION_MARK in c.lower() for r, c in messages)


class ReplyWriter:
    """Writes replies for one simulator: its seed, bounds and latency model."""

    __slots__ = ("_counter", "_settings")

    def __init__(self, settings: SimSettings, counter: UsageCounter) -> None:
        self._settings = settings
        self._counter = counter

    def spec_for(self, req: SimRequest) -> ReplySpec:
        """The shape the request asks for (language, instruction or answer, JSON or not)."""
        last_user = _last_user(req.messages)
        json_mode = req.json_mode or bool(_JSON_WORD.search(last_user))
        keys: tuple[str, ...] = ()
        if json_mode and req.json_schema is None:
            keys = json_keys_in(last_user) or next(
                (json_keys_in(c) for r, c in req.messages if r in ("system", "developer")), ()
            )
        language = target_language(req.messages)
        if _first_turn_of_translation(req.messages, last_user):
            language = ENGLISH
        return ReplySpec(
            language=language,
            instruction=_REWRITE_MARK in last_user.lower(),
            json=json_mode,
            json_keys=keys,
            json_schema=req.json_schema,
            fill=self._settings.reply_lengths == "realistic",
        )

    def write(
        self,
        req: SimRequest,
        max_tokens: int,
        attempt: int,
        fault: str | None,
        *,
        reasoning: int = 0,
        slowdown: float = 1.0,
    ) -> Reply:
        """The reply to the ``attempt``-th admission of ``req``, capped at ``max_tokens``.

        ``reasoning`` hidden tokens are spent first, inside the cap: a reply whose reasoning uses
        the whole cap is empty and ends with "length", as OpenAI's reasoning models do.
        ``slowdown`` stretches the latency (flex processing).
        """
        s = self._settings
        if reasoning >= max_tokens:
            return self._reasoned(req, attempt, "", "length", 0, max_tokens, slowdown)
        max_tokens -= reasoning
        spec = self.spec_for(req)
        rng = rng_for(s.seed, b"m2l-sim-content", req.key)
        encoding = self._counter.encoding(req.model)
        factor = 1.0
        if s.reply_lengths == "realistic":
            factor = language_factor(spec.language, encoding.name)
        drawn = reply_budget(s, rng, instruction=spec.instruction, factor=factor)
        if fault in ("wrong_language", "repetition"):
            # A content fault is a fresh draw per attempt: the retry may well come out clean.
            rng = rng_for(s.seed, b"m2l-sim-badtext", req.key, attempt)
            if fault == "wrong_language":
                others = [lang for lang in LANGUAGES if lang is not spec.language]
                spec = replace(spec, language=others[rng.randrange(len(others))])
            else:
                spec = replace(spec, repetition=True)
        composer = composer_for(spec.language, encoding.name)
        overdraft = _OVERDRAFT
        if s.reply_lengths == "realistic" and drawn > max_tokens:
            # A reply meant to be longer than the cap is cut, as a model's is: the text ends a
            # sentence short of its budget, so draft well past the cap before cutting.
            overdraft = _REALISTIC_OVERDRAFT
        content = composer.reply(spec, rng, min(drawn, max_tokens + overdraft))
        tokens = self._counter.count(req.model, content)
        finish = "stop"
        if tokens > max_tokens:
            content = self._counter.truncate(req.model, content, max_tokens)
            tokens = self._counter.count(req.model, content)
            finish = "length"
        reply = self._reasoned(req, attempt, content, finish, tokens, reasoning, slowdown)
        return replace(reply, language=spec.language.name)

    def _reasoned(
        self,
        req: SimRequest,
        attempt: int,
        content: str,
        finish: str,
        visible: int,
        reasoning: int,
        slowdown: float,
    ) -> Reply:
        s = self._settings
        u = uniform(s.seed, b"m2l-sim-latency", req.key, attempt)
        factor = (1.0 + s.jitter * (2.0 * u - 1.0)) * slowdown
        ttft = (s.ttft_s + s.per_token_s * reasoning) * factor
        return Reply(
            completion_id=_completion_id(s.seed, req.key, attempt),
            content=content,
            finish_reason=finish,
            completion_tokens=visible + reasoning,
            language=ENGLISH.name,
            ttft_s=ttft,
            total_s=ttft + s.per_token_s * visible * factor,
            reasoning_tokens=reasoning,
        )


def _completion_id(seed: int, key: bytes, attempt: int) -> str:
    h = hashlib.blake2b(key, digest_size=12, salt=attempt.to_bytes(8, "little", signed=False))
    h.update(str(seed).encode())
    return "chatcmpl-" + h.hexdigest()
