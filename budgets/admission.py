"""Admission by projected cost, and the run's budget as the run assembly (``engine/app/run.py``)
builds it.

A new conversation starts only when the projected cost of finishing it fits in what the cap
leaves after the projected cost of finishing every conversation already active, so a run that
reaches its cap leaves few conversations half-done. The projection of a step is the running
mean of what that step really cost (all attempts, regenerations included) once a few have
finished; before that, the estimate model's cost for the step (what `m2l estimate` assumes:
replies of a typical length, not every reply at max_tokens) scaled by how far real steps have
differed from theirs; before any data, the estimate itself. The ledger (``budgets.ledger``) is what
guarantees the cap; admission only keeps the run from starting what it cannot finish.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import duckdb

from budgets.estimate import ReplyLengths, assumed_outputs
from budgets.ledger import ZERO, Ledger, Spend, spend_from_log
from budgets.prices import (
    NANO_PER_USD,
    Price,
    PriceTable,
    Pricing,
    load_price_table,
    missing_price_error,
    resolve_price,
    tier_price_error,
    to_nano,
)
from budgets.stepload import KINDS, OutputLengths, TemplateSizes, step_loads, worst_outputs
from engine.clock import Clock, MonotonicClock
from engine.config import Config, StepTokens
from engine.events import (
    BudgetUpdate,
    ConversationFinished,
    Event,
    EventHook,
    RequestDone,
    RequestFailed,
    RequestRetried,
    RunFinished,
    RunStarted,
    StepDone,
)
from engine.formats import usd
from engine.modelprofile import model_profile
from engine.records import Conversation
from engine.tokens import TokenCounter
from prompts.languages import load_languages
from prompts.taxonomy import load_taxonomy
from prompts.tokencost import LanguageFactors, load_token_costs
from state.requestlog import CostModel, FreeCosts, parse_request_key, spend_by

__all__ = [
    "UPDATE_INTERVAL_S",
    "Budget",
    "BudgetAdmission",
    "Projection",
    "expected_step_costs",
    "load_budget",
    "run_price",
    "worst_step_costs",
]

UPDATE_INTERVAL_S = 0.25  # BudgetUpdate events at most this often (a display redraws ~4/s)
MIN_SAMPLES = 3  # finished steps at one index before their mean replaces the scaled worst case
# Prompt tokens reserved on top of m2l's count for a model outside the built-in table, whose
# tokenizer m2l may not match (a model served by vLLM, say): a short reservation breaks the cap.
UNKNOWN_TOKENIZER_MARGIN = 0.10
_SEED_SAMPLE = 1000
_STEP_SLOTS = 12  # 6 turns x (user step + answer)


def _step_of_key(key: str) -> int | None:
    """The step index of a request key, None for a key that names no step."""
    parsed = parse_request_key(key)
    return parsed[1] if parsed is not None else None


class Projection:
    """Expected cost, tokens and requests of each step index of a conversation (pure).

    Built from each step's prior (the estimate model's cost; the name ``worst`` is kept from
    when the prior was the worst case), corrected by what finished steps really cost.
    """

    __slots__ = ("_done", "_estimates", "_min_samples", "_prefix", "_sums", "_worst")

    def __init__(self, worst: Sequence[Spend], *, min_samples: int = MIN_SAMPLES) -> None:
        if not worst:
            raise ValueError("a projection needs the worst case of at least one step")
        self._worst = tuple(worst)
        self._min_samples = min_samples
        self._sums = [Spend() for _ in self._worst]
        self._done = [0] * len(self._worst)
        self._estimates: list[Spend] = []
        self._prefix: list[Spend] = []
        self._refresh()

    @property
    def steps(self) -> int:
        return len(self._worst)

    def observe_request(self, step: int, spend: Spend) -> None:
        """One attempt at ``step`` cost this much (regenerations and failures count too)."""
        if 0 <= step < len(self._worst):
            self._sums[step] += spend
            self._estimates.clear()

    def observe_step(self, step: int, count: int = 1) -> None:
        """``count`` more conversations finished ``step``."""
        if 0 <= step < len(self._worst):
            self._done[step] += count
            self._estimates.clear()

    def estimate(self, step: int) -> Spend:
        if not self._estimates:
            self._refresh()
        return self._estimates[step]

    def span(self, start: int, stop: int) -> Spend:
        """Projected cost of steps ``start`` .. ``stop - 1``."""
        if not self._estimates:
            self._refresh()
        stop = min(stop, len(self._worst))
        return self._prefix[stop] - self._prefix[min(start, stop)]

    def _refresh(self) -> None:
        observed = [i for i, n in enumerate(self._done) if n > 0]
        ratios = tuple(
            _ratio(
                sum(getattr(self._sums[i], dim) for i in observed),
                sum(self._done[i] * getattr(self._worst[i], dim) for i in observed),
            )
            for dim in ("nano", "tokens", "requests")
        )
        estimates = []
        for i, worst in enumerate(self._worst):
            n = self._done[i]
            if n >= self._min_samples:
                s = self._sums[i]
                estimates.append(Spend(-(-s.nano // n), -(-s.tokens // n), -(-s.requests // n)))
            else:
                estimates.append(
                    Spend(
                        math.ceil(worst.nano * ratios[0]),
                        math.ceil(worst.tokens * ratios[1]),
                        math.ceil(worst.requests * ratios[2]),
                    )
                )
        prefix = [Spend()]
        for e in estimates:
            prefix.append(prefix[-1] + e)
        self._estimates, self._prefix = estimates, prefix


def _ratio(observed: int, worst: int) -> float:
    # With no data (or a worst case of zero) keep the worst case as it is.
    return observed / worst if worst > 0 else 1.0


class BudgetAdmission:
    """The scheduler's Admission and an EventHook: tracks what active conversations still need,
    admits a new one only if it fits, and reports BudgetUpdate events for the progress display.
    """

    __slots__ = (
        "_active",
        "_clock",
        "_emit",
        "_last_update",
        "_ledger",
        "_need",
        "_observed",
        "_pending",
        "_priced",
        "_projection",
        "refused",
    )

    def __init__(
        self,
        projection: Projection,
        *,
        ledger: Ledger | None,
        hooks: EventHook,
        start: Spend = ZERO,
        active: Mapping[int, tuple[int, int]] | None = None,
        pending: Mapping[int, int] | None = None,
        priced: bool = True,
        clock: Clock | None = None,
    ) -> None:
        """``active`` maps conv_id → (steps done, steps planned); ``pending`` turns → count."""
        self._projection = projection
        self._ledger = ledger
        self._emit = hooks
        self._observed = start  # spend seen in events, for a run with no ledger
        self._priced = priced
        self._clock: Clock = clock or MonotonicClock()
        self._last_update: float | None = None
        self._active: dict[int, list[int]] = {}
        self._need = [0] * projection.steps
        self._pending: Counter[int] = Counter(pending or {})
        self.refused: str | None = None
        for conv_id, (done, total) in (active or {}).items():
            self._track(conv_id, done, total)

    # --- what is left to do ------------------------------------------------------------------

    def _track(self, conv_id: int, done: int, total: int) -> None:
        self._untrack(conv_id)
        total = min(total, len(self._need))
        self._active[conv_id] = [done, total]
        for i in range(done, total):
            self._need[i] += 1

    def _untrack(self, conv_id: int) -> None:
        entry = self._active.pop(conv_id, None)
        if entry is not None:
            for i in range(entry[0], entry[1]):
                self._need[i] -= 1

    def active_remaining(self) -> Spend:
        """Projected cost of finishing every active conversation."""
        total = Spend()
        for i, n in enumerate(self._need):
            if n:
                e = self._projection.estimate(i)
                total += Spend(e.nano * n, e.tokens * n, e.requests * n)
        return total

    def pending_remaining(self) -> Spend:
        """Projected cost of every conversation not started yet."""
        total = Spend()
        for turns, n in self._pending.items():
            if n > 0:
                e = self._projection.span(0, 2 * turns)
                total += Spend(e.nano * n, e.tokens * n, e.requests * n)
        return total

    def spent(self) -> Spend:
        return self._ledger.spent if self._ledger is not None else self._observed

    def recount(self, before: Spend, after: Spend, *, reported: Spend = ZERO) -> None:
        """An attempt an earlier session left unknown (in the start at ``before``, its worst
        case) has its outcome, which the request log counts as ``after``; ``reported`` is the
        part a RequestDone event already added to what this session observed."""
        if self._ledger is not None:
            self._ledger.recount(before, after)
        else:
            self._observed = self._observed - before + after - reported
        self._update()

    def projected_total(self) -> Spend:
        """Spent so far plus the projected cost of every conversation left to finish."""
        return self.spent() + self.active_remaining() + self.pending_remaining()

    # --- Admission ------------------------------------------------------------------------------

    def admit(self, conv: Conversation) -> bool:
        """Whether ``conv`` may start: its projected cost fits after the active ones'."""
        plan = conv.plan
        if self._ledger is not None:
            need = self.active_remaining() + self._projection.span(conv.next_step, plan.steps)
            # Reservations in flight belong to active steps, already in their projection.
            problem = self._ledger.shortfall(need, count_reserved=False)
            if problem is not None:
                self.refused = (
                    f"no new conversation started: the projected cost of finishing the active "
                    f"ones and one more does not fit ({problem})"
                )
                self._update(force=True)
                return False
        self.refused = None  # a scheduler may ask again once active conversations finish
        if self._pending[plan.turns] > 0:
            self._pending[plan.turns] -= 1
        self._track(plan.conv_id, conv.next_step, plan.steps)
        return True

    # --- EventHook ------------------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        if isinstance(event, RequestDone):
            spend = Spend(to_nano(event.cost_usd), event.prompt_tokens + event.completion_tokens, 1)
            step = _step_of_key(event.key)
            if step is not None:
                self._projection.observe_request(step, spend)
            self._observed += spend
            self._update()
        elif isinstance(event, RequestRetried | RequestFailed):
            step = _step_of_key(event.key)
            if step is not None:
                self._projection.observe_request(step, Spend(0, 0, 1))
            self._update()
        elif isinstance(event, StepDone):
            entry = self._active.get(event.conv_id)
            if entry is not None and entry[0] < entry[1]:
                self._need[entry[0]] -= 1
                self._projection.observe_step(entry[0])
                entry[0] += 1
        elif isinstance(event, ConversationFinished):
            self._untrack(event.conv_id)
        elif isinstance(event, RunStarted | RunFinished):
            # The last replies may come in a burst (a batch's results all at once) inside one
            # update interval: the figures a run ends with are the ledger's final ones.
            self._update(force=True)

    def _update(self, *, force: bool = False) -> None:
        now = self._clock.now()
        if (
            not force
            and self._last_update is not None
            and now - self._last_update < UPDATE_INTERVAL_S
        ):
            return
        self._last_update = now
        self._emit.on_event(self.snapshot(now))

    def snapshot(self, t: float | None = None) -> BudgetUpdate:
        """The budget now, as the event the progress display shows."""
        reserved = self._ledger.reserved.usd if self._ledger is not None else 0.0
        cap = self._ledger.caps.usd if self._ledger is not None else None
        projected = self.projected_total().usd if self._priced else None
        return BudgetUpdate(
            self.spent().usd, reserved, cap, projected, self._clock.now() if t is None else t
        )


