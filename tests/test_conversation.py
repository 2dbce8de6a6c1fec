"""The conversation state machine: steps in order, regeneration, failure, illegal moves."""

from __future__ import annotations

import pytest

from engine.chat import Message
from engine.conversation import (
    Conversation,
    Done,
    IllegalTransition,
    Outcome,
    Plan,
    Rendered,
    Status,
    StepKind,
    StepRules,
    Verdict,
    apply,
    next_request,
    step_kind,
)


class FakePrompter:
    """Counts a token per word and renders a recognisable prompt per step kind."""

    def __init__(self) -> None:
        self.rendered: list[StepKind] = []

    def message(self, role: str, content: str) -> Message:
        return Message(role, content, 4 + len(content.split()))

    def max_tokens(
        self, conv: Conversation, kind: StepKind, room: int, prompt_tokens: int | None = None
    ) -> int:
        base = {StepKind.EVOLVE: 10, StepKind.ANSWER: 30, StepKind.FOLLOW_UP: 20}[kind]
        return min(base * 2**room, 100)  # a ceiling of 100

    def observe(
        self, conv: Conversation, kind: StepKind, max_tokens: int, completion_tokens: int
    ) -> None:
        pass

    def render(self, conv: Conversation, kind: StepKind) -> Rendered:
        self.rendered.append(kind)
        if kind is StepKind.ANSWER:
            return Rendered(tuple(s.message for s in conv.steps), None, None)
        prompt = f"{kind.value} for {conv.plan.conv_id}"
        pid = conv.plan.evol_type if kind is StepKind.EVOLVE else "CLARIFICATION"
        return Rendered((self.message("user", prompt),), pid, prompt)


class RejectWord:
    """Rejects any output containing the word 'bad'."""

    def check(self, conv: Conversation, kind: StepKind, text: str) -> Verdict:
        return Verdict(False, "refusal") if "bad" in text else Verdict(True)

    def stamp(self, conv: Conversation, kind: StepKind, text: str) -> int | None:
        return None  # a fake gate vouches for nothing


def plan(turns: int = 2) -> Plan:
    return Plan(
        7,
        3,
        "Explain tides.",
        "Swahili",
        "swh",
        "open_qa",
        "DEEPEN",
        turns,
        tuple("CLARIFICATION" for _ in range(turns - 1)),
    )


def step(
    conv: Conversation,
    text: str,
    *,
    max_regen: int = 2,
    finish: str = "stop",
    keep_partial: bool = True,
) -> Conversation:
    prompter = FakePrompter()
    nxt = next_request(conv, prompter, temperature=0.5)
    assert not isinstance(nxt, Done)
    _request, rendered = nxt
    return apply(
        conv,
        rendered,
        Outcome(text, finish),
        prompter=prompter,
        validator=RejectWord(),
        rules=StepRules(max_regen, keep_partial),
    )


def test_step_kinds_follow_the_method() -> None:
    """Step 0 evolves, odd steps answer, even steps after 0 ask a follow-up."""
    assert [step_kind(i) for i in range(6)] == [
        StepKind.EVOLVE,
        StepKind.ANSWER,
        StepKind.FOLLOW_UP,
        StepKind.ANSWER,
        StepKind.FOLLOW_UP,
        StepKind.ANSWER,
    ]


def test_a_two_turn_conversation_runs_to_done() -> None:
    """Four good outputs make a done conversation with alternating user/assistant turns."""
    conv = Conversation(plan(2))
    for text in ("evolved q", "answer one", "follow up", "answer two"):
        conv = step(conv, text)
    assert conv.status is Status.DONE
    assert [s.message.role for s in conv.steps] == ["user", "assistant", "user", "assistant"]
    assert [s.turn for s in conv.steps] == [1, 1, 2, 2]
    assert conv.steps[0].prompt_id == "DEEPEN" and conv.steps[2].prompt_id == "CLARIFICATION"
    assert isinstance(next_request(conv, FakePrompter(), temperature=0.5), Done)


