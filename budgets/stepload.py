"""The step-load model: the tokens each step of a conversation sends and gets back, built the
way the prompter builds its prompts (template + seed for the evolve step; system prompt + history
for answers; template + transcript for follow-ups). Shared by budget admission (the worst case a
step can cost) and the estimate (the expected cost of a planned run). Pure, apart from counting
template tokens.
"""

from __future__ import annotations

import string
from collections import Counter
from dataclasses import dataclass

from engine.chat import REPLY_PRIMING_TOKENS, TOKENS_PER_MESSAGE
from engine.config import StepTokens
from engine.records import StepKind, step_kind
from engine.tokens import TokenCounter
from prompts.taxonomy import PromptEntry, Taxonomy

__all__ = [
    "KINDS",
    "MESSAGE_TOKENS",
    "NAME_ALLOWANCE",
    "TRANSCRIPT_LABEL_TOKENS",
    "ConversationShape",
    "FollowUpShape",
    "OutputLengths",
    "StepLoad",
    "TemplateSizes",
    "step_loads",
    "worst_outputs",
]

# Every message costs its framing plus one token for its role (user, system and assistant are
# one token each in cl100k_base and o200k_base).
MESSAGE_TOKENS = TOKENS_PER_MESSAGE + 1
# A transcript line's "User: " / "Assistant: " label and the blank line after it.
TRANSCRIPT_LABEL_TOKENS = 3
# Room for {language} or {task} in a template whose values are not known yet (a worst case).
NAME_ALLOWANCE = 16

# The step kinds by name, in step order.
KINDS = ("evolve", "answer", "follow_up")


@dataclass(frozen=True, slots=True)
class OutputLengths:
    """Completion tokens assumed per step kind, and the reason for them."""

    evolve: float
    answer: float
    follow_up: float
    basis: str

    def of(self, kind: StepKind) -> float:
        return float(getattr(self, kind.value))


@dataclass(frozen=True, slots=True)
class FollowUpShape:
    """A follow-up template: its own tokens and how often it quotes the conversation."""

    template: int
    conversation: int = 1  # times {conversation} appears
    last_user: int = 0
    last_assistant: int = 0


@dataclass(frozen=True, slots=True)
class ConversationShape:
    """The fixed parts of one conversation's prompts, in tokens."""

    turns: int
    seed: int  # seed tokens times the times the evol template quotes {seed}
    evolve_template: int
    answer_system: int
    follow_ups: tuple[FollowUpShape, ...]  # one per turn after the first

    def __post_init__(self) -> None:
        if len(self.follow_ups) < self.turns - 1:
            raise ValueError(f"{self.turns} turns need {self.turns - 1} follow-up shapes")


@dataclass(frozen=True, slots=True)
class StepLoad:
    """One step's expected tokens: what is sent, what comes back, and its max_tokens."""

    step: int
    prompt: float
    completion: float  # the visible reply, which later prompts repeat
    max_tokens: int
    reasoning: float = 0.0  # hidden reasoning tokens, billed as output, never repeated

    @property
    def kind(self) -> StepKind:
        return step_kind(self.step)

    @property
    def charged(self) -> float:
        """Tokens charged against TPM at admission (prompt + max_tokens), as OpenAI does."""
        return self.prompt + self.max_tokens


def step_loads(
    shape: ConversationShape, outputs: OutputLengths, max_tokens: StepTokens
) -> list[StepLoad]:
    """Each step's prompt and completion tokens, built the way the prompter builds them."""
    e, a, f = outputs.evolve, outputs.answer, outputs.follow_up
    loads = [
        StepLoad(
            0,
            REPLY_PRIMING_TOKENS + MESSAGE_TOKENS + shape.evolve_template + shape.seed,
            e,
            max_tokens.evolve,
        )
    ]
    # Running sums over the conversation's messages: content tokens and message count.
    content, messages = e, 1
    last_user, last_assistant = e, 0.0
    for turn in range(1, shape.turns + 1):
        history = content + MESSAGE_TOKENS * messages
        prompt = REPLY_PRIMING_TOKENS + MESSAGE_TOKENS + shape.answer_system + history
        loads.append(StepLoad(2 * turn - 1, prompt, a, max_tokens.answer))
        content, messages, last_assistant = content + a, messages + 1, a
        if turn == shape.turns:
            break
        fu = shape.follow_ups[turn - 1]
        transcript = content + TRANSCRIPT_LABEL_TOKENS * messages
        prompt = (
            REPLY_PRIMING_TOKENS
            + MESSAGE_TOKENS
            + fu.template
            + fu.conversation * transcript
            + fu.last_user * last_user
            + fu.last_assistant * last_assistant
        )
        loads.append(StepLoad(2 * turn, prompt, f, max_tokens.follow_up))
        content, messages, last_user = content + f, messages + 1, f
    return loads