# --- the run's budget -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Budget:
    """Everything a run needs of its budget, built once at start from config + request log."""

    costs: CostModel  # for RequestLog(costs=...)
    guard: Ledger | None  # for RequestLog(guard=...); None when no cap is configured
    admission: BudgetAdmission  # for Scheduler(admission=...) and hooks.add(...)
    price: Price | None
    prices: PriceTable
    online_costs: CostModel | None = None  # batch mode: what the online tail pays

    def summary(self) -> list[str]:
        """The budget part of the run's final summary, as short lines."""
        adm = self.admission
        spent = adm.spent()
        lines = []
        if self.price is None:
            lines.append(f"cost: unknown (no price for this model; {spent.tokens:,} tokens)")
        else:
            line = f"cost: {usd(spent.usd)} ({spent.tokens:,} tokens, {spent.requests:,} requests)"
            if self.guard is not None and self.guard.caps.usd is not None:
                line += f" of the {usd(self.guard.caps.usd)} cap"
            lines.append(line)
            remaining = adm.active_remaining() + adm.pending_remaining()
            if remaining.nano > 0:
                lines.append(
                    f"projected: {usd(adm.projected_total().usd)} for the whole run "
                    f"({usd(remaining.usd)} still to spend)"
                )
            lines.append(f"price: {self.price.describe()}")
        if adm.refused is not None:
            lines.append(
                f"budget: {adm.refused}. Conversations already started stay active; raise the "
                "cap in the config and resume with `m2l run CONFIG --force` to continue."
            )
        return lines


