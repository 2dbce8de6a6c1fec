"""The conversation state machine: pure functions from a conversation to its next request, and
from a conversation plus an outcome to the next conversation. No I/O, no clock, no randomness:
the plan (evol type, turns, follow-up types) is fixed when the conversation is created.

Steps, by index: 0 EVOLVE (the seed → user turn 1), 1 ANSWER, then for each further turn
FOLLOW_UP (→ the next user message) and ANSWER. A conversation of n turns has 2n steps.

An output is accepted only when it is complete and passes the Validator. A reply cut at
max_tokens (``finish_reason = "length"``) is never accepted: the step is asked again with more
room (``Conversation.room`` counts how often it grew; ``Prompter.max_tokens`` turns that into
a cap, at most its ceiling) or fails as "truncated" when the cap cannot grow or the step's
regenerations are used up. A reply cut at a learned cap below the configured one (adaptive
max_tokens) is always asked again with more room, even when that takes one regeneration more
than ``max_regenerations``: the cut was m2l's choice, not the model's failure. Every output
thrown away is described by ``Conversation.rejected`` so the caller can store it; a step fails
after ``max_regenerations + 1`` outputs in total (one more after a cut at a learned cap). When
turn k (k >= 2) fails and ``keep_partial`` is set, the conversation ends DONE with its first
k - 1 turns and ``reason`` says why it is short.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Protocol

from engine.chat import REPLY_PRIMING_TOKENS, ChatRequest, Message
from engine.quality.verdict import Verdict
from engine.records import (
    Conversation,
    Plan,
    Rejection,
    Status,
    Step,
    StepKind,
    step_kind,
)
from state.requestlog import request_key

__all__ = [
    "Conversation",
    "Done",
    "IllegalTransition",
    "Outcome",
    "Plan",
    "Prompter",
    "Rejection",
    "Rendered",
    "Status",
    "Step",
    "StepKind",
    "StepRules",
    "Validator",
    "Verdict",
    "apply",
    "next_request",
    "step_kind",
]


class IllegalTransition(Exception):
    """A conversation was asked to do something its state does not allow (a bug, not bad input)."""


@dataclass(frozen=True, slots=True)
class Rendered:
    """A step's prompt as sent: the messages and, for user-turn steps, the type and text used."""

    messages: tuple[Message, ...]
    prompt_id: str | None
    prompt: str | None


class Prompter(Protocol):
    """Renders the messages for a step from the taxonomy; counts each new text's tokens once."""

    def render(self, conv: Conversation, kind: StepKind) -> Rendered: ...

    def message(self, role: str, content: str) -> Message: ...

    def max_tokens(
        self, conv: Conversation, kind: StepKind, room: int, prompt_tokens: int | None = None
    ) -> int:
        """The cap for the next output of ``conv``'s step ``kind`` after growing ``room`` times;
        never above the configured ceiling (so equal caps mean it cannot grow any more).
        ``prompt_tokens`` (the request's prompt) lets a prompter send a learned cap below the
        configured one; without it, the configured cap."""
        ...

    def observe(
        self, conv: Conversation, kind: StepKind, max_tokens: int, completion_tokens: int
    ) -> None:
        """A reply of ``completion_tokens`` came back for a request capped at ``max_tokens``."""
        ...


class Validator(Protocol):
    """Judges one step's output; a failed verdict makes the step run again."""

    def check(self, conv: Conversation, kind: StepKind, text: str) -> Verdict: ...

    def stamp(self, conv: Conversation, kind: StepKind, text: str) -> int | None:
        """The stamp stored with an output ``check`` accepted (engine.gatecheck), or None."""
        ...


@dataclass(frozen=True, slots=True)
class StepRules:
    """How many outputs a step may throw away, and whether a late failure keeps the prefix."""

    max_regenerations: int = 2
    keep_partial: bool = True

    def __post_init__(self) -> None:
        if self.max_regenerations < 0:
            raise ValueError("max_regenerations cannot be negative")


@dataclass(frozen=True, slots=True)
class Done:
    """The conversation needs no more requests."""

    status: Status


@dataclass(frozen=True, slots=True)
class Outcome:
    """What came back for a step: a reply, or a permanent error's reason."""

    text: str | None
    finish_reason: str = "stop"
    error: str | None = None  # set when the request failed permanently
    max_tokens: int | None = None  # the cap the request went out with (None: as configured)


