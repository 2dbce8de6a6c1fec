"""What a run will cost before it starts: requests, tokens, USD and wall time, from its plan.

The run is planned in an in-memory DuckDB by the same code ``m2l run`` uses (``plan_run``),
seeds are counted with the run's tokenizer, and each step's prompt is built up the way the
prompter builds it: template + seed for the evolve step; system prompt + history for answers;
template + transcript for follow-ups. Only the lengths of the model's replies are unknown; they
are an assumption, stated with the result (a fraction of ``max_tokens`` per step kind, or the
simulator's own reply-length distribution). Raises ConfigError for a bad config or seed file.
"""

from __future__ import annotations

import math
import random
import string
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import duckdb

from budgets.ledger import failure_is_billed
from budgets.prices import Price, PriceTable, from_nano, load_price_table, resolve_price
from engine.chat import REPLY_PRIMING_TOKENS, TOKENS_PER_MESSAGE
from engine.config import Config, StepTokens
from engine.conversation import StepKind
from engine.errors import ConfigError
from engine.events import Hooks
from engine.simulator.languages import ENGLISH, find_language
from engine.simulator.settings import FaultRates, SimSettings
from engine.simulator.text import ReplySpec, composer_for
from engine.tokens import TokenCounter, get_encoding
from prompts.languages import LanguageTable, load_languages
from prompts.taxonomy import PromptEntry, Taxonomy, load_taxonomy
from state.schema import create_schema
from state.setup import plan_run

__all__ = [
    "DEFAULT_OUTPUT_FRACTIONS",
    "ConversationShape",
    "Estimate",
    "Extrapolation",
    "FollowUpShape",
    "KindTotals",
    "LatencyModel",
    "OutputLengths",
    "PilotResult",
    "PlannedConversation",
    "StepLoad",
    "TemplateSizes",
    "WallTime",
    "assumed_outputs",
    "estimate_plans",
    "estimate_run",
    "extrapolate",
    "latency_model",
    "pilot_config",
    "pilot_costs",
    "planned_conversations",
    "run_pilot",
    "shape_of",
    "sim_outputs",
    "step_loads",
    "t95",
    "usd",
    "worst_outputs",
]

# Every message costs its framing plus one token for its role (user, system and assistant are
# one token each in cl100k_base and o200k_base).
MESSAGE_TOKENS = TOKENS_PER_MESSAGE + 1
# A transcript line's "User: " / "Assistant: " label and the blank line after it.
TRANSCRIPT_LABEL_TOKENS = 3
# Room for {language} or {task} in a template whose values are not known yet (a worst case).
NAME_ALLOWANCE = 16

# Assumed reply lengths for a real model, as a fraction of max_tokens: an evolved instruction
# or a follow-up question is usually a short paragraph, an answer fills about half its budget.
# They are a guess; `m2l estimate --pilot N` measures the real ones.
DEFAULT_OUTPUT_FRACTIONS: Mapping[str, float] = {"evolve": 0.35, "answer": 0.5, "follow_up": 0.35}

_KINDS = ("evolve", "answer", "follow_up")


# --- the token model (pure) --------------------------------------------------------------------


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
    kind: StepKind
    prompt: float
    completion: float
    max_tokens: int

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
            StepKind.EVOLVE,
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
        loads.append(StepLoad(2 * turn - 1, StepKind.ANSWER, prompt, a, max_tokens.answer))
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
        loads.append(StepLoad(2 * turn, StepKind.FOLLOW_UP, prompt, f, max_tokens.follow_up))
        content, messages, last_user = content + f, messages + 1, f
    return loads


_SIM_LANGUAGES = 8  # the run's most common languages sampled for the simulator's reply lengths
_SIM_SAMPLES = 400  # replies drawn per step kind, shared among those languages
# The simulator drafts this far past max_tokens before it cuts (engine/simulator/replies.py).
_SIM_OVERDRAFT = 8


