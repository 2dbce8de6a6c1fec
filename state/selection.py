"""Balanced seed selection (quotas by language × task) and deterministic conversation plans.

Quotas are computed in Python from the pool's per-cell counts (a few thousand numbers at most);
the sampling itself is one SQL statement ranking rows by a seeded hash, so the pool never comes
into Python. Raises ConfigError for an invalid spec or taxonomy mismatch and StateError when the
pool or the run's tables are missing, or seeds were already selected.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from types import MappingProxyType
from typing import Literal, TypeVar

import duckdb

from engine.errors import ConfigError, StateError
from prompts.taxonomy import Taxonomy
from state.seeds import pool_source

__all__ = [
    "DEFAULT_EVOL_MIX",
    "DEFAULT_TIER_WEIGHTS",
    "EVOL_KINDS",
    "SHORTFALL_MODES",
    "ConversationPlan",
    "LanguageTake",
    "QuotaPlan",
    "SelectionReport",
    "SelectionSpec",
    "Shortfall",
    "apportion",
    "compute_quotas",
    "plan_conversations",
    "plan_quotas",
    "select_seeds",
    "write_plans",
]

TIERS = ("high", "mid", "low")
# What a language short of seeds does with the rest of its quota: give it to the languages that
# have seeds (by their weights), or leave the run that much smaller.
SHORTFALL_MODES = ("redistribute", "skip")
# The two kinds of Guided Evol types (taxonomy files evol_general and evol_task) as evol_mix
# names them; a seed's evols are split between them by weight.
EVOL_KINDS = ("agnostic", "specific")
DEFAULT_EVOL_MIX: Mapping[str, float] = MappingProxyType({"agnostic": 1.0, "specific": 1.0})
DEFAULT_TIER_WEIGHTS: Mapping[str, float] = MappingProxyType({t: 1.0 for t in TIERS})

_WRITE_CHUNK = 10_000
_MIN_BIGINT = -(2**63)
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

K = TypeVar("K", bound=str)


def _check_weights(name: str, weights: Mapping[str, float]) -> None:
    for key, value in weights.items():
        if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise ConfigError(
                f"selection {name}[{key!r}] = {value!r}: weights must be finite numbers >= 0"
            )
    if weights and sum(weights.values()) <= 0:
        raise ConfigError(f"selection {name}: every weight is 0; give at least one a weight > 0")
    if not weights:
        raise ConfigError(f"selection {name}: empty mapping; give weights or use 'uniform'")


@dataclass(frozen=True, slots=True)
class SelectionSpec:
    """How many seeds to pick per language and task, and how to plan their conversations.

    total splits that many seeds over languages by weight; per_language is the quota of a
    language of weight 1 (capped by total when both are given); with neither, every seed of a
    weighted language and task is taken. With total alone and shortfall "redistribute", a
    language short of seeds gives the rest of its share to the languages that have them.
    turn_weights[i] weighs conversations of i + 1 turns,
    up to max_turns. Raises ConfigError when a value is out of range.
    """

    total: int | None = None
    per_language: int | None = None
    language_weights: Mapping[str, float] | Literal["uniform", "tier"] = "uniform"
    tier_weights: Mapping[str, float] = field(default_factory=lambda: DEFAULT_TIER_WEIGHTS)
    task_weights: Mapping[str, float] | Literal["uniform"] = "uniform"
    evols_per_seed: int = 1
    turn_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    max_turns: int = 6
    multiturn: Mapping[str, float] | Literal["uniform"] = "uniform"
    seed: int = 0
    shortfall: Literal["redistribute", "skip"] = "redistribute"
    evol_mix: Mapping[str, float] = field(default_factory=lambda: DEFAULT_EVOL_MIX)

    def __post_init__(self) -> None:
        unknown_kinds = sorted(set(self.evol_mix) - set(EVOL_KINDS))
        if unknown_kinds:
            raise ConfigError(
                f"selection evol_mix: unknown kind {unknown_kinds[0]!r}; give weights for "
                "'agnostic' (task-agnostic conditions) and 'specific' (task-specific evols)"
            )
        _check_weights("evol_mix", self.evol_mix)
        if self.shortfall not in SHORTFALL_MODES:
            raise ConfigError(
                f"selection shortfall = {self.shortfall!r}: use 'redistribute' (a language "
                "short of seeds gives its share to the others) or 'skip'"
            )
        for name in ("total", "per_language", "evols_per_seed", "max_turns"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"selection {name} = {value!r}: expected a whole number >= 1")
        if isinstance(self.language_weights, str):
            if self.language_weights not in ("uniform", "tier"):
                raise ConfigError(
                    f"selection language_weights = {self.language_weights!r}: use 'uniform', "
                    "'tier' or a mapping of language name or ISO 639-3 code to weight"
                )
        else:
            _check_weights("language_weights", self.language_weights)
        unknown = sorted(set(self.tier_weights) - set(TIERS))
        if unknown:
            raise ConfigError(
                f"selection tier_weights: unknown tier {unknown[0]!r}; tiers are {', '.join(TIERS)}"
            )
        _check_weights("tier_weights", self.tier_weights)
        if isinstance(self.task_weights, str):
            if self.task_weights != "uniform":
                raise ConfigError(
                    f"selection task_weights = {self.task_weights!r}: use 'uniform' or a "
                    "mapping of task id to weight"
                )
        else:
            _check_weights("task_weights", self.task_weights)
        _check_weights("turn_weights", {str(i + 1): w for i, w in enumerate(self.turn_weights)})
        if sum(self.turn_weights[: self.max_turns]) <= 0:
            raise ConfigError(
                f"selection turn_weights {self.turn_weights}: no weight > 0 for 1 to "
                f"max_turns={self.max_turns} turns; raise a weight or max_turns"
            )
        if isinstance(self.multiturn, str):
            if self.multiturn != "uniform":
                raise ConfigError(
                    f"selection multiturn = {self.multiturn!r}: use 'uniform' or a mapping of "
                    "multi-turn family to weight"
                )
        else:
            _check_weights("multiturn", self.multiturn)

    def turn_distribution(self) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """(turn counts, weights) a conversation's number of turns is drawn from."""
        weights = self.turn_weights[: self.max_turns]
        return tuple(range(1, len(weights) + 1)), tuple(weights)