def test_answer_request_carries_history_and_key() -> None:
    """The answer request reuses stored messages (their counts) and names conversation:step."""
    conv = step(Conversation(plan(1)), "evolved q")
    nxt = next_request(conv, FakePrompter(), temperature=0.5)
    assert not isinstance(nxt, Done)
    request, _ = nxt
    assert request.key == "7:1"
    assert request.messages == (conv.steps[0].message,)
    assert request.max_tokens == 30
    assert request.prompt_tokens == 3 + conv.steps[0].message.tokens


def test_bad_output_is_regenerated_with_a_new_seed() -> None:
    """A rejected output keeps the step, counts a regeneration and changes the sampling seed."""
    conv = Conversation(plan(1))
    first = next_request(conv, FakePrompter(), temperature=0.5)
    again = step(conv, "a bad one")
    assert again.next_step == 0 and again.regenerations == 1 and again.status is Status.ACTIVE
    second = next_request(again, FakePrompter(), temperature=0.5)
    assert not isinstance(first, Done) and not isinstance(second, Done)
    assert first[0].seed != second[0].seed


def test_regeneration_limit_fails_with_reason() -> None:
    """After max_regenerations bad outputs the conversation fails, naming why."""
    conv = Conversation(plan(1))
    for _ in range(3):
        conv = step(conv, "bad", max_regen=2)
    assert conv.status is Status.FAILED
    assert conv.reason == "refusal after 3 tries"


def test_permanent_error_fails_the_conversation() -> None:
    """A permanent request error ends the conversation with that error as its reason."""
    conv = Conversation(plan(1))
    prompter = FakePrompter()
    nxt = next_request(conv, prompter, temperature=0.5)
    assert not isinstance(nxt, Done)
    failed = apply(
        conv,
        nxt[1],
        Outcome(None, error="context_length_exceeded: too long"),
        prompter=prompter,
        validator=RejectWord(),
        rules=StepRules(2),
    )
    assert failed.status is Status.FAILED and failed.reason is not None
    assert failed.reason.startswith("context_length_exceeded")


def test_final_conversation_rejects_more_outcomes() -> None:
    """Applying an outcome to a finished conversation is an IllegalTransition."""
    conv = Conversation(plan(1))
    conv = step(step(conv, "q"), "a")
    assert conv.status is Status.DONE
    with pytest.raises(IllegalTransition, match="cannot take another"):
        apply(
            conv,
            Rendered((), None, None),
            Outcome("x"),
            prompter=FakePrompter(),
            validator=RejectWord(),
            rules=StepRules(1),
        )


@pytest.mark.parametrize(("turns", "followups"), [(0, 0), (7, 6), (3, 1)])
def test_plan_shape_is_checked(turns: int, followups: int) -> None:
    """A plan needs 1..6 turns and one follow-up type per extra turn."""
    with pytest.raises(ValueError, match="turns"):
        Plan(1, 1, "s", "English", "eng", "general", "DEEPEN", turns, ("X",) * followups)


def test_request_key_round_trips_and_refuses_other_keys() -> None:
    """A step's key parses back to (conversation, step); keys not made by it give None."""
    from state.requestlog import parse_request_key, request_key

    assert parse_request_key(request_key(42, 7)) == (42, 7)
    for key in ("", "bench", "3", "3:", ":4", "a:1", "1:b"):
        assert parse_request_key(key) is None


def test_a_truncated_reply_is_asked_again_with_more_room() -> None:
    """finish_reason "length" is never accepted: the step grows its max_tokens and tries again."""
    conv = step(step(Conversation(plan(1)), "q"), "a long answer cut", finish="length")
    assert conv.status is Status.ACTIVE and len(conv.steps) == 1
    assert conv.room == 1 and conv.regenerations == 1
    assert conv.rejected is not None and conv.rejected.reason == "truncated"
    assert conv.rejected.text == "a long answer cut" and conv.rejected.regeneration == 0
    nxt = next_request(conv, FakePrompter(), temperature=0.5)
    assert not isinstance(nxt, Done)
    assert nxt[0].max_tokens == 60  # twice the answer's 30
    done = step(conv, "a complete answer")
    assert done.status is Status.DONE and done.room == 0 and done.rejected is None


