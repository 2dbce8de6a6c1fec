"""What a run will cost before it starts: requests, tokens, USD and wall time, from its plan.

The run is planned in an in-memory DuckDB by the same code ``m2l run`` uses (``plan_run``),
seeds are counted with the run's tokenizer, and each step's prompt is built up the way the
prompter builds it: template + seed for the evolve step; system prompt + history for answers;
template + transcript for follow-ups. Only the lengths of the model's replies are unknown; they
are an assumption, stated with the result (a fraction of ``max_tokens`` per step kind, or the
simulator's own reply-length distribution). Raises ConfigError for a bad config or seed file.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from budgets.prices import Price, PriceTable, from_nano, load_price_table, resolve_price
from budgets.stepload import (
    KINDS,
    ConversationShape,
    OutputLengths,
    StepLoad,
    TemplateSizes,
    step_loads,
    worst_outputs,
)
from engine.config import Config, StepTokens
from engine.formats import usd
from engine.modelprofile import model_profile
from engine.simsettings import FaultRates
from engine.tokens import TokenCounter
from prompts.languages import LanguageTable, load_languages
from prompts.taxonomy import Taxonomy, load_taxonomy
from prompts.tokencost import LanguageFactors, load_token_costs
from state.schema import connect_memory, create_schema
from state.selection import SelectionReport
from state.setup import SetupReport, plan_run

__all__ = [
    "DEFAULT_OUTPUT_FRACTIONS",
    "Estimate",
    "KindTotals",
    "LatencyModel",
    "PlannedConversation",
    "ReplyLengths",
    "WallTime",
    "assumed_outputs",
    "estimate_plans",
    "estimate_run",
    "latency_model",
    "planned_conversations",
    "shape_of",
]

# Assumed reply lengths for a real model, as a fraction of max_tokens: an evolved instruction
# or a follow-up question is usually a short paragraph, an answer fills about half its budget.
# They are a guess; `m2l estimate --pilot N` measures the real ones.
DEFAULT_OUTPUT_FRACTIONS: Mapping[str, float] = {"evolve": 0.35, "answer": 0.5, "follow_up": 0.35}

# Mean reply lengths per step kind, from max_tokens, the planned conversations per language and
# the tokenizer's encoding name (the simulator's sampler, engine.simulator.sampling.sim_outputs).
ReplyLengths = Callable[[StepTokens, Mapping[str, int], str], OutputLengths]


def assumed_outputs(max_tokens: StepTokens) -> OutputLengths:
    """The reply lengths assumed for a real model: fractions of max_tokens per step kind."""
    fr = DEFAULT_OUTPUT_FRACTIONS
    return OutputLengths(
        fr["evolve"] * max_tokens.evolve,
        fr["answer"] * max_tokens.answer,
        fr["follow_up"] * max_tokens.follow_up,
        basis=(
            "assumed replies of "
            + ", ".join(f"{fr[k]:.0%} of max_tokens.{k}" for k in KINDS)
            + " (a guess for a real model; --pilot N measures them)"
        ),
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
) -> tuple[list[PlannedConversation], dict[int, str], SetupReport]:
    """The run's conversations, seed texts and set-up report, planned in memory by ``plan_run``.

    Raises ConfigError for the seed file, the selection settings or an empty plan.
    """
    conn = connect_memory(config.store)
    try:
        create_schema(conn)
        setup = plan_run(config, taxonomy, languages, {"purpose": "estimate"})(conn)
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
    return plans, {int(k): str(v) for k, v in seeds.items()}, setup


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
    reasoning_tokens: float = 0.0  # hidden, billed as output; not in completion_tokens

    def plus(self, load: StepLoad, cost: int, worst: int) -> KindTotals:
        return KindTotals(
            self.requests + 1,
            self.prompt_tokens + load.prompt,
            self.completion_tokens + load.completion,
            self.charged_tokens + load.charged,
            self.cost_nano + cost,
            self.worst_nano + worst,
            self.reasoning_tokens + load.reasoning,
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
    service_tier: str | None = None  # the tier the cost is priced at (None: standard)
    # Seeds asked, available and taken per language (None when estimated from bare plans).
    selection: SelectionReport | None = None

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
    def reasoning_tokens(self) -> float:
        """Hidden reasoning tokens assumed (billed as output, on top of completion_tokens)."""
        return sum(k.reasoning_tokens for k in self.by_kind.values())

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
        config.run.max_active, config.limits.fixed_inflight or config.run.max_active, conversations
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
    factors: LanguageFactors | None = None,
) -> Estimate:
    """Sum the token model over every planned conversation; pure apart from token counting.

    Each conversation's caps are the ones the run sends for its language (``factors``: the
    languages' token costs; None reads the bundled tables), reasoning room included.

    With the simulator, its injected faults add cost: a reply in the wrong language or a
    repetitive one is billed and then regenerated; a reset, truncated or hung reply may have
    been billed, so the ledger counts it at its worst case.
    """
    profile = model_profile(config)
    caps = profile.step_caps  # the caps sent: a reasoning model's include room to reason
    if factors is None:
        encoding = TokenCounter(
            config.provider.model, unknown_model_encoding=config.provider.unknown_model_encoding
        ).encoding_name
        factors = LanguageFactors(
            load_languages(),
            load_token_costs(),
            encoding,
            enabled=config.quality.scale_max_tokens,
        )
    hidden = profile.expected_reasoning
    tier = config.provider.service_tier
    tiers: tuple[str | None, ...] = (
        (tier, None) if config.provider.flex_fallback_after_s is not None else (tier,)
    )
    faults = config.sim.faults if simulated else FaultRates()
    regenerated = faults.wrong_language + faults.repetition
    billed_failures = faults.reset + faults.truncated + faults.hang
    fault_nano = 0
    sent: dict[str, tuple[StepTokens, OutputLengths]] = {}  # by language
    latency = latency_model(config, simulated=simulated)
    totals = {k: KindTotals() for k in KINDS}
    turns: Counter[int] = Counter()
    latency_total = longest = 0.0
    for plan in plans:
        shape = shape_of(plan, seed_tokens, sizes)
        if plan.language not in sent:
            factor = factors.factor(plan.language)
            visible = StepTokens(**{k: caps.visible(k, factor=factor) for k in KINDS})
            sent[plan.language] = (caps.tokens(factor=factor), worst_outputs(visible))
        mt, worst_out = sent[plan.language]
        turns[plan.turns] += 1
        chain = 0.0
        # The worst case lets the history grow too: every earlier reply at its max_tokens.
        for load, bound in zip(
            step_loads(shape, outputs, mt), step_loads(shape, worst_out, mt), strict=True
        ):
            cost = worst = 0
            load = replace(load, reasoning=hidden[load.kind.value])
            if price is not None:
                cost = price.cost_nano(
                    round(load.prompt), round(load.completion + load.reasoning), tier=tier
                )
                worst = price.worst_nano(math.ceil(bound.prompt), bound.max_tokens, tiers)
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
    learn = config.generation.adaptive_max_tokens
    if wall.bound == "tpm" and learn.active(
        simulated=simulated, tpm_limited=config.limits.tpm is not None
    ):
        notes.append(
            "the TPM-bound time charges each request the configured max_tokens (scaled per "
            "language); once replies are in, adaptive max_tokens charges less and the run is faster"
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
        service_tier=tier,
    )


def estimate_run(
    config: Config,
    *,
    simulated: bool,
    reply_lengths: ReplyLengths | None = None,
    taxonomy: Taxonomy | None = None,
    languages: LanguageTable | None = None,
    prices: PriceTable | None = None,
) -> Estimate:
    """Plan the run in memory and project it, with replies as ``reply_lengths`` measures them
    (fractions of max_tokens when None); raises ConfigError for the config or seeds."""
    taxonomy = taxonomy or load_taxonomy(config.taxonomy)
    languages = languages or load_languages()
    prices = prices or load_price_table()
    counter = TokenCounter(
        config.provider.model, unknown_model_encoding=config.provider.unknown_model_encoding
    )
    plans, seeds, setup = planned_conversations(config, taxonomy, languages)
    seed_tokens = {seed_id: counter.count(text) for seed_id, text in seeds.items()}
    price = resolve_price(config.provider.model, prices, config.budget.prices)
    mt = config.generation.max_tokens
    if reply_lengths is not None:
        languages_used = Counter(p.language for p in plans)
        outputs = reply_lengths(mt, languages_used, counter.encoding_name)
    else:
        outputs = assumed_outputs(mt)
    estimate = estimate_plans(
        config,
        plans,
        seed_tokens,
        TemplateSizes(taxonomy, counter),
        price=price,
        prices=prices,
        outputs=outputs,
        simulated=simulated,
    )
    return dataclasses.replace(estimate, selection=setup.selection)
