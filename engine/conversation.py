"""The conversation state machine: pure functions from a conversation to its next request, and
from a conversation plus an outcome to the next conversation. No I/O, no clock, no randomness:
the plan (evol type, turns, follow-up types) is fixed when the conversation is created.

Steps, by index: 0 EVOLVE (the seed → user turn 1), 1 ANSWER, then for each further turn
FOLLOW_UP (→ the next user message) and ANSWER. A conversation of n turns has 2n steps.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, replace
from typing import Protocol

from engine.chat import ChatRequest, Message
from engine.quality.verdict import Verdict

__all__ = [
    "Conversation",
    "Done",
    "IllegalTransition",
    "Outcome",
    "Plan",
    "Prompter",
    "Rendered",
    "Status",
    "Step",
    "StepKind",
    "Validator",
    "Verdict",
    "apply",
    "next_request",
    "parse_request_key",
    "request_key",
    "step_kind",
]


class StepKind(enum.Enum):
    EVOLVE = "evolve"
    ANSWER = "answer"
    FOLLOW_UP = "follow_up"


class Status(enum.Enum):
    PENDING = "pending"
    ACTIVE = "active"
    DONE = "done"
    FAILED = "failed"
    FILTERED = "filtered"

    @property
    def final(self) -> bool:
        return self in (Status.DONE, Status.FAILED, Status.FILTERED)


class IllegalTransition(Exception):
    """A conversation was asked to do something its state does not allow (a bug, not bad input)."""


def step_kind(step: int) -> StepKind:
    if step < 0:
        raise ValueError(f"step {step} is negative")
    if step == 0:
        return StepKind.EVOLVE
    return StepKind.ANSWER if step % 2 == 1 else StepKind.FOLLOW_UP


@dataclass(frozen=True, slots=True)
class Plan:
    """What a conversation will be, fixed at creation and stored."""

    conv_id: int
    seed_id: int
    seed_text: str
    language: str  # English name, as the released data names languages
    language_code: str
    task: str
    evol_type: str
    turns: int
    followup_types: tuple[str, ...]

    def __post_init__(self) -> None:
        if not 1 <= self.turns <= 6:
            raise ValueError(f"conversation {self.conv_id}: turns must be 1..6, got {self.turns}")
        if len(self.followup_types) != self.turns - 1:
            raise ValueError(
                f"conversation {self.conv_id}: {self.turns} turns need {self.turns - 1} "
                f"follow-up types, got {len(self.followup_types)}"
            )

    @property
    def steps(self) -> int:
        return 2 * self.turns


@dataclass(frozen=True, slots=True)
class Step:
    """One accepted step output: a user or assistant message and how it was made."""

    index: int
    kind: StepKind
    message: Message  # role "user" for EVOLVE/FOLLOW_UP, "assistant" for ANSWER
    prompt_id: str | None  # evol or multi-turn type that produced a user turn
    prompt: str | None  # the rendered prompt that produced it
    finish_reason: str

    @property
    def turn(self) -> int:
        return self.index // 2 + 1


@dataclass(frozen=True, slots=True)
class Conversation:
    """A conversation's state: its plan, accepted steps, status and the current step's retries."""

    plan: Plan
    steps: tuple[Step, ...] = ()
    status: Status = Status.PENDING
    regenerations: int = 0  # bad outputs regenerated for the current step
    reason: str | None = None

    @property
    def next_step(self) -> int:
        return len(self.steps)

    def __repr__(self) -> str:
        return (
            f"<Conversation {self.plan.conv_id} {self.status.value} "
            f"step {self.next_step}/{self.plan.steps}>"
        )


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

    def max_tokens(self, kind: StepKind) -> int: ...


class Validator(Protocol):
    """Judges one step's output; a failed verdict makes the step run again."""

    def check(self, conv: Conversation, kind: StepKind, text: str) -> Verdict: ...


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


def request_key(conv_id: int, step: int) -> str:
    """The key a step's requests carry (``conv_id:step``), for logs and the request table."""
    return f"{conv_id}:{step}"


def parse_request_key(key: str) -> tuple[int, int] | None:
    """``(conv_id, step)`` from a key made by request_key; None for any other key."""
    conv, _, step = key.partition(":")
    if conv.isdigit() and step.isdigit():
        return int(conv), int(step)
    return None


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
    request = ChatRequest(
        messages=rendered.messages,
        max_tokens=prompter.max_tokens(kind),
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
    max_regenerations: int,
) -> Conversation:
    """The conversation after ``outcome`` for its next step.

    Raises IllegalTransition if the conversation is already final or complete.
    """
    if conv.status.final or conv.next_step >= conv.plan.steps:
        raise IllegalTransition(f"{conv!r} cannot take another step outcome")
    kind = step_kind(conv.next_step)
    if outcome.error is not None or outcome.text is None:
        return replace(conv, status=Status.FAILED, reason=outcome.error or "no reply")
    text = outcome.text.strip()
    verdict = validator.check(conv, kind, text)
    if not verdict.ok:
        if conv.regenerations < max_regenerations:
            return replace(conv, status=Status.ACTIVE, regenerations=conv.regenerations + 1)
        reason = verdict.reason or "invalid_output"
        return replace(
            conv, status=Status.FAILED, reason=f"{reason} after {conv.regenerations + 1} tries"
        )
    role = "assistant" if kind is StepKind.ANSWER else "user"
    step = Step(
        index=conv.next_step,
        kind=kind,
        message=prompter.message(role, text),
        prompt_id=rendered.prompt_id,
        prompt=rendered.prompt,
        finish_reason=outcome.finish_reason,
    )
    steps = (*conv.steps, step)
    status = Status.DONE if len(steps) == conv.plan.steps else Status.ACTIVE
    return replace(conv, steps=steps, status=status, regenerations=0, reason=None)
