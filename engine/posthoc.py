"""The post-hoc filter pass (``m2l filter RUN``): the quality filters over every done conversation.

Conversations are read in conv_id order, a batch at a time; one failing a filter becomes
'filtered' with a stable ``filter_reason``, and nothing is deleted. Turn checks mirror the run's
inline validation (engine.validation): user turns as instructions, answers as replies against
the earlier answers. Near and exact duplicates need the whole run, so only this pass finds them:
the earlier conversation of a pair stays, the later one is filtered. Each clean conversation's
fingerprint waits in a TEMP table of the pass (state.fingerprints) until every batch is judged;
then only the conversations sharing a key with another are fed, in conv_id order, to one
NearDuplicateIndex, so the pass holds the run's duplicated texts, not the run. A conversation
whose every message carries the stamp of a gate identical to this pass's (engine.gatecheck: the
same code, settings, language table and identifier, the same text after the same turns) passed
these very turn checks when the run stored it: only its duplicates are checked (``recheck``
checks it in full all the same). Only 'done' conversations are read and a filtered one is never
restored, so a second pass over the same store changes nothing, and a pass stopped midway (its
turn findings marked a batch at a time, its duplicates a chunk at a time at the end) is finished
by running it again. Raises StateError when the store is missing, busy or damaged, and
ConfigError when a conversation's language is not in the language table.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import duckdb
import orjson

from engine._typed_toml import from_table
from engine.config import StoreConfig
from engine.errors import ConfigError
from engine.gatecheck import chain, conversation_key, gate_fingerprint
from engine.quality import (
    DEFAULT_FILTER_CONFIG,
    Expectation,
    FilterConfig,
    LanguageDetector,
    LanguageLike,
    NearDuplicateIndex,
    check_evolved,
    check_instruction,
    check_reply,
    default_detector,
)
from engine.quality.analysis import Analysis, joined_units
from engine.quality.dedup import Fingerprint
from engine.quality.expect import LanguageNames, expect_language
from engine.quality.langid import rank_ahead_for_checks
from prompts.languages import (
    Language,
    LanguageTable,
    UnknownLanguage,
    load_language_names,
    load_languages,
)
from state.export import open_run
from state.fingerprints import RunFingerprints
from state.schema import STATE_FILE, release_cache, stored_store_config

__all__ = [
    "BATCH_CONVERSATIONS",
    "MAX_DEFAULT_WORKERS",
    "FilterReport",
    "Finding",
    "Judged",
    "PosthocFilter",
    "StoredConversation",
    "check_turns",
    "default_workers",
    "filter_run",
    "filter_with",
]

# Conversations read (and updated) per transaction: a few MB of text at most.
BATCH_CONVERSATIONS = 500

# Worker processes by default at most: past this, reading and marking in the parent and
# starting the workers cost more than another worker saves.
MAX_DEFAULT_WORKERS = 8

# Batches read between two releases of DuckDB's cache (_batches).
_RELEASE_EVERY = 8

# Examples kept per reason for the report, so a user can look at what was filtered.
_SAMPLES_PER_REASON = 3


@dataclass(frozen=True, slots=True)
class StoredConversation:
    """A done conversation as the store holds it: its language code and its steps in order."""

    conv_id: int
    language_code: str
    steps: tuple[tuple[str, str], ...]  # (kind, content) for steps 0, 1, 2, ...
    task: str = "general"
    evol_type: str = ""
    seed_text: str = ""
    seed_target: str | None = None
    # Each step's stamp from the run's gate (engine.gatecheck), None where it has none.
    gate_checks: tuple[int | None, ...] = ()

    def text(self) -> str:
        """Every turn, user and assistant, one after the other: what duplicates compare."""
        return "\n".join(content for _, content in self.steps)


@dataclass(frozen=True, slots=True)
class Finding:
    """Why one conversation is filtered: the reason, the step at fault (None: all), and detail."""

    conv_id: int
    reason: str
    step: int | None
    detail: str


@dataclass(frozen=True, slots=True)
class FilterReport:
    """What a pass did (or, in a dry run, would do): conversations checked and filtered."""

    checked: int
    by_reason: tuple[tuple[str, int], ...]  # most frequent first
    samples: tuple[Finding, ...]
    dry_run: bool
    # outputs the run threw away inline, by reason (filled when asked to include them)
    rejected: tuple[tuple[str, int], ...] = ()
    # of ``checked``, those whose turns the run's gate had accepted (stamps matched): only
    # their duplicates were checked here
    on_gate: int = 0

    @property
    def filtered(self) -> int:
        return sum(n for _, n in self.by_reason)


# What a conversation says of itself: its turn finding, or its duplicate fingerprint; and
# whether its turns were taken on the run's gate (not checked again).
Judged = tuple[Finding | None, Fingerprint | None, bool]


def check_turns(
    conv: StoredConversation,
    language: LanguageLike,
    config: FilterConfig = DEFAULT_FILTER_CONFIG,
    detector: LanguageDetector | None = None,
    names: LanguageNames | None = None,
    analyses: Sequence[Analysis] | None = None,
) -> Finding | None:
    """The first turn of ``conv`` that fails a filter, or None when every turn passes.

    With ``names`` (and a table Language), each turn is judged against the language it should
    be in, as the run judged it inline (a translation's target, a cross-lingual passage,
    code-mixing); without, every turn must be in ``language``. ``analyses``: one Analysis per
    step, to share with the duplicate check (made here if not given).
    """
    if not conv.steps:
        return Finding(conv.conv_id, "empty", None, "a done conversation with no stored turns")
    if analyses is None:
        analyses = [Analysis(content) for _, content in conv.steps]
    answers: list[Analysis] = []
    user_turns: list[str] = []
    for step, ((kind, content), analysis) in enumerate(zip(conv.steps, analyses, strict=True)):
        expect: LanguageLike | Expectation = language
        if names is not None and isinstance(language, Language):
            expect = expect_language(
                language=language,
                kind=kind,
                task=conv.task,
                evol_type=conv.evol_type,
                turn=len(user_turns),
                instruction=user_turns[-1] if user_turns else None,
                seed_target=conv.seed_target,
                names=names,
                detector=detector or default_detector(),
            )
        if kind == "answer":
            verdict = check_reply(
                analysis, language=expect, previous=answers, config=config, detector=detector
            )
            answers.append(analysis)
        else:
            verdict = check_instruction(analysis, language=expect, config=config, detector=detector)
            if verdict.ok and step == 0 and conv.seed_text:
                verdict = check_evolved(analysis, conv.seed_text, conv.seed_target, config)
            user_turns.append(content)
        if not verdict.ok:
            return Finding(conv.conv_id, str(verdict.reason), step, verdict.detail)
    return None


class PosthocFilter:
    """Judges conversations in conv_id order; holds the run-wide duplicate index between them."""

    __slots__ = (
        "_config",
        "_detector",
        "_fingerprint",
        "_index",
        "_languages",
        "_names",
        "_recheck",
        "_resolved",
    )

    def __init__(
        self,
        languages: LanguageTable,
        config: FilterConfig = DEFAULT_FILTER_CONFIG,
        detector: LanguageDetector | None = None,
        recheck: bool = False,
    ) -> None:
        """``recheck``: check every conversation's turns, also those the run's gate stamped."""
        self._languages = languages
        self._config = config
        self._detector = detector
        self._recheck = recheck
        self._index = NearDuplicateIndex.from_config(config)
        self._names = LanguageNames(load_language_names(), languages)
        self._resolved: dict[str, LanguageLike] = {}
        # Stamps vouch for the default identifier only (engine.validation stamps with it).
        self._fingerprint = (
            None if recheck or detector is not None else gate_fingerprint(config, languages)
        )

    def check(self, conv: StoredConversation) -> Finding | None:
        """Why ``conv`` must be filtered, or None; raises ConfigError for an unknown language."""
        # Each turn analysed once, for the turn checks and the duplicate check alike.
        analyses = [Analysis(content) for _, content in conv.steps]
        return self.settle(conv.conv_id, self._judge(conv, analyses, self.on_gate(conv)))

    def check_many(self, convs: Sequence[StoredConversation]) -> list[Finding | None]:
        """``[check(conv) for conv in convs]``, with the language model reading every turn's
        text in one pass first (the same rankings, made together: several times faster than
        one text at a time)."""
        judged = self.judge_many(convs)
        return [self.settle(conv.conv_id, j) for conv, j in zip(convs, judged, strict=True)]

    def judge_many(self, convs: Sequence[StoredConversation]) -> list[Judged]:
        """What each of ``convs`` says of itself, without the run-wide duplicate index: its
        turn finding, or (when it has none and duplicates are checked) its fingerprint; and
        whether its turns were taken on the run's gate (``on_gate``) instead of checked.

        A pure function of the conversations, so worker processes may make it; ``settle``
        then applies the index in conv_id order. Raises ConfigError for an unknown language.
        """
        # A batch's checks make some 100,000 small tuples, lists and sets (units, n-grams,
        # rankings), none of them in a reference cycle: reference counting frees them all, and
        # the cyclic collector, which would scan them again and again (about a tenth of the
        # pass's CPU), waits until the batch is judged.
        collecting = gc.isenabled()
        gc.disable()
        try:
            analyses = [[Analysis(content) for _, content in conv.steps] for conv in convs]
            taken = [self.on_gate(conv) for conv in convs]
            config = self._config
            if config.check_language and not all(taken):
                detector = self._detector if self._detector is not None else default_detector()
                every = [
                    analysis
                    for turns, on_gate in zip(analyses, taken, strict=True)
                    if not on_gate
                    for analysis in turns
                ]
                rank_ahead_for_checks(every, detector, config.language_min_chars)
            return [
                self._judge(conv, turns, on_gate)
                for conv, turns, on_gate in zip(convs, analyses, taken, strict=True)
            ]
        finally:
            if collecting:
                gc.enable()

    def settle(self, conv_id: int, judged: Judged) -> Finding | None:
        """Why conversation ``conv_id`` must be filtered, from what ``judge_many`` said of it
        and the conversations settled before it (which it joins when it is clean)."""
        finding, fingerprint, _ = judged
        if finding is not None or fingerprint is None:
            # A finding is not indexed: a conversation filtered for its own faults must not
            # make a clean later copy of it look like the duplicate.
            return finding
        match = self._index.add_fingerprint(conv_id, fingerprint)
        if match is None:
            return None
        verdict = match.verdict()
        return Finding(conv_id, str(verdict.reason), None, verdict.detail)

    def recipe(self) -> tuple[LanguageTable, FilterConfig, LanguageDetector | None, bool]:
        """The arguments that build this filter again (in another process), index empty."""
        return self._languages, self._config, self._detector, self._recheck

    def on_gate(self, conv: StoredConversation) -> bool:
        """Whether every step of ``conv`` carries the stamp of a gate identical to this
        filter's turn checks (so they would all pass again): never with ``recheck``."""
        fingerprint = self._fingerprint
        stamps = conv.gate_checks
        if fingerprint is None or not conv.steps or len(stamps) != len(conv.steps):
            return False
        key = conversation_key(
            fingerprint,
            language_code=conv.language_code,
            task=conv.task,
            evol_type=conv.evol_type,
            seed_text=conv.seed_text,
            seed_target=conv.seed_target,
        )
        previous: int | None = None
        for (kind, content), stamp in zip(conv.steps, stamps, strict=True):
            if stamp is None or stamp != chain(key, previous, kind, content):
                return False
            previous = stamp
        return True

    def _judge(
        self, conv: StoredConversation, analyses: Sequence[Analysis], on_gate: bool
    ) -> Judged:
        finding = (
            None
            if on_gate
            else check_turns(
                conv, self._language(conv), self._config, self._detector, self._names, analyses
            )
        )
        if finding is not None or not self._config.near_duplicates:
            return finding, None, on_gate
        return None, self._index.fingerprint(conv.text(), joined_units(analyses)), on_gate

    def _language(self, conv: StoredConversation) -> LanguageLike:
        code = conv.language_code
        found = self._resolved.get(code)
        if found is None:
            try:
                found = self._languages.lookup(code)
            except UnknownLanguage as exc:
                raise ConfigError(f"conversation {conv.conv_id}: {exc}") from exc
            self._resolved[code] = found
        return found