@dataclass(frozen=True, slots=True)
class Shortfall:
    """A quota the pool could not fill: a language, a task, or one language × task cell."""

    language: str | None
    task: str | None
    available: int
    quota: int

    def __str__(self) -> str:
        if self.language is not None and self.task is not None:
            name = f"{self.language} / {self.task}"
        elif self.language is not None:
            name = self.language
        else:
            name = f"task {self.task}"
        return f"{name}: {self.available} seeds for a quota of {self.quota}"


@dataclass(frozen=True, slots=True)
class LanguageTake:
    """One language's seeds: its share of the request, the pool's supply, and what was taken."""

    language: str
    language_code: str
    asked: int
    available: int
    taken: int


@dataclass(frozen=True, slots=True)
class QuotaPlan:
    """Quotas per language × task cell, the requested total, shortfalls and per-language figures."""

    cells: dict[tuple[str, str], int]
    requested: int
    shortfalls: tuple[Shortfall, ...]
    languages: tuple[LanguageTake, ...]
    shortfall_mode: str = "redistribute"

    @property
    def taken(self) -> int:
        """Seeds the quotas take in all."""
        return sum(self.cells.values())


@dataclass(frozen=True, slots=True)
class SelectionReport:
    """What select_seeds wrote: seeds selected, conversations they make, and the shortfalls."""

    requested: int
    selected_seeds: int
    conversations: int
    shortfalls: tuple[Shortfall, ...]
    languages: tuple[LanguageTake, ...] = ()
    shortfall_mode: str = "redistribute"

    def lines(self) -> list[str]:
        """The report as short human-readable lines, one per shortfall."""
        head = (
            f"selected {self.selected_seeds} of {self.requested} requested seeds "
            f"({self.conversations} conversations)"
        )
        return [head, *shortfall_summary(self.languages, self.shortfall_mode)] + [
            f"shortfall: {s}" for s in self.shortfalls
        ]

    def __str__(self) -> str:
        return "\n".join(self.lines())