def sim_outputs(
    sim: SimSettings, max_tokens: StepTokens, languages: Mapping[str, int], encoding_name: str
) -> OutputLengths:
    """The simulator's mean reply length per step kind, measured by drawing replies from its own
    composer the way it does: a budget uniform in its bounds, text written to it, cut at
    max_tokens. Instructions (evolve, follow-up) are a sentence or two whatever the budget."""
    top = sorted(languages.items(), key=lambda kv: (-kv[1], kv[0]))[:_SIM_LANGUAGES]
    picked = [(find_language(name) or ENGLISH, n) for name, n in top] or [(ENGLISH, 1)]
    weight = sum(n for _, n in picked)
    encoding = get_encoding(encoding_name)
    rng = random.Random(sim.seed)
    means = {}
    for kind, instruction in (("evolve", True), ("answer", False), ("follow_up", True)):
        cap = int(getattr(max_tokens, kind))
        mean = 0.0
        for lang, n in picked:
            composer = composer_for(lang, encoding_name)
            draws = max(8, round(_SIM_SAMPLES * n / weight))
            total = 0
            for _ in range(draws):
                budget = min(
                    rng.randint(sim.min_completion_tokens, sim.max_completion_tokens),
                    cap + _SIM_OVERDRAFT,
                )
                text = composer.reply(ReplySpec(lang, instruction=instruction), rng, budget)
                total += min(len(encoding.encode_ordinary(text)), cap)
            mean += total / draws * n / weight
        means[kind] = mean
    return OutputLengths(
        means["evolve"],
        means["answer"],
        means["follow_up"],
        basis=(
            f"the simulator's replies, sampled from it: {sim.min_completion_tokens}.."
            f"{sim.max_completion_tokens} token budgets cut at max_tokens; instructions are a "
            "sentence or two"
        ),
    )


def assumed_outputs(max_tokens: StepTokens) -> OutputLengths:
    """The reply lengths assumed for a real model: fractions of max_tokens per step kind."""
    fr = DEFAULT_OUTPUT_FRACTIONS
    return OutputLengths(
        fr["evolve"] * max_tokens.evolve,
        fr["answer"] * max_tokens.answer,
        fr["follow_up"] * max_tokens.follow_up,
        basis=(
            "assumed replies of "
            + ", ".join(f"{fr[k]:.0%} of max_tokens.{k}" for k in _KINDS)
            + " (a guess for a real model; --pilot N measures them)"
        ),
    )