def worst_outputs(max_tokens: StepTokens) -> OutputLengths:
    """Every reply at its max_tokens: the most a step's history and reply can be."""
    return OutputLengths(
        max_tokens.evolve,
        max_tokens.answer,
        max_tokens.follow_up,
        basis="every reply at max_tokens",
    )


# --- template sizes ------------------------------------------------------------------------------


def _field_counts(template: str) -> Counter[str]:
    return Counter(name for _, name, _, _ in string.Formatter().parse(template) if name)


class TemplateSizes:
    """Token counts of the taxonomy's templates with the conversation's own text left out."""

    __slots__ = ("_cache", "_counter", "_taxonomy")

    def __init__(self, taxonomy: Taxonomy, counter: TokenCounter) -> None:
        self._taxonomy = taxonomy
        self._counter = counter
        self._cache: dict[tuple[str, str, str], tuple[int, Counter[str]]] = {}

    def _sized(self, entry: PromptEntry, language: str, task: str) -> tuple[int, Counter[str]]:
        key = (entry.id, language, task)
        found = self._cache.get(key)
        if found is None:
            empty = dict.fromkeys(("seed", "conversation", "last_user", "last_assistant"), "")
            text = entry.render(**empty, language=language, task=task)
            found = self._cache[key] = (self._counter.count(text), _field_counts(entry.template))
        return found

    def _task_name(self, task: str) -> str:
        return self._taxonomy.task(task).name

    def evolve(self, evol_type: str, language: str, task: str) -> tuple[int, int]:
        """(template tokens, times it quotes the seed) for an evol type; ConfigError if unknown.

        The template tokens include the evolve system message sent with it.
        """
        name = self._task_name(task)
        tokens, fields = self._sized(self._taxonomy.get(evol_type), language, name)
        return tokens + self._system("evolve", language, name), fields["seed"]

    def _system(self, step: str, language: str, task_name: str) -> int:
        """Tokens of a step's system message, its message framing included."""
        return self._sized(self._taxonomy.system(step), language, task_name)[0] + MESSAGE_TOKENS

    def answer_system(self, language: str, task: str) -> int:
        entry = self._taxonomy.answer_system()
        return self._sized(entry, language, self._task_name(task))[0]

    def follow_up(self, followup_type: str, language: str, task: str) -> FollowUpShape:
        entry = self._taxonomy.get(followup_type)
        name = self._task_name(task)
        tokens, fields = self._sized(entry, language, name)
        return FollowUpShape(
            tokens + self._system("follow_up", language, name),
            fields["conversation"],
            fields["last_user"],
            fields["last_assistant"],
        )

    def worst(self, turns: int, seed_tokens: int) -> ConversationShape:
        """A conversation shape no planned one exceeds, for a seed of ``seed_tokens`` tokens."""

        def size(entry: PromptEntry) -> tuple[int, Counter[str]]:
            tokens, fields = self._sized(entry, "", "")
            return tokens + NAME_ALLOWANCE * (fields["language"] + fields["task"]), fields

        evol = [
            size(e)
            for e in (*self._taxonomy.of_kind("evol_general"), *self._taxonomy.of_kind("evol_task"))
        ]
        follow = [size(e) for e in self._taxonomy.of_kind("multiturn")]
        evolve_system = size(self._taxonomy.system("evolve"))[0] + MESSAGE_TOKENS
        follow_system = size(self._taxonomy.system("follow_up"))[0] + MESSAGE_TOKENS
        worst_follow = FollowUpShape(
            max((t for t, _ in follow), default=0) + follow_system,
            max((f["conversation"] for _, f in follow), default=1),
            max((f["last_user"] for _, f in follow), default=0),
            max((f["last_assistant"] for _, f in follow), default=0),
        )
        return ConversationShape(
            turns=turns,
            seed=seed_tokens * max((f["seed"] for _, f in evol), default=1),
            evolve_template=max((t for t, _ in evol), default=0) + evolve_system,
            answer_system=size(self._taxonomy.answer_system())[0],
            follow_ups=(worst_follow,) * max(turns - 1, 0),
        )