def shortfall_summary(takes: Sequence[LanguageTake], mode: str) -> list[str]:
    """One line saying what languages short of seeds did with their share, if any were short."""
    short = [t for t in takes if t.available < t.asked]
    if not short:
        return []
    topped = sum(max(0, t.taken - t.asked) for t in takes)
    missing = sum(t.asked for t in takes) - sum(t.taken for t in takes)
    languages = f"{len(short)} language{'s' if len(short) != 1 else ''}"
    if topped:
        line = (
            f"{languages} short of seeds: {topped} seeds of their share went to the "
            f"languages that have them (seeds.shortfall = {mode})"
        )
        return [line + (f"; still {missing} short" if missing > 0 else "")]
    return [
        f"{languages} short of seeds: {missing} fewer seeds than asked (seeds.shortfall = {mode})"
    ]


@dataclass(frozen=True, slots=True)
class ConversationPlan:
    """One planned conversation: its seed, evol type and follow-up type for each later turn."""

    conv_id: int
    seed_id: int
    evol_type: str
    turns: int
    followup_types: tuple[str, ...]  # len == turns - 1
    language: str
    language_code: str
    task: str


# --- quotas (pure) ----------------------------------------------------------------------------


def apportion(total: int, weights: Mapping[K, float]) -> dict[K, int]:
    """Split total into whole shares proportional to weights (largest remainder method).

    Exact arithmetic; ties go to the key that sorts first, so the result is deterministic.
    """
    positive = {k: Fraction(w) for k, w in weights.items() if w > 0}
    out = dict.fromkeys(weights, 0)
    denominator = sum(positive.values())
    if total <= 0 or not positive:
        return out
    exact = {k: total * w / denominator for k, w in positive.items()}
    for k, share in exact.items():
        out[k] = math.floor(share)
    left = total - sum(out.values())
    by_remainder = sorted(exact, key=lambda k: (-(exact[k] - math.floor(exact[k])), k))
    for k in by_remainder[:left]:
        out[k] += 1
    return out


def _fill(quota: int, weights: Mapping[str, float], supply: Mapping[str, int]) -> dict[str, int]:
    """Share quota over tasks by weight; a task short of supply gives its rest to the others."""
    alloc = dict.fromkeys(weights, 0)
    active = {t for t, w in weights.items() if w > 0 and supply.get(t, 0) > 0}
    remaining = quota
    while remaining > 0 and active:
        shares = apportion(remaining, {t: weights[t] for t in active})
        capped = {t for t in active if alloc[t] + shares[t] >= supply[t]}
        if not capped:
            for t in active:
                alloc[t] += shares[t]
            break
        for t in sorted(capped):
            remaining -= supply[t] - alloc[t]
            alloc[t] = supply[t]
        active -= capped
    return alloc


@dataclass(frozen=True, slots=True)
class _Lang:
    name: str
    code: str
    tier: str | None


def compute_quotas(
    supply: Mapping[tuple[str, str], int],
    languages: Sequence[tuple[str, str, str | None]],
    spec: SelectionSpec,
) -> tuple[dict[tuple[str, str], int], int, tuple[Shortfall, ...]]:
    """Cell quotas, the requested total and the shortfalls, from (language, task) supply."""
    plan = plan_quotas(supply, languages, spec)
    return plan.cells, plan.requested, plan.shortfalls


