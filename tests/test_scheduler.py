"""The scheduler on virtual time: a stop, its grace period, a second stop, the budget's
admission wait and the in-flight cap, with an in-memory store and a fake model. The same paths
are exercised end to end by the subprocess tests (test_run_signals.py, test_crash.py); these
see exact times without waiting for them."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from engine.chat import ChatRequest, ChatResult, Delivery, Message, Usage
from engine.config import GenerationConfig, LimitsConfig, RetryConfig
from engine.conversation import Conversation, Plan, Rendered, Status, StepKind
from engine.dispatcher import Dispatcher
from engine.errors import ContentFiltered, FatalRunError, RateLimited
from engine.events import ConversationFinished, Event, RateLimitHit, RequestFailed
from engine.headers import RateLimitSnapshot
from engine.limiter import RateLimiter
from engine.maxtokens import CapRule, LengthLearner
from engine.quality.verdict import Verdict
from engine.scheduler import RunStatus, Scheduler, StopControl
from tests.virtualtime import run_virtual

STEP_S = 2.0  # how long the fake model takes per reply, in virtual seconds


class Model:
    """A model that answers after ``delay_s`` (forever when None), noting when each call ran."""

    def __init__(self, delay_s: float | None = STEP_S, *, rate_limited: int = 0) -> None:
        self.delay_s = delay_s
        self.rate_limited = rate_limited  # the first calls answer 429 with a 3 s reset
        self.started: list[tuple[float, str]] = []
        self.finished: list[tuple[float, str]] = []

    async def complete(
        self, request: ChatRequest, *, delivery: Delivery | None = None
    ) -> ChatResult:
        loop = asyncio.get_running_loop()
        self.started.append((loop.time(), request.key))
        if self.rate_limited > 0:
            self.rate_limited -= 1
            raise RateLimited("429 tokens", retry_after=3.0, limit_kind="tokens")
        await asyncio.sleep(self.delay_s if self.delay_s is not None else 10**9)
        self.finished.append((loop.time(), request.key))
        usage = Usage(request.prompt_tokens, 5)
        return ChatResult("fine", "stop", usage, "m", RateLimitSnapshot(), self.delay_s or 0.0)


class Prompter:
    def render(self, conv: Conversation, kind: StepKind) -> Rendered:
        prompt_id = None if kind is StepKind.ANSWER else "p"
        return Rendered((Message("user", f"step {conv.next_step}", 5),), prompt_id, "prompt")

    def message(self, role: str, content: str) -> Message:
        return Message(role, content, 5)

    def max_tokens(
        self, conv: Conversation, kind: StepKind, room: int, prompt_tokens: int | None = None
    ) -> int:
        return 10

    def observe(
        self, conv: Conversation, kind: StepKind, max_tokens: int, completion_tokens: int
    ) -> None:
        pass


class Validator:
    def check(self, conv: Conversation, kind: StepKind, text: str) -> Verdict:
        return Verdict.passed()

    def stamp(self, conv: Conversation, kind: StepKind, text: str) -> int | None:
        return None  # a fake gate vouches for nothing


@dataclass
class Store:
    """The scheduler's store, in memory; notes the virtual time of each write."""

    convs: dict[int, Conversation]
    steps: list[tuple[float, int, int]] = field(default_factory=list)  # (t, conv_id, step)
    finals: dict[int, tuple[float, Status]] = field(default_factory=dict)

    async def load(self, statuses: Sequence[str], after: int, limit: int) -> list[Conversation]:
        ids = sorted(i for i, c in self.convs.items() if c.status.value in statuses and i > after)
        return [self.convs[i] for i in ids[:limit]]

    async def record_step(self, conv: Conversation) -> None:
        self.convs[conv.plan.conv_id] = conv
        self.steps.append((asyncio.get_running_loop().time(), conv.plan.conv_id, conv.next_step))
        if conv.status.final:
            self.finals[conv.plan.conv_id] = (asyncio.get_running_loop().time(), conv.status)

    async def mark_final(self, conv: Conversation) -> None:
        self.convs[conv.plan.conv_id] = conv
        self.finals[conv.plan.conv_id] = (asyncio.get_running_loop().time(), conv.status)

    async def mark_active(self, conv: Conversation) -> None:
        self.convs[conv.plan.conv_id] = conv

    async def record_rejection(
        self,
        conv: Conversation,
        *,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        cost: float,
    ) -> None:
        self.convs[conv.plan.conv_id] = conv

    async def flush(self) -> None:
        return None