def worst_outputs(max_tokens: StepTokens) -> OutputLengths:
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
        """(template tokens, times it quotes the seed) for an evol type; ConfigError if unknown."""
        tokens, fields = self._sized(self._taxonomy.get(evol_type), language, self._task_name(task))
        return tokens, fields["seed"]

    def answer_system(self, language: str, task: str) -> int:
        entry = self._taxonomy.answer_system()
        return self._sized(entry, language, self._task_name(task))[0]

    def follow_up(self, followup_type: str, language: str, task: str) -> FollowUpShape:
        entry = self._taxonomy.get(followup_type)
        tokens, fields = self._sized(entry, language, self._task_name(task))
        return FollowUpShape(
            tokens, fields["conversation"], fields["last_user"], fields["last_assistant"]
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
        worst_follow = FollowUpShape(
            max((t for t, _ in follow), default=0),
            max((f["conversation"] for _, f in follow), default=1),
            max((f["last_user"] for _, f in follow), default=0),
            max((f["last_assistant"] for _, f in follow), default=0),
        )
        return ConversationShape(
            turns=turns,
            seed=seed_tokens * max((f["seed"] for _, f in evol), default=1),
            evolve_template=max((t for t, _ in evol), default=0),
            answer_system=size(self._taxonomy.answer_system())[0],
            follow_ups=(worst_follow,) * max(turns - 1, 0),
        )


# --- planning in memory --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlannedConversation:
    """What the estimate needs of one planned conversation."""

    conv_id: int
    seed_id: int
    language: str
    task: str
    evol_type: str
    followup_types: tuple[str, ...]

    @property
    def turns(self) -> int:
        return len(self.followup_types) + 1


def planned_conversations(
    config: Config, taxonomy: Taxonomy, languages: LanguageTable
) -> tuple[list[PlannedConversation], dict[int, str]]:
    """The run's conversations and seed texts, planned in an in-memory DuckDB by ``plan_run``.

    Raises ConfigError for the seed file, the selection settings or an empty plan.
    """
    conn = duckdb.connect(":memory:")
    try:
        create_schema(conn)
        plan_run(config, taxonomy, languages, {"purpose": "estimate"})(conn)
        rows = conn.execute(
            "SELECT conv_id, seed_id, language, task, evol_type, followup_types "
            "FROM conversations ORDER BY conv_id"
        ).fetchall()
        seeds = dict(conn.execute("SELECT seed_id, instruction FROM seeds").fetchall())
    finally:
        conn.close()
    plans = [
        PlannedConversation(int(c), int(s), str(lang), str(task), str(evol), tuple(fu))
        for c, s, lang, task, evol, fu in rows
    ]
    return plans, {int(k): str(v) for k, v in seeds.items()}


# --- the estimate ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LatencyModel:
    """Seconds per request: time to first token plus a time per completion token."""

    first_token_s: float
    per_token_s: float
    basis: str

    def seconds(self, completion_tokens: float) -> float:
        return self.first_token_s + self.per_token_s * completion_tokens


def latency_model(config: Config, *, simulated: bool) -> LatencyModel:
    if simulated:
        return LatencyModel(config.sim.ttft_s, config.sim.per_token_s, "the simulator's latency")
    return LatencyModel(0.6, 0.02, "assumed 0.6 s to the first token, then 50 tokens/s")


@dataclass(frozen=True, slots=True)
class WallTime:
    """The projected wall time and what bounds it (rpm, tpm, or latency × concurrency)."""

    seconds: float
    bound: str
    bounds: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class KindTotals:
    """Totals for one step kind."""

    requests: int = 0
    prompt_tokens: float = 0.0
    completion_tokens: float = 0.0
    charged_tokens: float = 0.0
    cost_nano: int = 0
    worst_nano: int = 0

    def plus(self, load: StepLoad, cost: int, worst: int) -> KindTotals:
        return KindTotals(
            self.requests + 1,
            self.prompt_tokens + load.prompt,
            self.completion_tokens + load.completion,
            self.charged_tokens + load.charged,
            self.cost_nano + cost,
            self.worst_nano + worst,
        )


@dataclass(frozen=True, slots=True)
class Estimate:
    """A run's projected size, cost and duration, with the assumptions it rests on."""

    model: str
    price: Price | None
    prices_as_of: str
    batch_discount: float
    seeds: int
    conversations: int
    turns: Mapping[int, int]
    by_kind: Mapping[str, KindTotals]
    outputs: OutputLengths
    latency: LatencyModel
    wall: WallTime
    cap_usd: float | None
    notes: tuple[str, ...] = field(default=())

    @property
    def requests(self) -> int:
        return sum(k.requests for k in self.by_kind.values())

    @property
    def prompt_tokens(self) -> float:
        return sum(k.prompt_tokens for k in self.by_kind.values())

    @property
    def completion_tokens(self) -> float:
        return sum(k.completion_tokens for k in self.by_kind.values())

    @property
    def cost_usd(self) -> float | None:
        if self.price is None:
            return None
        return from_nano(sum(k.cost_nano for k in self.by_kind.values()))

    @property
    def worst_usd(self) -> float | None:
        if self.price is None:
            return None
        return from_nano(sum(k.worst_nano for k in self.by_kind.values()))

    def lines(self) -> list[str]:
        """The estimate as short human-readable lines."""
        turns = ", ".join(f"{t}: {n}" for t, n in sorted(self.turns.items()))
        out = [
            f"plan: {self.seeds} seeds → {self.conversations} conversations (turns {turns})",
            f"requests: {self.requests:,} (no regenerations or retries counted)",
            f"tokens: {self.prompt_tokens:,.0f} prompt + {self.completion_tokens:,.0f} completion",
        ]
        for kind in _KINDS:
            k = self.by_kind.get(kind)
            if k is not None and k.requests:
                out.append(
                    f"  {kind:<9} {k.requests:>8,} requests, {k.prompt_tokens / k.requests:>7,.0f} "
                    f"prompt + {k.completion_tokens / k.requests:>5,.0f} completion tokens each"
                )
        out.append(f"replies: {self.outputs.basis}")
        if self.price is None:
            out.append(f"cost: unknown: model {self.model!r} has no price (see [budget.prices])")
        else:
            cost, worst = self.cost_usd or 0.0, self.worst_usd or 0.0
            out.append(
                f"cost: {usd(cost)} (every reply at max_tokens: {usd(worst)}; with the Batch "
                f"API: {usd(cost * (1 - self.batch_discount))})"
            )
            out.append(f"price: {self.price.describe()}")
            if self.cap_usd is not None:
                out.append(self._cap_line(cost))
        bounds = ", ".join(f"{k} {_duration(v)}" for k, v in self.wall.bounds.items())
        out.append(
            f"wall time: about {_duration(self.wall.seconds)} at the configured limits, bound by "
            f"{self.wall.bound} "
            f"({bounds}; latency: {self.latency.basis})"
        )
        out.extend(f"note: {n}" for n in self.notes)
        return out

    def _cap_line(self, cost: float) -> str:
        cap = self.cap_usd or 0.0
        if cost <= cap:
            return f"budget: fits the {usd(cap)} cap ({cost / cap:.0%} of it)" if cap else ""
        done = int(self.conversations * cap / cost) if cost else 0
        return (
            f"budget: over the {usd(cap)} cap; the run would stop at the cap with about "
            f"{done:,} of {self.conversations:,} conversations done"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "price": None
            if self.price is None
            else {
                "entry": self.price.model,
                "input_usd_per_mtok": self.price.input_usd_per_mtok,
                "output_usd_per_mtok": self.price.output_usd_per_mtok,
                "cached_input_usd_per_mtok": self.price.cached_input_usd_per_mtok,
                "origin": self.price.origin,
            },
            "prices_as_of": self.prices_as_of,
            "seeds": self.seeds,
            "conversations": self.conversations,
            "turns": {str(t): n for t, n in sorted(self.turns.items())},
            "requests": self.requests,
            "prompt_tokens": round(self.prompt_tokens),
            "completion_tokens": round(self.completion_tokens),
            "by_kind": {
                kind: {
                    "requests": k.requests,
                    "prompt_tokens": round(k.prompt_tokens),
                    "completion_tokens": round(k.completion_tokens),
                    "cost_usd": from_nano(k.cost_nano) if self.price else None,
                }
                for kind, k in self.by_kind.items()
            },
            "cost_usd": self.cost_usd,
            "worst_case_usd": self.worst_usd,
            "batch_cost_usd": None
            if self.cost_usd is None
            else self.cost_usd * (1 - self.batch_discount),
            "cap_usd": self.cap_usd,
            "assumed_completion_tokens": {k: getattr(self.outputs, k) for k in _KINDS},
            "assumption": self.outputs.basis,
            "wall_seconds": self.wall.seconds,
            "wall_bound": self.wall.bound,
            "wall_bounds": dict(self.wall.bounds),
            "latency": self.latency.basis,
            "notes": list(self.notes),
        }


def usd(amount: float) -> str:
    """Dollars with the precision a small run needs: $1,234.57, $0.3142, $0.004217."""
    if amount >= 1:
        return f"${amount:,.2f}"
    return f"${amount:.4f}" if amount >= 0.01 else f"${amount:.6f}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _limit(*values: float | int | None) -> float | None:
    present = [float(v) for v in values if v is not None]
    return min(present) if present else None


def wall_time(
    config: Config,
    *,
    simulated: bool,
    requests: int,
    charged_tokens: float,
    latency_total_s: float,
    longest_chain_s: float,
    conversations: int,
) -> WallTime:
    """The longest of: requests at the rpm limit, tokens at the tpm limit, latency over the
    conversations that run at once, and the slowest single conversation (its steps are serial)."""
    rpm = _limit(config.limits.rpm, config.sim.rpm if simulated else None)
    tpm = _limit(config.limits.tpm, config.sim.tpm if simulated else None)
    concurrency = min(
        config.run.max_active, config.limits.max_inflight or config.run.max_active, conversations
    )
    bounds: dict[str, float] = {}
    if rpm:
        bounds["rpm"] = requests / rpm * 60.0
    if tpm:
        bounds["tpm"] = charged_tokens / tpm * 60.0
    bounds["latency"] = max(latency_total_s / max(concurrency, 1), longest_chain_s)
    bound = max(bounds, key=lambda k: bounds[k])
    return WallTime(bounds[bound], bound, bounds)


def shape_of(
    plan: PlannedConversation, seed_tokens: Mapping[int, int], sizes: TemplateSizes
) -> ConversationShape:
    """The fixed prompt parts of one planned conversation."""
    evol_tokens, seed_quotes = sizes.evolve(plan.evol_type, plan.language, plan.task)
    return ConversationShape(
        turns=plan.turns,
        seed=seed_quotes * seed_tokens[plan.seed_id],
        evolve_template=evol_tokens,
        answer_system=sizes.answer_system(plan.language, plan.task),
        follow_ups=tuple(sizes.follow_up(t, plan.language, plan.task) for t in plan.followup_types),
    )


def estimate_plans(
    config: Config,
    plans: Sequence[PlannedConversation],
    seed_tokens: Mapping[int, int],
    sizes: TemplateSizes,
    *,
    price: Price | None,
    prices: PriceTable,
    outputs: OutputLengths,
    simulated: bool,
) -> Estimate:
    """Sum the token model over every planned conversation; pure apart from token counting.

    With the simulator, its injected faults add cost: a reply in the wrong language or a
    repetitive one is billed and then regenerated; a reset, truncated or hung reply may have
    been billed, so the ledger counts it at its worst case.
    """
    mt = config.generation.max_tokens
    faults = config.sim.faults if simulated else FaultRates()
    regenerated = faults.wrong_language + faults.repetition
    billed_failures = faults.reset + faults.truncated + faults.hang
    fault_nano = 0
    worst_out = worst_outputs(mt)
    latency = latency_model(config, simulated=simulated)
    totals = {k: KindTotals() for k in _KINDS}
    turns: Counter[int] = Counter()
    latency_total = longest = 0.0
    for plan in plans:
        shape = shape_of(plan, seed_tokens, sizes)
        turns[plan.turns] += 1
        chain = 0.0
        # The worst case lets the history grow too: every earlier reply at its max_tokens.
        for load, bound in zip(
            step_loads(shape, outputs, mt), step_loads(shape, worst_out, mt), strict=True
        ):
            cost = worst = 0
            if price is not None:
                cost = price.cost_nano(round(load.prompt), round(load.completion))
                worst = price.worst_nano(math.ceil(bound.prompt), bound.max_tokens)
                extra = round(
                    regenerated * cost
                    + billed_failures * price.worst_nano(math.ceil(load.prompt), load.max_tokens)
                )
                cost += extra
                fault_nano += extra
            kind = load.kind.value
            totals[kind] = totals[kind].plus(load, cost, worst)
            chain += latency.seconds(load.completion)
        latency_total += chain
        longest = max(longest, chain)
    requests = sum(t.requests for t in totals.values())
    wall = wall_time(
        config,
        simulated=simulated,
        requests=requests,
        charged_tokens=sum(t.charged_tokens for t in totals.values()),
        latency_total_s=latency_total,
        longest_chain_s=longest,
        conversations=len(plans),
    )
    notes = []
    if price is None:
        notes.append(
            f'model {config.provider.model!r} has no price; add [budget.prices."'
            f'{config.provider.model}"] with input and output (USD per 1M tokens)'
        )
    if simulated:
        notes.append("no API key is set: the run goes to the simulator, accounted at these prices")
        if price is not None and fault_nano:
            notes.append(
                f"the simulator's injected faults add about {usd(from_nano(fault_nano))} "
                "(regenerated replies, and failed attempts counted at their worst case)"
            )
    return Estimate(
        model=config.provider.model,
        price=price,
        prices_as_of=prices.as_of.isoformat(),
        batch_discount=prices.batch_discount,
        seeds=len({p.seed_id for p in plans}),
        conversations=len(plans),
        turns=dict(turns),
        by_kind=totals,
        outputs=outputs,
        latency=latency,
        wall=wall,
        cap_usd=config.budget.usd,
        notes=tuple(notes),
    )


def estimate_run(
    config: Config,
    *,
    simulated: bool,
    taxonomy: Taxonomy | None = None,
    languages: LanguageTable | None = None,
    prices: PriceTable | None = None,
) -> Estimate:
    """Plan the run in memory and project it; raises ConfigError for the config or seeds."""
    taxonomy = taxonomy or load_taxonomy(config.taxonomy)
    languages = languages or load_languages()
    prices = prices or load_price_table()
    counter = TokenCounter(
        config.provider.model, unknown_model_encoding=config.provider.unknown_model_encoding
    )
    plans, seeds = planned_conversations(config, taxonomy, languages)
    seed_tokens = {seed_id: counter.count(text) for seed_id, text in seeds.items()}
    price = resolve_price(config.provider.model, prices, config.budget.prices)
    mt = config.generation.max_tokens
    if simulated:
        languages_used = Counter(p.language for p in plans)
        outputs = sim_outputs(config.sim, mt, languages_used, counter.encoding_name)
    else:
        outputs = assumed_outputs(mt)
    return estimate_plans(
        config,
        plans,
        seed_tokens,
        TemplateSizes(taxonomy, counter),
        price=price,
        prices=prices,
        outputs=outputs,
        simulated=simulated,
    )


# --- the pilot -----------------------------------------------------------------------------------

# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom; 1.96 beyond.
_T95 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t95(df: int) -> float:
    """The 97.5th percentile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError("a t interval needs at least two samples")
    return _T95[df - 1] if df <= len(_T95) else 1.96


@dataclass(frozen=True, slots=True)
class Extrapolation:
    """A total projected from a sample mean, with a 95% interval."""

    total: float
    low: float
    high: float


def extrapolate(samples: Sequence[float], population: int) -> Extrapolation:
    """``population`` × the sample mean, with a 95% interval for the total of ``population``
    new draws: the mean's own uncertainty (population² s²/n) plus the spread of the draws
    themselves (population s²). Raises ValueError for fewer than two samples."""
    n = len(samples)
    if n < 2:
        raise ValueError("extrapolating needs at least two pilot conversations")
    mean = sum(samples) / n
    var = sum((x - mean) ** 2 for x in samples) / (n - 1)
    half = t95(n - 1) * math.sqrt(population * population * var / n + population * var)
    total = population * mean
    return Extrapolation(total, max(total - half, 0.0), total + half)


@dataclass(frozen=True, slots=True)
class PilotResult:
    """What N real conversations cost, and the run's total cost projected from them."""

    conversations: int
    status: str
    simulated: bool
    cost_per_conversation: Sequence[float]
    requests: int
    completion_by_kind: Mapping[str, float]
    projection: Extrapolation
    population: int
    wall_s: float

    def lines(self, outputs: OutputLengths | None = None) -> list[str]:
        costs = self.cost_per_conversation
        mean = sum(costs) / len(costs) if costs else 0.0
        where = "the simulator" if self.simulated else "the configured provider"
        p = self.projection
        out = [
            f"pilot: {self.conversations} conversations against {where} ({self.status}, "
            f"{self.requests} requests, {self.wall_s:.0f} s): {usd(mean)} per conversation",
            f"pilot projection for {self.population:,} conversations: {usd(p.total)} "
            f"(95% interval {usd(p.low)} .. {usd(p.high)})",
        ]
        measured = ", ".join(f"{k} {v:.0f}" for k, v in self.completion_by_kind.items())
        if measured:
            line = f"pilot completion tokens per reply: {measured}"
            if outputs is not None:
                line += (
                    " (assumed: "
                    + ", ".join(f"{k} {getattr(outputs, k):.0f}" for k in _KINDS)
                    + ")"
                )
            out.append(line)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "conversations": self.conversations,
            "status": self.status,
            "simulated": self.simulated,
            "requests": self.requests,
            "cost_per_conversation_usd": list(self.cost_per_conversation),
            "completion_tokens_by_kind": dict(self.completion_by_kind),
            "projected_usd": self.projection.total,
            "projected_low_usd": self.projection.low,
            "projected_high_usd": self.projection.high,
            "population": self.population,
            "wall_seconds": self.wall_s,
        }