def plan_quotas(
    supply: Mapping[tuple[str, str], int],
    languages: Sequence[tuple[str, str, str | None]],
    spec: SelectionSpec,
) -> QuotaPlan:
    """The quota plan for (language, task) supply: cells, shortfalls and per-language figures.

    languages lists (name, ISO 639-3, tier) of the pool's languages. Inside a language a task
    short of seeds passes its rest to the language's other tasks. With a total (and no
    per_language, which is each language's own quota) and shortfall "redistribute", a language
    short of seeds passes the rest of its share to the languages that have seeds, by weight,
    so the total is met whenever the pool holds it and languages with supply stay balanced;
    with "skip" the run is that much smaller.
    """
    pool_langs = {name: _Lang(name, code, tier) for name, code, tier in languages}
    lang_weights, missing_langs = _language_weights(pool_langs, spec)
    all_weights = {**lang_weights, **missing_langs}
    if spec.per_language is not None:
        per = spec.per_language
        lang_quota = {
            k: math.floor(per * Fraction(w) + Fraction(1, 2)) for k, w in all_weights.items()
        }
        if spec.total is not None and sum(lang_quota.values()) > spec.total:
            lang_quota = apportion(spec.total, {k: float(q) for k, q in lang_quota.items()})
    elif spec.total is not None:
        lang_quota = apportion(spec.total, all_weights)
    else:
        # No quota at all: take every seed of the weighted languages.
        lang_quota = {
            k: sum(n for (lang, _), n in supply.items() if lang == k) for k in all_weights
        }
    requested = sum(lang_quota.values())
    asked = dict(lang_quota)
    available = {name: _language_supply(supply, name, spec) for name in lang_weights}
    if spec.shortfall == "redistribute" and spec.total is not None and spec.per_language is None:
        filled = _fill(requested, lang_weights, available)
        lang_quota = {**dict.fromkeys(missing_langs, 0), **filled}
    shortfalls: list[Shortfall] = [
        Shortfall(name, None, 0, asked[name]) for name in sorted(missing_langs) if asked[name] > 0
    ]
    pool_tasks = sorted({task for _, task in supply})
    quotas: dict[tuple[str, str], int] = {}
    task_short: dict[str, int] = {}
    for name in sorted(lang_weights):
        q = lang_quota[name]
        if q <= 0:
            if asked[name] > 0:
                shortfalls.append(Shortfall(name, None, 0, asked[name]))
            continue
        cell_supply = {task: n for (lang, task), n in supply.items() if lang == name}
        if isinstance(spec.task_weights, str):
            weights: dict[str, float] = dict.fromkeys(sorted(cell_supply), 1.0)
        else:
            weights = {t: w for t, w in spec.task_weights.items() if w > 0}
        alloc = _fill(q, weights, cell_supply)
        ideal = apportion(q, weights)
        for task in sorted(weights):
            if alloc[task] > 0:
                quotas[(name, task)] = alloc[task]
            have = cell_supply.get(task, 0)
            # With one task the language's own shortfall below says it all.
            if have < ideal[task] and len(weights) > 1:
                if task not in pool_tasks:
                    task_short[task] = task_short.get(task, 0) + ideal[task]
                else:
                    shortfalls.append(Shortfall(name, task, have, ideal[task]))
        got = sum(alloc.values())
        if got < asked[name]:
            shortfalls.append(Shortfall(name, None, got, asked[name]))
    shortfalls.extend(Shortfall(None, t, 0, n) for t, n in sorted(task_short.items()))
    taken: dict[str, int] = {}
    for (name, _), n in quotas.items():
        taken[name] = taken.get(name, 0) + n
    takes = tuple(
        LanguageTake(
            name,
            pool_langs[name].code if name in pool_langs else "",
            asked.get(name, 0),
            available.get(name, 0),
            taken.get(name, 0),
        )
        for name in sorted(all_weights)
    )
    return QuotaPlan(quotas, requested, tuple(shortfalls), takes, spec.shortfall)