def store(n: int, *, turns: int = 1) -> Store:
    plans = [
        Plan(i, i, f"seed {i}", "English", "en", "open_qa", "deepen", turns, ("x",) * (turns - 1))
        for i in range(1, n + 1)
    ]
    return Store({p.conv_id: Conversation(p) for p in plans})


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def on_event(self, event: Event) -> None:
        self.events.append(event)


def scheduler(
    model: Model,
    st: Store,
    stop: StopControl,
    *,
    max_active: int = 8,
    admission: object = None,
    hooks: Recorder | None = None,
    ready: asyncio.Future[None] | None = None,
    prompter: Prompter | None = None,
    warmups: LengthLearner | None = None,
) -> Scheduler:
    limiter = RateLimiter(LimitsConfig(max_inflight=64), clock=LoopClock())
    dispatcher = Dispatcher(model, limiter, policy=RetryConfig(backoff=False), hooks=hooks)
    return Scheduler(
        store=st,
        dispatcher=dispatcher,
        prompter=prompter or Prompter(),
        validator=Validator(),
        generation=GenerationConfig(max_regenerations=0),
        max_active=max_active,
        stop=stop,
        admission=admission,  # type: ignore[arg-type]
        hooks=hooks,
        ready=ready,
        warmups=warmups,
    )


class LoopClock:
    """The running loop's clock (virtual in these tests), for the limiter."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()


def test_all_conversations_finish_when_nothing_stops_them() -> None:
    """Without a stop, every conversation runs to done; steps take the model's time."""
    model, st = Model(), store(3, turns=2)

    async def main() -> RunStatus:
        return (await scheduler(model, st, StopControl()).run(grace_s=5)).status

    status, elapsed = run_virtual(main())
    assert status is RunStatus.FINISHED
    assert all(c.status is Status.DONE for c in st.convs.values())
    assert elapsed == 4 * STEP_S  # four steps in a row, the three conversations side by side


def test_a_stop_lets_in_flight_steps_finish_and_starts_nothing_new() -> None:
    """One stop: steps already sent finish and are stored; no step starts after the stop."""
    model, st = Model(), store(4, turns=3)
    stop = StopControl()

    async def main() -> RunStatus:
        asyncio.get_running_loop().call_at(STEP_S + 0.5, stop.request, "stopped by test")
        return (await scheduler(model, st, stop).run(grace_s=30)).status

    status, elapsed = run_virtual(main())
    assert status is RunStatus.INTERRUPTED
    assert elapsed == 2 * STEP_S  # the second step of each finished; nothing waited for grace
    assert all(t <= STEP_S + 0.5 for t, _ in model.started)
    assert len(model.finished) == len(model.started) == 8  # nothing was cut short
    assert sorted((c, s) for _, c, s in st.steps) == [(c, s) for c in range(1, 5) for s in (1, 2)]
    assert not st.finals  # interrupted conversations stay active, to be resumed


def test_the_grace_period_ends_by_cancelling_what_still_runs() -> None:
    """Replies that never come are cancelled when the grace period is over, not before."""
    model, st = Model(delay_s=None), store(3)
    stop = StopControl()

    async def main() -> RunStatus:
        asyncio.get_running_loop().call_at(1.0, stop.request)
        return (await scheduler(model, st, stop).run(grace_s=7.5)).status

    status, elapsed = run_virtual(main())
    assert status is RunStatus.INTERRUPTED
    assert elapsed == 1.0 + 7.5
    assert len(model.started) == 3 and not model.finished and not st.steps


def test_a_second_stop_cancels_at_once() -> None:
    """A second stop does not wait for the rest of the grace period."""
    model, st = Model(delay_s=None), store(2)
    stop = StopControl()

    async def main() -> RunStatus:
        loop = asyncio.get_running_loop()
        loop.call_at(1.0, stop.request)
        loop.call_at(2.0, stop.request)
        return (await scheduler(model, st, stop).run(grace_s=60)).status

    status, elapsed = run_virtual(main())
    assert status is RunStatus.INTERRUPTED
    assert elapsed == 2.0