def pilot_config(config: Config, conversations: int, output_dir: Path) -> Config:
    """The config of a pilot: the same run, with only enough seeds for ``conversations``."""
    seeds = replace(
        config.seeds,
        total=max(1, math.ceil(conversations / config.seeds.evols_per_seed)),
        per_language=None,
    )
    run = replace(config.run, name=f"{config.run.name}-pilot", output_dir=output_dir)
    return replace(config, run=run, seeds=seeds)


def pilot_costs(
    conn: duckdb.DuckDBPyConnection, price: Price | None
) -> tuple[dict[int, int], dict[str, float], int]:
    """(nano per conversation, mean completion tokens per step kind, requests) of a run's log,
    priced as the ledger counts: real usage for 'ok', the worst case for outcomes unknown."""
    per_conv: dict[int, int] = {
        int(c): 0 for (c,) in conn.execute("SELECT conv_id FROM conversations").fetchall()
    }
    completions: dict[str, list[int]] = {k: [] for k in _KINDS}
    requests = 0
    for conv_id, step, status, error_class, prompt, completion, cached, max_tokens in conn.execute(
        """SELECT conv_id, step, status, error_class, prompt_tokens, completion_tokens,
                  cached_tokens, max_tokens FROM requests WHERE conv_id IS NOT NULL"""
    ).fetchall():
        if status == "rejected":
            continue
        requests += 1
        nano = 0
        if status == "ok":
            if price is not None:
                nano = price.cost_nano(prompt, completion or 0, cached or 0)
            kind = "evolve" if step == 0 else "answer" if step % 2 == 1 else "follow_up"
            completions[kind].append(int(completion or 0))
        elif price is not None and (status == "reserved" or failure_is_billed(error_class)):
            nano = price.worst_nano(prompt, max_tokens)
        per_conv[int(conv_id)] = per_conv.get(int(conv_id), 0) + nano
    means = {k: sum(v) / len(v) for k, v in completions.items() if v}
    return per_conv, means, requests