def _language_supply(supply: Mapping[tuple[str, str], int], name: str, spec: SelectionSpec) -> int:
    """Seeds a language has in the tasks the spec weighs (every task when uniform)."""
    if isinstance(spec.task_weights, str):
        return sum(n for (lang, _), n in supply.items() if lang == name)
    weighted = {t for t, w in spec.task_weights.items() if w > 0}
    return sum(n for (lang, task), n in supply.items() if lang == name and task in weighted)


def _language_weights(
    pool: Mapping[str, _Lang], spec: SelectionSpec
) -> tuple[dict[str, float], dict[str, float]]:
    """(weights of pool languages, weights of asked-for languages the pool does not have)."""
    if spec.language_weights == "uniform":
        return dict.fromkeys(pool, 1.0), {}
    if spec.language_weights == "tier":
        return {
            name: float(spec.tier_weights.get(lang.tier or "", 1.0)) for name, lang in pool.items()
        }, {}
    by_key: dict[str, str] = {}
    for name, lang in pool.items():
        by_key[name.casefold()] = name
        by_key[lang.code.casefold()] = name
    found: dict[str, float] = {}
    missing: dict[str, float] = {}
    for key, weight in spec.language_weights.items():
        match = by_key.get(key.strip().casefold())
        if weight <= 0:
            continue
        if match is None:
            missing[key] = float(weight)
        else:
            found[match] = found.get(match, 0.0) + float(weight)
    return found, missing


# --- selection (SQL) ---------------------------------------------------------------------------


def _check_table(conn: duckdb.DuckDBPyConnection, table: str, hint: str) -> int:
    """Row count of table; raises StateError with hint when it does not exist."""
    if not _IDENT.match(table):
        raise StateError(f"table name {table!r} is not a plain SQL identifier")
    try:
        row = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()
    except duckdb.CatalogException:
        raise StateError(f"there is no table {table!r} in this store: {hint}") from None
    return int(row[0]) if row else 0