def _mean_caps(
    config: Config, factors: Mapping[float, int] | None
) -> tuple[StepTokens, StepTokens]:
    """The visible reply's cap and the cap sent, per step kind, averaged over the planned
    conversations' language token-cost factors (counted; None: unscaled)."""
    caps = model_profile(config).step_caps
    weights = dict(factors) if factors else {1.0: 1}
    total = sum(weights.values())

    def mean(cap: Callable[[str, float], int]) -> StepTokens:
        return StepTokens(
            **{
                kind: math.ceil(sum(cap(kind, f) * n for f, n in weights.items()) / total)
                for kind in KINDS
            }
        )

    return mean(lambda kind, f: caps.visible(kind, factor=f)), mean(
        lambda kind, f: caps.cap(kind, factor=f)
    )


def worst_step_costs(
    config: Config,
    costs: Pricing | None,
    sizes: TemplateSizes,
    seed_tokens: int,
    factors: Mapping[float, int] | None = None,
) -> list[Spend]:
    """The worst case of each step index of a longest conversation (every reply at the
    max_tokens sent, and a reasoning model's hidden reasoning filling the rest of each step's
    cap). ``factors``: the planned conversations' language token-cost factors, counted; the
    caps are their mean, as the prompter scales them per language (None: unscaled)."""
    visible, sent = _mean_caps(config, factors)
    shape = sizes.worst(config.generation.max_turns, seed_tokens)
    out = []
    # The history grows by visible replies only; the cap charged includes the reasoning room.
    for load in step_loads(shape, worst_outputs(visible), sent):
        prompt = math.ceil(load.prompt)
        nano = costs.worst_nano(prompt, load.max_tokens) if costs is not None else 0
        out.append(Spend(nano, prompt + load.max_tokens, 1))
    return out