def filter_run(
    run_dir: Path,
    *,
    dry_run: bool = False,
    config: FilterConfig | None = None,
    languages: LanguageTable | None = None,
    detector: LanguageDetector | None = None,
    batch_size: int = BATCH_CONVERSATIONS,
    include_rejected: bool = False,
    workers: int = 1,
    recheck: bool = False,
) -> FilterReport:
    """Run the pass over the run at ``run_dir``, holding its store exclusively unless dry.

    ``config`` defaults to the [quality] section the run was made with. With
    ``include_rejected`` the report also counts the outputs the run threw away inline. With
    ``recheck`` every conversation's turns are checked, also those the run's gate stamped.
    ``workers`` processes judge the conversations (see ``filter_with``). Raises StateError
    when the store is missing, held by a running m2l process or damaged, ConfigError for a
    language the table does not know or a stored [quality] that no longer loads, and
    engine.filterpool.WorkerDied when a worker process dies.
    """
    conn = open_run(run_dir, action="filter it", write=not dry_run)
    try:
        quality = config if config is not None else run_quality(conn)
        checker = PosthocFilter(languages or load_languages(), quality, detector, recheck)
        report = filter_with(conn, checker, dry_run=dry_run, batch_size=batch_size, workers=workers)
        if include_rejected:
            rows = conn.execute(
                "SELECT reason, count(*) FROM rejections GROUP BY 1 ORDER BY 2 DESC, 1"
            ).fetchall()
            report = replace(report, rejected=tuple((str(r), int(n)) for r, n in rows))
        return report
    finally:
        conn.close()