def select_seeds(
    conn: duckdb.DuckDBPyConnection, spec: SelectionSpec, *, source_table: str = "seed_pool"
) -> SelectionReport:
    """Pick seeds from the pool by the spec's quotas and write them to `seeds`, ids dense from 1.

    Within each language × task cell rows are ranked by md5(seed, norm_key), so the choice is
    fixed by the spec's seed and the data. A pool ingested without text has the chosen rows'
    text read from its seed file. Raises StateError when the pool or `seeds` is missing,
    `seeds` already has rows, or a keys-only pool's file is gone or changed; ConfigError when
    that file cannot be read.
    """
    _check_table(conn, source_table, "ingest a seed file first (ingest_seeds)")
    cursor = conn.execute(f'SELECT * FROM "{source_table}" LIMIT 0')
    has_text = "instruction" in {d[0] for d in cursor.description or []}
    source = None if has_text else pool_source(conn, source_table)
    if not has_text and source is None:
        raise StateError(
            f"the pool {source_table!r} has no text and no {source_table + '_source'!r} table "
            "naming its file; ingest the seed file again"
        )
    existing = _check_table(conn, "seeds", "create the run's schema first")
    if existing:
        raise StateError(
            f"the seeds table already holds {existing} seeds: selection runs once per run; "
            "resume the run, or start a new run to select again"
        )
    cells = conn.execute(
        f'SELECT language, language_code, tier, task, count(*) FROM "{source_table}" GROUP BY ALL'
    ).fetchall()
    supply = {(str(lang), str(task)): int(n) for lang, _, _, task, n in cells}
    languages = sorted({(str(lang), str(code), tier) for lang, code, tier, _, _ in cells})
    plan = plan_quotas(supply, languages, spec)
    quotas = plan.cells
    keys = sorted(quotas)
    conn.execute(
        "CREATE OR REPLACE TEMP TABLE _m2l_quota AS SELECT unnest(?::VARCHAR[]) AS language, "
        "unnest(?::VARCHAR[]) AS task, unnest(?::BIGINT[]) AS quota",
        [[k[0] for k in keys], [k[1] for k in keys], [quotas[k] for k in keys]],
    )
    if source is None:
        scan, params = f'"{source_table}"', list[str]()
        source_column = "s.source"
    else:
        scan, params = source.text_scan()
        source_column = "coalesce(s.source, ?)"
        params = [source.path.name, *params]
    try:
        # seed_id follows each seed's relative position in its cell, so conversations (made in
        # seed_id order) come out interleaved: a run stopped early is still balanced.
        conn.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE _m2l_chosen AS
            WITH hashed AS (
                SELECT p.source_row, p.language, p.language_code, p.task, q.quota,
                       md5_number(CAST(? AS VARCHAR) || ':' || p.norm_key) AS h
                FROM "{source_table}" p JOIN _m2l_quota q USING (language, task)),
            ranked AS (
                SELECT *, row_number() OVER (
                    PARTITION BY language, task ORDER BY h, source_row) AS rn
                FROM hashed)
            SELECT row_number() OVER (ORDER BY (rn - 0.5) / quota, h, source_row) AS seed_id,
                   source_row, language, language_code, task
            FROM ranked WHERE rn <= quota""",
            [spec.seed],
        )
        # The text is joined only now, to the few chosen rows (a small hash table to build).
        conn.execute(
            f"""
            INSERT INTO seeds (seed_id, source_row, instruction, target, language,
                               language_code, task, source, instruction_tokens)
            SELECT c.seed_id, c.source_row, s.instruction, s.target, c.language,
                   c.language_code, c.task, {source_column}, CAST(NULL AS INTEGER)
            FROM _m2l_chosen c JOIN {scan} s ON s.source_row = c.source_row""",
            params,
        )
    except duckdb.Error as exc:
        if source is None:
            raise
        raise source.read_error(exc) from exc
    finally:
        conn.execute("DROP TABLE IF EXISTS temp._m2l_quota")
        conn.execute("DROP TABLE IF EXISTS temp._m2l_chosen")
    selected = _check_table(conn, "seeds", "")
    return SelectionReport(
        requested=plan.requested,
        selected_seeds=selected,
        conversations=selected * spec.evols_per_seed,
        shortfalls=plan.shortfalls,
        languages=plan.languages,
        shortfall_mode=spec.shortfall,
    )


# --- conversation plans ------------------------------------------------------------------------


def _rng(seed: int, seed_id: int) -> random.Random:
    """A generator fixed by (spec seed, seed id) alone, whatever the batch or process."""
    digest = hashlib.blake2b(f"m2l-plan:{seed}:{seed_id}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


@dataclass(frozen=True, slots=True)
class _TaskTypes:
    evols: tuple[str, ...]
    agnostic: tuple[str, ...]
    specific: tuple[str, ...]
    families: Mapping[str, tuple[str, ...]]  # multi-turn types applicable to the task
    flat: tuple[str, ...]  # the same types in one sequence


class _Planner:
    """The per-seed decisions: evol types, turn count, follow-up types; raises ConfigError."""

    __slots__ = ("_family_weights", "_spec", "_taxonomy", "_turns", "_types")

    def __init__(self, spec: SelectionSpec, taxonomy: Taxonomy) -> None:
        self._spec = spec
        self._taxonomy = taxonomy
        self._turns = spec.turn_distribution()
        self._types: dict[str, _TaskTypes] = {}
        known = taxonomy.families()
        if isinstance(spec.multiturn, str):
            self._family_weights: dict[str, float] | None = None
        else:
            for family in spec.multiturn:
                if family not in known:
                    raise ConfigError(
                        f"selection multiturn: unknown multi-turn family {family!r}; the "
                        f"taxonomy at {taxonomy.source} has {', '.join(known)}"
                    )
            self._family_weights = {f: float(w) for f, w in spec.multiturn.items() if w > 0}

    def _for_task(self, task: str) -> _TaskTypes:
        found = self._types.get(task)
        if found is not None:
            return found
        evols = tuple(e.id for e in self._taxonomy.evol_types(task))
        if not evols:
            raise ConfigError(
                f"task {task!r} has no Guided Evol types in the taxonomy at "
                f"{self._taxonomy.source}; add evol entries for it"
            )
        families: dict[str, list[str]] = {}
        for entry in self._taxonomy.multiturn_types(task=task):
            families.setdefault(entry.family, []).append(entry.id)
        if self._family_weights is not None:
            families = {f: ids for f, ids in families.items() if f in self._family_weights}
        if not families and self._turns[0][-1] > 1:
            raise ConfigError(
                f"task {task!r} has no multi-turn types of the chosen families in the taxonomy "
                f"at {self._taxonomy.source}; add some, change multiturn, or set max_turns = 1"
            )
        entries = self._taxonomy.evol_types(task)
        found = _TaskTypes(
            evols,
            tuple(e.id for e in entries if e.kind == "evol_general"),
            tuple(e.id for e in entries if e.kind == "evol_task"),
            MappingProxyType({f: tuple(v) for f, v in families.items()}),
            tuple(t for ids in families.values() for t in ids),
        )
        self._types[task] = found
        return found

    def plan(self, seed_id: int, task: str) -> list[tuple[str, int, tuple[str, ...]]]:
        """(evol type, turns, follow-up types) for each of the seed's conversations."""
        types = self._for_task(task)
        rng = _rng(self._spec.seed, seed_id)
        # Distinct evol types while they last; past that the same shuffled order repeats.
        order = self._evol_order(rng, types)
        out = []
        for i in range(self._spec.evols_per_seed):
            turns = rng.choices(self._turns[0], weights=self._turns[1])[0]
            out.append((order[i % len(order)], turns, self._followups(rng, types, turns - 1)))
        return out

    def _evol_order(self, rng: random.Random, types: _TaskTypes) -> list[str]:
        """A seed's distinct evol types, split between the two kinds by evol_mix, shuffled.

        The specific share of k evols is k × weight, rounded up or down at random in
        proportion, so the mix holds on average even at one evol per seed; a kind with too few
        types for its share passes the rest to the other kind.
        """
        k = self._spec.evols_per_seed
        agnostic, specific = types.agnostic, types.specific
        if k >= len(agnostic) + len(specific):
            chosen = [*agnostic, *specific]
        else:
            mix = self._spec.evol_mix
            weight_a, weight_s = mix.get("agnostic", 0.0), mix.get("specific", 0.0)
            exact = k * weight_s / (weight_a + weight_s)
            n = math.floor(exact) + (1 if rng.random() < exact - math.floor(exact) else 0)
            n = max(k - len(agnostic), min(n, len(specific)))
            chosen = [*rng.sample(specific, n), *rng.sample(agnostic, k - n)]
        return rng.sample(chosen, len(chosen))

    def _followups(self, rng: random.Random, types: _TaskTypes, count: int) -> tuple[str, ...]:
        if count == 0:
            return ()
        if self._family_weights is None and count <= len(types.flat):
            # The usual case (21 types, at most 5 follow-ups): a sample has no repeats.
            return tuple(rng.sample(types.flat, count))
        # No type repeats within a conversation until every allowed type has been used; then
        # the deck is dealt again, without the type just used.
        deck = {f: list(ids) for f, ids in types.families.items()}
        out: list[str] = []
        for _ in range(count):
            names = [f for f, ids in deck.items() if ids]
            if not names:
                deck = {f: [t for t in ids if t != out[-1]] for f, ids in types.families.items()}
                names = [f for f, ids in deck.items() if ids]
                if not names:  # a single type in all: repeating it is all there is
                    deck = {f: list(ids) for f, ids in types.families.items()}
                    names = list(deck)
            if self._family_weights is None or len(names) == 1:
                family = names[0] if len(names) == 1 else None
            else:
                weights = [self._family_weights[f] for f in names]
                family = rng.choices(names, weights=weights)[0]
            if family is None:  # uniform over the types left in every family
                left = [(f, i) for f in names for i in range(len(deck[f]))]
                family, index = left[rng.randrange(len(left))]
            else:
                index = rng.randrange(len(deck[family]))
            out.append(deck[family].pop(index))
        return tuple(out)


