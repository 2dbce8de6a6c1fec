"""The conversation values the engine advances and the store persists: step kinds (the one
step -> kind rule, ``step_kind``), statuses, a conversation's plan and its accepted steps.

Values only (no behaviour beyond small derived properties): the state machine that moves them is
``engine.conversation``; the store (``state/``) reads and writes them without importing it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from engine.chat import Message

__all__ = [
    "Conversation",
    "Plan",
    "Rejection",
    "Status",
    "Step",
    "StepKind",
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
    seed_target: str | None = None  # the seed's reference answer, if the seed file has one

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
    # The run's gate's stamp on the message it accepted (engine.gatecheck); None: not stamped.
    gate_check: int | None = None

    @property
    def turn(self) -> int:
        return self.index // 2 + 1


@dataclass(frozen=True, slots=True)
class Rejection:
    """An output thrown away: which step and try made it, why, and the text itself."""

    step: int
    kind: StepKind
    regeneration: int  # 0 for the step's first output, 1 for the first regeneration, ...
    reason: str  # a quality Reason, or "truncated"
    detail: str
    text: str
    finish_reason: str


@dataclass(frozen=True, slots=True)
class Conversation:
    """A conversation's state: its plan, accepted steps, status and the current step's retries.

    ``regenerations`` and ``room`` belong to the current step and are stored with every
    rejected output, so a restart neither repeats a step's tries nor shrinks its room.
    ``rejected`` is set only by the ``apply`` that threw an output away, for the caller to store.
    """

    plan: Plan
    steps: tuple[Step, ...] = ()
    status: Status = Status.PENDING
    regenerations: int = 0  # outputs of the current step thrown away so far
    reason: str | None = None
    room: int = 0  # times the current step's max_tokens grew after a truncated reply
    rejected: Rejection | None = None
    dropped: tuple[Step, ...] = ()  # accepted steps cut off with a failed turn (keep_partial)

    @property
    def next_step(self) -> int:
        return len(self.steps)

    @property
    def turns_made(self) -> int:
        return len(self.steps) // 2

    def __repr__(self) -> str:
        return (
            f"<Conversation {self.plan.conv_id} {self.status.value} "
            f"step {self.next_step}/{self.plan.steps}>"
        )