def expected_step_costs(
    config: Config,
    costs: Pricing | None,
    sizes: TemplateSizes,
    seed_tokens: int,
    outputs: Callable[[StepTokens], OutputLengths],
    factors: Mapping[float, int] | None = None,
) -> list[Spend]:
    """The estimate model's cost of each step index of a longest conversation: replies of the
    lengths ``outputs`` gives for the visible caps (the history grows by them), hidden
    reasoning as expected; ``factors`` as for worst_step_costs."""
    visible, sent = _mean_caps(config, factors)
    hidden = model_profile(config).expected_reasoning
    shape = sizes.worst(config.generation.max_turns, seed_tokens)
    out = []
    for load in step_loads(shape, outputs(visible), sent):
        prompt = math.ceil(load.prompt)
        completion = math.ceil(load.completion + hidden[load.kind.value])
        nano = costs.expected_nano(prompt, completion) if costs is not None else 0
        out.append(Spend(nano, prompt + completion, 1))
    return out


def _typical_seed_tokens(conn: duckdb.DuckDBPyConnection, counter: TokenCounter) -> int:
    # Selection interleaves languages and tasks by seed_id, so the first seeds are a fair sample.
    rows = conn.execute(
        "SELECT instruction FROM seeds ORDER BY seed_id LIMIT ?", [_SEED_SAMPLE]
    ).fetchall()
    if not rows:
        return 0
    return math.ceil(sum(counter.count(str(r[0])) for r in rows) / len(rows))


def _history(conn: duckdb.DuckDBPyConnection, projection: Projection) -> None:
    """Feed the projection with what earlier sessions of this run spent, step by step."""
    # What a step costs when it succeeds: answered attempts' costs, every attempt's request.
    settled = spend_by(conn, "step", per_usd=NANO_PER_USD, settled_only=True)
    for step, (nano, tokens, requests) in settled.items():
        projection.observe_request(step, Spend(nano, tokens, requests))
    for step, n in conn.execute("SELECT step, count(*) FROM messages GROUP BY step").fetchall():
        projection.observe_step(int(step), int(n))