def plan_conversations(
    conn: duckdb.DuckDBPyConnection,
    spec: SelectionSpec,
    taxonomy: Taxonomy,
    *,
    batch_size: int = 1000,
) -> Iterator[list[ConversationPlan]]:
    """Plans for every selected seed in seed_id order, batch_size seeds per list; writes nothing.

    conv_id is dense from 1 in (seed_id, evol index) order and every choice is fixed by the
    spec's seed and the seed id, so two runs over the same seeds plan the same conversations.
    Each batch is its own query, so the caller may write between batches on the same
    connection. Raises ConfigError for families or tasks the taxonomy lacks.
    """
    if batch_size < 1:
        raise ConfigError(f"plan batch_size = {batch_size}: expected a whole number >= 1")
    planner = _Planner(spec, taxonomy)
    _check_table(conn, "seeds", "create the run's schema and select seeds first")
    conv_id = 0
    last = _MIN_BIGINT
    while True:
        rows = conn.execute(
            "SELECT seed_id, language, language_code, task FROM seeds WHERE seed_id > ? "
            "ORDER BY seed_id LIMIT ?",
            [last, batch_size],
        ).fetchall()
        if not rows:
            return
        batch: list[ConversationPlan] = []
        for seed_id, language, code, task in rows:
            for evol, turns, followups in planner.plan(seed_id, task):
                conv_id += 1
                batch.append(
                    ConversationPlan(conv_id, seed_id, evol, turns, followups, language, code, task)
                )
        yield batch
        last = rows[-1][0]