def test_a_step_cut_at_the_ceiling_fails_as_truncated() -> None:
    """When the room cannot grow past the ceiling, a cut reply fails the step as truncated."""
    conv = step(Conversation(plan(1)), "q")
    for _ in range(2):  # 30 -> 60 -> 100 (the ceiling)
        conv = step(conv, "cut", finish="length", max_regen=5)
    assert conv.room == 2 and conv.status is Status.ACTIVE
    failed = step(conv, "cut again", finish="length", max_regen=5)
    assert failed.status is Status.FAILED
    assert failed.reason is not None and failed.reason.startswith("truncated after 3 tries")
    assert failed.rejected is not None and failed.rejected.reason == "truncated"


def test_truncation_counts_against_the_step_bound() -> None:
    """A step gives up after max_regenerations + 1 outputs whatever threw them away."""
    conv = step(Conversation(plan(1)), "q")
    conv = step(conv, "cut", finish="length", max_regen=1)
    conv = step(conv, "bad answer", max_regen=1)
    assert conv.status is Status.FAILED and conv.reason == "refusal after 2 tries"


def test_every_rejected_output_is_described_for_storage() -> None:
    """A rejected output names its step, try, reason and text; an accepted one clears it."""
    conv = step(Conversation(plan(1)), "bad one")
    assert conv.rejected is not None
    assert (conv.rejected.step, conv.rejected.regeneration, conv.rejected.reason) == (
        0,
        0,
        "refusal",
    )
    again = step(conv, "bad two")
    assert again.rejected is not None and again.rejected.regeneration == 1
    assert step(again, "good").rejected is None


def test_a_late_failure_keeps_the_good_turns() -> None:
    """Turn 3 failing keeps turns 1-2 as a done conversation and says why it is short."""
    conv = Conversation(plan(4))
    for text in ("q1", "a1", "q2", "a2", "q3"):
        conv = step(conv, text)
    for _ in range(3):
        conv = step(conv, "bad answer")
    assert conv.status is Status.DONE
    assert len(conv.steps) == 4 and conv.turns_made == 2
    assert [s.message.content for s in conv.dropped] == ["q3"]
    assert conv.reason == "kept 2 of 4 turns: turn 3 failed: refusal after 3 tries"
    assert isinstance(next_request(conv, FakePrompter(), temperature=0.5), Done)


def test_keep_partial_off_fails_the_whole_conversation() -> None:
    """With keep_partial off, a late failure fails the conversation as before."""
    conv = Conversation(plan(2))
    for text in ("q1", "a1"):
        conv = step(conv, text)
    for _ in range(3):
        conv = step(conv, "bad q", keep_partial=False)
    assert conv.status is Status.FAILED and conv.dropped == ()


def test_a_first_turn_failure_is_never_partial() -> None:
    """Nothing is kept when turn 1 fails: there is no good prefix."""
    conv = step(Conversation(plan(3)), "q1")
    for _ in range(3):
        conv = step(conv, "bad")
    assert conv.status is Status.FAILED


def test_a_reply_cut_at_a_learned_cap_is_always_asked_again() -> None:
    """A cut at a learned cap below the configured one is m2l's doing: redone with more room
    even when no regeneration is left, and its record says the cap was learned."""
    prompter = FakePrompter()
    conv = Conversation(plan(1))
    nxt = next_request(conv, prompter, temperature=0.5)
    assert not isinstance(nxt, Done)
    _request, rendered = nxt
    rules = StepRules(0)
    learned = apply(
        conv, rendered, Outcome("cut sh", "length", max_tokens=4),
        prompter=prompter, validator=RejectWord(), rules=rules,
    )  # fmt: skip
    assert learned.status is Status.ACTIVE and learned.room == 1
    assert learned.rejected is not None and "= 4 (learned)" in learned.rejected.detail
    # The same cut at the configured cap uses the step's (absent) regenerations: it fails.
    configured = apply(
        conv, rendered, Outcome("cut sh", "length", max_tokens=10),
        prompter=prompter, validator=RejectWord(), rules=rules,
    )  # fmt: skip
    assert configured.status is Status.FAILED and "truncated" in (configured.reason or "")