def run_quality(conn: duckdb.DuckDBPyConnection) -> FilterConfig:
    """The [quality] section of the config the run on ``conn`` was made with (defaults if none).

    Raises ConfigError when the stored section does not load (made by another m2l version).
    """
    row = conn.execute("SELECT value FROM run_meta WHERE key = 'config_json'").fetchone()
    if row is None:
        return DEFAULT_FILTER_CONFIG
    try:
        section = orjson.loads(row[0]).get("quality")
    except (orjson.JSONDecodeError, AttributeError):
        return DEFAULT_FILTER_CONFIG
    if not isinstance(section, dict):
        return DEFAULT_FILTER_CONFIG
    # The snapshot writes an unset optional value as null, which TOML cannot hold: leave it out.
    present = {key: value for key, value in section.items() if value is not None}
    return from_table(
        FilterConfig, present, source="the run's stored config", base_dir=None, prefix="quality"
    )


def filter_with(
    conn: duckdb.DuckDBPyConnection,
    checker: PosthocFilter,
    *,
    dry_run: bool = False,
    batch_size: int = BATCH_CONVERSATIONS,
    workers: int = 1,
) -> FilterReport:
    """Run the pass on an open store; each batch's updates commit together.

    Turn findings are marked a batch at a time. Each clean conversation's duplicate
    fingerprint goes to a TEMP table on ``conn`` (state.fingerprints); after the last batch,
    only the conversations sharing a key with another are settled, in conv_id order, by the
    checker's index (``settle``), and their duplicates marked a chunk at a time: the verdicts
    of one index fed every conversation in order, with memory that follows the run's
    duplicates instead of its size. With ``workers`` above 1 (and more than one batch to
    judge), that many processes judge the batches (engine.filterpool) while this one reads,
    stores the fingerprints and marks. A pass stopped midway keeps what it committed (no
    finding is ever taken back, and filtered conversations are not read again); running it
    again finishes the rest. Raises ConfigError for an unknown language, duckdb.Error if the
    store fails, engine.filterpool.WorkerDied when a worker process dies.
    """
    checked = on_gate = 0
    counts: dict[str, int] = {}
    samples: list[Finding] = []

    def tally(findings: list[Finding]) -> None:
        for finding in findings:
            counts[finding.reason] = counts.get(finding.reason, 0) + 1
            if counts[finding.reason] <= _SAMPLES_PER_REASON:
                samples.append(finding)
        if findings and not dry_run:
            _mark(conn, findings)

    store = stored_store_config(conn, Path(STATE_FILE))
    with RunFingerprints(conn, store) as fingerprints:
        stream = _judged(conn, checker, store, batch_size, workers)
        try:
            for batch, judged in stream:
                checked += len(batch)
                on_gate += sum(j[2] for j in judged)
                tally([j[0] for j in judged if j[0] is not None])
                fingerprints.add(
                    [
                        (conv.conv_id, fp.exact, fp.band_keys, fp.sig)
                        for conv, (finding, fp, _) in zip(batch, judged, strict=True)
                        if finding is None and fp is not None
                    ]
                )
        finally:
            stream.close()  # stops the workers now, also when marking failed
        for chunk in fingerprints.colliding():
            settled = (
                checker.settle(cid, (None, Fingerprint(exact, tuple(bands), sig), False))
                for cid, exact, bands, sig in chunk
            )
            tally([finding for finding in settled if finding is not None])
    # Turn findings were counted batch by batch and duplicates after them: in conv_id order,
    # the samples are the ones a pass settling each batch in turn picked, in its order.
    samples.sort(key=lambda finding: finding.conv_id)
    by_reason = tuple(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
    return FilterReport(checked, by_reason, tuple(samples), dry_run, on_gate=on_gate)


def default_workers() -> int:
    """Worker processes for a pass by default: the CPUs this process may use, at most
    ``MAX_DEFAULT_WORKERS``."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this platform (macOS)
        usable = os.cpu_count() or 1
    return max(1, min(usable, MAX_DEFAULT_WORKERS))


def _judged(
    conn: duckdb.DuckDBPyConnection,
    checker: PosthocFilter,
    store: StoreConfig,
    batch_size: int,
    workers: int,
) -> Generator[tuple[list[StoredConversation], list[Judged]], None, None]:
    """Each batch with what ``judge_many`` says of it, in conv_id order, judged here or by
    worker processes."""
    if workers > 1:
        row = conn.execute("SELECT count(*) FROM conversations WHERE status = 'done'").fetchone()
        done = int(row[0]) if row else 0
        # Starting a process costs more than judging one batch: no more workers than batches.
        workers = min(workers, -(-done // batch_size))
    if workers <= 1:
        for batch in _batches(conn, batch_size, store):
            yield batch, checker.judge_many(batch)
        return
    # Imported here: the pool's machinery is for this path only.
    from engine.filterpool import WorkerDied, judged_batches

    pooled = judged_batches(
        PosthocFilter, checker.recipe(), _batches(conn, batch_size, store), workers
    )
    first: int | None = None  # the first conversation not yet judged
    try:
        for batch, judged in pooled:
            first = batch[-1].conv_id + 1
            yield batch, judged
    except WorkerDied as exc:
        left = (
            "no conversation was marked"
            if first is None
            else f"conversations from {first} on are not checked, the turn findings before "
            "them are marked (duplicates are settled when a pass ends)"
        )
        raise WorkerDied(
            f"a filter worker process died (killed, or out of memory): {left}; run m2l filter "
            "again to finish (with fewer --workers if memory is short)",
            exc.index,
        ) from exc
    finally:
        pooled.close()


def _batches(
    conn: duckdb.DuckDBPyConnection, size: int, store: StoreConfig | None = None
) -> Iterator[list[StoredConversation]]:
    """Done conversations in conv_id order, ``size`` at a time, with their steps; ``store``:
    the run's DuckDB caps (read from the store when not given)."""
    # A store from before the stamps, opened read-only (a dry run), lacks their column.
    stamped = conn.execute(
        "SELECT count(*) FROM information_schema.columns "
        "WHERE table_name = 'messages' AND column_name = 'gate_check'"
    ).fetchone() != (0,)
    stamps = "gate_check" if stamped else "NULL"
    # DuckDB keeps the blocks the batches read until its memory_limit forces them out: let them
    # go every few batches, so the pass holds a few batches' worth, not the run's (and the
    # fingerprints the pass appended meanwhile go to the spill directory). (Every batch would
    # read again blocks its neighbours share: 12% more CPU.)
    if store is None:
        store = stored_store_config(conn, Path(STATE_FILE))
    after: int | None = None
    read = 0
    while True:
        # The batch's conversations first, then their seeds: joined before the LIMIT, every
        # batch built a hash table of the run's seeds (+10 MB at 10^5 conversations).
        heads = conn.execute(
            """WITH batch AS (
                   SELECT conv_id, seed_id, language_code, task, evol_type FROM conversations
                   WHERE status = 'done' AND ($after IS NULL OR conv_id > $after)
                   ORDER BY conv_id LIMIT $size)
               SELECT b.conv_id, b.language_code, b.task, b.evol_type, s.instruction, s.target
               FROM batch b LEFT JOIN seeds s USING (seed_id) ORDER BY b.conv_id""",
            {"after": after, "size": size},
        ).fetchall()
        if not heads:
            return
        lo, hi = heads[0][0], heads[-1][0]
        steps: dict[int, list[tuple[str, str]]] = {int(h[0]): [] for h in heads}
        checks: dict[int, list[int | None]] = {int(h[0]): [] for h in heads}
        for cid, kind, content, check in conn.execute(
            f"""SELECT conv_id, kind, content, {stamps} FROM messages
               WHERE conv_id BETWEEN ? AND ? ORDER BY conv_id, step""",
            [lo, hi],
        ).fetchall():
            if cid in steps:  # the range also holds conversations that are not done
                steps[cid].append((kind, content))
                checks[cid].append(check)
        read += 1
        if read % _RELEASE_EVERY == 0:
            release_cache(conn, store)
        yield [
            StoredConversation(
                int(cid),
                code,
                tuple(steps[cid]),
                task,
                evol,
                seed or "",
                target,
                tuple(checks[cid]),
            )
            for cid, code, task, evol, seed, target in heads
        ]
        after = int(hi)


def _mark(conn: duckdb.DuckDBPyConnection, findings: Sequence[Finding]) -> None:
    """Mark the batch's findings filtered, in one transaction."""
    conn.execute("BEGIN TRANSACTION")
    try:
        conn.executemany(
            """UPDATE conversations SET status = 'filtered', filter_reason = ?
               WHERE conv_id = ? AND status = 'done'""",
            [(f.reason, f.conv_id) for f in findings],
        )
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