def _chunks(plans: Iterable[ConversationPlan], size: int) -> Iterator[list[ConversationPlan]]:
    chunk: list[ConversationPlan] = []
    for plan in plans:
        chunk.append(plan)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def write_plans(conn: duckdb.DuckDBPyConnection, plans: Iterable[ConversationPlan]) -> int:
    """Insert plans as pending conversations, skipping conv_ids already present; returns inserted.

    Opens no transaction of its own, so it can run inside the state writer's. Raises StateError
    when the conversations table is missing.
    """
    _check_table(conn, "conversations", "create the run's schema first")
    created = datetime.now(UTC).replace(tzinfo=None)  # TIMESTAMP columns hold UTC
    inserted = 0
    for chunk in _chunks(plans, _WRITE_CHUNK):
        row = conn.execute(
            """
            INSERT INTO conversations (conv_id, seed_id, evol_type, turns_planned,
                followup_types, language, language_code, task, status, created_at)
            SELECT unnest(?::BIGINT[]), unnest(?::BIGINT[]), unnest(?::VARCHAR[]),
                   unnest(?::SMALLINT[]), unnest(?::VARCHAR[][]), unnest(?::VARCHAR[]),
                   unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), 'pending', ?
            ON CONFLICT (conv_id) DO NOTHING""",
            [
                [p.conv_id for p in chunk],
                [p.seed_id for p in chunk],
                [p.evol_type for p in chunk],
                [p.turns for p in chunk],
                [list(p.followup_types) for p in chunk],
                [p.language for p in chunk],
                [p.language_code for p in chunk],
                [p.task for p in chunk],
                created,
            ],
        ).fetchone()
        inserted += int(row[0]) if row else 0
    return inserted