async def run_pilot(
    config: Config,
    conversations: int,
    *,
    env: Mapping[str, str],
    population: int,
    price: Price | None,
) -> PilotResult:
    """Run ``conversations`` real conversations into a temporary run directory, then project
    the full run's cost from them. Raises ConfigError, or what ``m2l run`` raises."""
    from engine.run import execute_run  # the run assembles everything; import it only when used

    if conversations < 2:
        raise ConfigError("--pilot needs at least 2 conversations to give an interval")
    with tempfile.TemporaryDirectory(prefix="m2l-pilot-") as tmp:
        pilot = pilot_config(config, conversations, Path(tmp))
        started = time.monotonic()
        report = await execute_run(pilot, env=env, hooks=Hooks())
        wall = time.monotonic() - started
        with duckdb.connect(str(pilot.run_dir / "state.duckdb"), read_only=True) as conn:
            per_conv, completions, requests = pilot_costs(conn, price)
    costs = [from_nano(n) for _, n in sorted(per_conv.items())]
    return PilotResult(
        conversations=len(costs),
        status=report.result.status.value,
        simulated=pilot.uses_simulator(env),
        cost_per_conversation=tuple(costs),
        requests=requests,
        completion_by_kind=completions,
        projection=extrapolate(costs, population),
        population=population,
        wall_s=wall,
    )