class OneAtATime(Recorder):
    """A budget projection that admits a new conversation only while none is running; like the
    real one, it learns that a conversation ended from the run's events."""

    refused = None

    def __init__(self) -> None:
        super().__init__()
        self.running = 0

    def admit(self, conv: Conversation) -> bool:
        if self.running:
            return False
        self.running += 1
        return True

    def on_event(self, event: Event) -> None:
        super().on_event(event)
        if isinstance(event, ConversationFinished):
            self.running -= 1


def test_an_admission_refusal_waits_for_running_conversations() -> None:
    """Refused while others run, a conversation waits for them and then starts; none is lost."""
    model, st = Model(), store(3)
    admission = OneAtATime()

    async def main() -> RunStatus:
        run = scheduler(model, st, StopControl(), admission=admission, hooks=admission)
        return (await run.run(grace_s=5)).status

    status, elapsed = run_virtual(main())
    assert status is RunStatus.FINISHED
    assert elapsed == 3 * 2 * STEP_S  # one conversation (two steps) after the other
    starts = {key.split(":")[0]: t for t, key in reversed(model.started)}
    assert starts == {"1": 0.0, "2": 2 * STEP_S, "3": 4 * STEP_S}
    assert all(c.status is Status.DONE for c in st.convs.values())


def test_an_admission_refusal_with_nothing_running_stops_for_the_budget() -> None:
    """With no conversation left to learn from or to free money, a refusal ends the run."""
    model, st = Model(), store(2)

    class Never:
        refused = "the projected cost does not fit (budget.tokens cap of 10 reached)"

        def admit(self, conv: Conversation) -> bool:
            return False

    async def main() -> tuple[RunStatus, str]:
        result = await scheduler(model, st, StopControl(), admission=Never()).run(grace_s=5)
        return result.status, result.message

    (status, message), elapsed = run_virtual(main())
    assert status is RunStatus.BUDGET_EXHAUSTED and "projected cost" in message
    assert "budget.tokens" in message  # the refusal's own words name the cap
    assert elapsed == 0.0 and not model.started


def test_max_active_caps_the_conversations_in_flight() -> None:
    """No more than max_active conversations run at once; the next starts as one ends."""
    model, st = Model(), store(5)

    async def main() -> RunStatus:
        return (await scheduler(model, st, StopControl(), max_active=2).run(grace_s=5)).status

    status, elapsed = run_virtual(main())
    assert status is RunStatus.FINISHED
    for t, _ in model.started:
        running = sum(1 for s, _ in model.started if s <= t) - sum(
            1 for f, _ in model.finished if f <= t
        )
        assert running <= 2
    assert elapsed == 3 * 2 * STEP_S  # 5 conversations of 2 steps, 2 at a time: 3 rounds


def test_a_429_pauses_the_request_until_the_reset_and_loses_nothing() -> None:
    """The dispatcher waits out the reset a 429 names, without using an attempt, then succeeds."""
    model, st = Model(rate_limited=2), store(1)
    hooks = Recorder()

    async def main() -> RunStatus:
        return (await scheduler(model, st, StopControl(), hooks=hooks).run(grace_s=5)).status

    status, elapsed = run_virtual(main())
    assert status is RunStatus.FINISHED and st.convs[1].status is Status.DONE
    hits = [e for e in hooks.events if isinstance(e, RateLimitHit)]
    assert len(hits) == 2 and not any(isinstance(e, RequestFailed) for e in hooks.events)
    # Each 429 paused every sender for its 3 s reset before the request went out again.
    assert [t for t, _ in model.started[:3]] == [0.0, 3.0, 6.0]
    assert elapsed == 6.0 + 2 * STEP_S