def request_seed(conv_id: int, step: int, regeneration: int) -> int:
    """A stable per-attempt sampling seed, so a regeneration asks for a different reply."""
    digest = hashlib.blake2b(f"{conv_id}:{step}:{regeneration}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF


def next_request(
    conv: Conversation, prompter: Prompter, *, temperature: float
) -> tuple[ChatRequest, Rendered] | Done:
    """The request for the conversation's next step, or Done if it is final or complete."""
    if conv.status.final:
        return Done(conv.status)
    if conv.next_step >= conv.plan.steps:
        return Done(Status.DONE)
    kind = step_kind(conv.next_step)
    rendered = prompter.render(conv, kind)
    prompt_tokens = REPLY_PRIMING_TOKENS + sum(m.tokens for m in rendered.messages)
    request = ChatRequest(
        messages=rendered.messages,
        max_tokens=prompter.max_tokens(conv, kind, conv.room, prompt_tokens),
        temperature=temperature,
        key=request_key(conv.plan.conv_id, conv.next_step),
        seed=request_seed(conv.plan.conv_id, conv.next_step, conv.regenerations),
    )
    return request, rendered


def apply(
    conv: Conversation,
    rendered: Rendered,
    outcome: Outcome,
    *,
    prompter: Prompter,
    validator: Validator,
    rules: StepRules,
) -> Conversation:
    """The conversation after ``outcome`` for its next step.

    Raises IllegalTransition if the conversation is already final or complete.
    """
    if conv.status.final or conv.next_step >= conv.plan.steps:
        raise IllegalTransition(f"{conv!r} cannot take another step outcome")
    conv = replace(conv, rejected=None, dropped=())
    kind = step_kind(conv.next_step)
    if outcome.error is not None or outcome.text is None:
        return _fail(conv, outcome.error or "no reply", rules)
    text = outcome.text.strip()
    if outcome.finish_reason == "length":
        # A cut reply is never complete, whatever the filters think of its first part.
        configured = prompter.max_tokens(conv, kind, conv.room)
        cap = configured if outcome.max_tokens is None else outcome.max_tokens
        learned = conv.room == 0 and cap < configured
        grows = prompter.max_tokens(conv, kind, conv.room + 1) > cap
        detail = f"cut at max_tokens = {cap}" + (
            " (learned)" if learned else "" if grows else " (the ceiling)"
        )
        rejected = _rejection(conv, kind, "truncated", detail, text, outcome)
        if grows and conv.regenerations < rules.max_regenerations + learned:
            return replace(
                conv,
                status=Status.ACTIVE,
                regenerations=conv.regenerations + 1,
                room=conv.room + 1,
                rejected=rejected,
            )
        failed = _fail(conv, f"truncated after {conv.regenerations + 1} tries ({detail})", rules)
        return replace(failed, rejected=rejected)
    verdict = validator.check(conv, kind, text)
    if not verdict.ok:
        reason = verdict.reason or "invalid_output"
        rejected = _rejection(conv, kind, reason, verdict.detail, text, outcome)
        if conv.regenerations < rules.max_regenerations:
            return replace(
                conv, status=Status.ACTIVE, regenerations=conv.regenerations + 1, rejected=rejected
            )
        failed = _fail(conv, f"{reason} after {conv.regenerations + 1} tries", rules)
        return replace(failed, rejected=rejected)
    role = "assistant" if kind is StepKind.ANSWER else "user"
    step = Step(
        index=conv.next_step,
        kind=kind,
        message=prompter.message(role, text),
        prompt_id=rendered.prompt_id,
        prompt=rendered.prompt,
        finish_reason=outcome.finish_reason,
        gate_check=validator.stamp(conv, kind, text),
    )
    steps = (*conv.steps, step)
    status = Status.DONE if len(steps) == conv.plan.steps else Status.ACTIVE
    return replace(conv, steps=steps, status=status, regenerations=0, room=0, reason=None)


def _rejection(
    conv: Conversation, kind: StepKind, reason: str, detail: str, text: str, outcome: Outcome
) -> Rejection:
    return Rejection(
        conv.next_step, kind, conv.regenerations, reason, detail, text, outcome.finish_reason
    )


def _fail(conv: Conversation, reason: str, rules: StepRules) -> Conversation:
    """The conversation after its current step failed for good: failed, or cut to its good turns."""
    turn = conv.next_step // 2 + 1  # the turn whose step failed
    if rules.keep_partial and turn >= 2:
        kept = 2 * (turn - 1)
        return replace(
            conv,
            steps=conv.steps[:kept],
            dropped=conv.steps[kept:],
            status=Status.DONE,
            reason=f"kept {turn - 1} of {conv.plan.turns} turns: turn {turn} failed: {reason}",
        )
    return replace(conv, status=Status.FAILED, reason=reason)