def _language_factors(
    conn: duckdb.DuckDBPyConnection, config: Config, counter: TokenCounter
) -> dict[float, int]:
    """The token-cost factors of the conversations still to run, counted (for their caps)."""
    factors = LanguageFactors(
        load_languages(),
        load_token_costs(),
        counter.encoding_name,
        enabled=config.quality.scale_max_tokens,
    )
    counts: Counter[float] = Counter()
    for code, n in conn.execute(
        "SELECT language_code, count(*) FROM conversations "
        "WHERE status IN ('pending', 'active') GROUP BY 1"
    ).fetchall():
        counts[factors.factor(str(code))] += int(n)
    return dict(counts)


def run_price(config: Config) -> tuple[Price | None, PriceTable]:
    """The price of the run's model (None: unpriced) and the table it came from.

    Raises ConfigError, naming the config file, when a USD cap is set for a model that has no
    price: the run checks this before it creates anything.
    """
    prices = load_price_table()
    model = config.provider.model
    price = resolve_price(model, prices, config.budget.prices)
    caps = config.budget
    if caps.usd is not None and price is None:
        where = f"{config.source}: " if config.source is not None else ""
        raise missing_price_error(
            model,
            prices,
            why=f"{where}budget.usd = {caps.usd:g} caps what this run may spend",
            tier=config.provider.service_tier,
        )
    if caps.usd is not None and price is not None:
        tier_error = tier_price_error(model, price, config.provider.service_tier)
        if tier_error is not None:
            raise tier_error
    return price, prices


def load_budget(
    conn: duckdb.DuckDBPyConnection,
    config: Config,
    hooks: EventHook,
    *,
    reply_lengths: ReplyLengths | None = None,
) -> Budget:
    """Build the run's budget from its config and request log (runs on the writer thread).

    The projection starts from the replies ``reply_lengths`` expects (the simulator's own, as
    `m2l estimate` measures them), or fractions of max_tokens when None. Raises ConfigError
    when a USD cap is set for a model that has no price.
    """
    price, prices = run_price(config)
    model = config.provider.model
    caps = config.budget
    tier = config.provider.service_tier
    pricing = online_pricing = None
    if price is not None:
        known_tokenizer = prices.lookup(model) is not None
        pricing = Pricing(
            price,
            prompt_margin=0.0 if known_tokenizer else UNKNOWN_TOKENIZER_MARGIN,
            tier=tier,
            fallback=config.provider.flex_fallback_after_s is not None,
        )
        online_pricing = pricing
        if config.run.mode == "batch":
            # The Batch API's rates: reservations, the projection and the cap all use them.
            pricing = pricing.batch(prices.batch_discount)
    start = spend_from_log(conn)
    ledger = Ledger(caps, start) if caps.capped else None
    counter = TokenCounter(model, unknown_model_encoding=config.provider.unknown_model_encoding)
    sizes = TemplateSizes(load_taxonomy(config.taxonomy), counter)
    reply_lengths = reply_lengths or (lambda caps, languages, encoding: assumed_outputs(caps))
    languages = dict(
        conn.execute("SELECT language, count(*) FROM conversations GROUP BY 1").fetchall()
    )
    expected = expected_step_costs(
        config,
        pricing,
        sizes,
        _typical_seed_tokens(conn, counter),
        lambda caps: reply_lengths(caps, languages, counter.encoding_name),
        _language_factors(conn, config, counter),
    )
    expected += [expected[-1]] * (_STEP_SLOTS - len(expected))  # a stored plan may be longer
    projection = Projection(expected)
    _history(conn, projection)
    active = {
        int(c): (int(done), 2 * int(turns))
        for c, done, turns in conn.execute(
            "SELECT conv_id, steps_done, turns_planned FROM conversations WHERE status = 'active'"
        ).fetchall()
    }
    pending = {
        int(t): int(n)
        for t, n in conn.execute(
            "SELECT turns_planned, count(*) FROM conversations WHERE status = 'pending' GROUP BY 1"
        ).fetchall()
    }
    admission = BudgetAdmission(
        projection,
        ledger=ledger,
        hooks=hooks,
        start=start,
        active=active,
        pending=pending,
        priced=price is not None,
    )
    return Budget(
        pricing or FreeCosts(), ledger, admission, price, prices, online_pricing or FreeCosts()
    )