def test_requests_wait_until_their_replies_can_be_judged() -> None:
    """No request goes out before validation is ready: a reply waiting for it would be paid
    for again after a kill."""
    model, st = Model(), store(1)

    async def main() -> RunStatus:
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(5.0, ready.set_result, None)
        return (await scheduler(model, st, StopControl(), ready=ready).run(grace_s=5)).status

    status, elapsed = run_virtual(main())
    assert status is RunStatus.FINISHED
    assert [t for t, _ in model.started] == [5.0, 5.0 + STEP_S]
    assert [t for t, _, _ in st.steps] == [5.0 + STEP_S, 5.0 + 2 * STEP_S]
    assert elapsed == 5.0 + 2 * STEP_S


def test_validation_that_cannot_load_stops_the_run_with_its_reason() -> None:
    """A failed load fails the run with its message; no reply is judged or stored."""
    model, st = Model(), store(2)

    async def main() -> tuple[RunStatus, str]:
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        error = FatalRunError("the language-ID model could not be loaded: damaged")
        asyncio.get_running_loop().call_later(1.0, ready.set_exception, error)
        result = await scheduler(model, st, StopControl(), ready=ready).run(grace_s=5)
        return result.status, result.message

    (status, message), _ = run_virtual(main())
    assert status is RunStatus.FAILED
    assert "language-ID model could not be loaded" in message
    assert st.steps == []


class LearningPrompter(Prompter):
    """A prompter with adaptive max_tokens: 100 tokens configured, learned caps below."""

    def __init__(self, learner: LengthLearner) -> None:
        self.learner = learner
        self.caps: list[tuple[int, str, int]] = []  # (step, step kind, cap)

    def max_tokens(
        self, conv: Conversation, kind: StepKind, room: int, prompt_tokens: int | None = None
    ) -> int:
        if prompt_tokens is None or room > 0:
            return 100
        cap = self.learner.cap(kind.value, "en", prompt=prompt_tokens, full=100)
        self.caps.append((conv.next_step, kind.value, cap))
        return cap

    def observe(
        self, conv: Conversation, kind: StepKind, max_tokens: int, completion_tokens: int
    ) -> None:
        self.learner.observe(kind.value, "en", completion_tokens, max_tokens)


class RefusingModel(Model):
    """Refuses its first ``refuse`` requests for good (a content filter), answers the rest."""

    def __init__(self, refuse: int) -> None:
        super().__init__()
        self.refuse = refuse

    async def complete(
        self, request: ChatRequest, *, delivery: Delivery | None = None
    ) -> ChatResult:
        if self.refuse > 0:
            self.refuse -= 1
            self.started.append((asyncio.get_running_loop().time(), request.key))
            await asyncio.sleep(STEP_S)
            raise ContentFiltered("refused")
        return await super().complete(request, delivery=delivery)


def test_a_step_kind_sends_only_the_probes_it_needs_before_its_caps_are_learned() -> None:
    """With adaptive max_tokens, 20 conversations start together but only min_samples (5)
    first tries of each step kind go out at the configured cap; the others wait for those
    replies and go out with a learned cap. Probes that fail without a reply let others go,
    so the run never stalls."""
    model, st = RefusingModel(refuse=2), store(20)
    learner = LengthLearner(CapRule(min_samples=5), window=100)
    prompter = LearningPrompter(learner)

    async def main() -> RunStatus:
        return (
            await scheduler(
                model, st, StopControl(), max_active=20, prompter=prompter, warmups=learner
            ).run(grace_s=5)
        ).status

    status, elapsed = run_virtual(main())
    assert status is RunStatus.FINISHED
    assert sum(c.status is Status.DONE for c in st.convs.values()) == 18  # two were refused
    first = [t for t, key in model.started if key.endswith(":0")]
    assert first[:5] == [0.0] * 5 and all(t >= STEP_S for t in first[5:])
    configured = [(step, cap) for step, _, cap in prompter.caps if cap == 100]
    # Five evolve probes, two refused: two more go once they fail; then five answer probes.
    assert sorted(step for step, _ in configured) == [0] * 7 + [1] * 5
    assert len(prompter.caps) == 20 + 18 and all(cap < 100 for _, _, cap in prompter.caps[12:])
    assert learner.sources() == {
        "answer": {"configured": 5, "pooled": 13},
        "evolve": {"configured": 7, "pooled": 13},
    }
    assert elapsed == 4 * STEP_S  # two steps, and two step times of waiting for probes
