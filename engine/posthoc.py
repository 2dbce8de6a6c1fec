"""The post-hoc filter pass (``m2l filter RUN``): the quality filters over every done conversation.

Conversations are read in conv_id order, a batch at a time; one failing a filter becomes
'filtered' with a stable ``filter_reason``, and nothing is deleted. Turn checks mirror the run's
inline validation (engine.validation): user turns as instructions, answers as replies against
the earlier answers. Near and exact duplicates need the whole run, so only this pass finds them:
the earlier conversation of a pair stays, the later one is filtered. Only 'done' conversations
are read and a filtered one is never restored, so a second pass over the same store changes
nothing. Raises StateError when the store is missing, busy or damaged, and ConfigError when a
conversation's language is not in the language table.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import duckdb
import orjson

from engine._typed_toml import from_table
from engine.errors import ConfigError
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

__all__ = [
    "BATCH_CONVERSATIONS",
    "FilterReport",
    "Finding",
    "PosthocFilter",
    "StoredConversation",
    "check_turns",
    "filter_run",
    "filter_with",
]

# Conversations read (and updated) per transaction: a few MB of text at most.
BATCH_CONVERSATIONS = 500

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

    @property
    def filtered(self) -> int:
        return sum(n for _, n in self.by_reason)


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

    __slots__ = ("_config", "_detector", "_index", "_languages", "_names", "_resolved")

    def __init__(
        self,
        languages: LanguageTable,
        config: FilterConfig = DEFAULT_FILTER_CONFIG,
        detector: LanguageDetector | None = None,
    ) -> None:
        self._languages = languages
        self._config = config
        self._detector = detector
        self._index = NearDuplicateIndex.from_config(config)
        self._names = LanguageNames(load_language_names(), languages)
        self._resolved: dict[str, LanguageLike] = {}

    def check(
        self, conv: StoredConversation, analyses: Sequence[Analysis] | None = None
    ) -> Finding | None:
        """Why ``conv`` must be filtered, or None; raises ConfigError for an unknown language.

        ``analyses``: one per step of ``conv`` (made here if not given).
        """
        # Each turn analysed once, for the turn checks and the duplicate check alike.
        if analyses is None:
            analyses = [Analysis(content) for _, content in conv.steps]
        finding = check_turns(
            conv, self._language(conv), self._config, self._detector, self._names, analyses
        )
        if finding is not None:
            # Not indexed: a conversation filtered for its own faults must not make a clean
            # later copy of it look like the duplicate.
            return finding
        if not self._config.near_duplicates:
            return None
        match = self._index.add_match(conv.conv_id, conv.text(), joined_units(analyses))
        if match is None:
            return None
        verdict = match.verdict()
        return Finding(conv.conv_id, str(verdict.reason), None, verdict.detail)

    def check_many(self, convs: Sequence[StoredConversation]) -> list[Finding | None]:
        """``[check(conv) for conv in convs]``, with the language model reading every turn's
        text in one pass first (the same rankings, made together: several times faster than
        one text at a time)."""
        analyses = [[Analysis(content) for _, content in conv.steps] for conv in convs]
        config = self._config
        if config.check_language:
            detector = self._detector if self._detector is not None else default_detector()
            every = [analysis for turns in analyses for analysis in turns]
            rank_ahead_for_checks(every, detector, config.language_min_chars)
        return [self.check(conv, turns) for conv, turns in zip(convs, analyses, strict=True)]

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
) -> FilterReport:
    """Run the pass over the run at ``run_dir``, holding its store exclusively unless dry.

    ``config`` defaults to the [quality] section the run was made with. With
    ``include_rejected`` the report also counts the outputs the run threw away inline.
    Raises StateError when the store is missing, held by a running m2l process or damaged,
    and ConfigError for a language the table does not know or a stored [quality] that no
    longer loads.
    """
    conn = open_run(run_dir, action="filter it", write=not dry_run)
    try:
        quality = config if config is not None else run_quality(conn)
        checker = PosthocFilter(languages or load_languages(), quality, detector)
        report = filter_with(conn, checker, dry_run=dry_run, batch_size=batch_size)
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
) -> FilterReport:
    """Run the pass on an open store; each batch's updates commit together.

    A pass stopped midway keeps the batches it committed; running it again finishes the rest.
    Raises ConfigError for an unknown language, duckdb.Error if the store fails.
    """
    checked = 0
    counts: dict[str, int] = {}
    samples: list[Finding] = []
    for batch in _batches(conn, batch_size):
        checked += len(batch)
        findings = [f for f in checker.check_many(batch) if f is not None]
        for finding in findings:
            counts[finding.reason] = counts.get(finding.reason, 0) + 1
            if counts[finding.reason] <= _SAMPLES_PER_REASON:
                samples.append(finding)
        if findings and not dry_run:
            _mark(conn, findings)
    by_reason = tuple(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
    return FilterReport(checked, by_reason, tuple(samples), dry_run)


def _batches(conn: duckdb.DuckDBPyConnection, size: int) -> Iterator[list[StoredConversation]]:
    """Done conversations in conv_id order, ``size`` at a time, with their steps."""
    after: int | None = None
    while True:
        heads = conn.execute(
            """SELECT c.conv_id, c.language_code, c.task, c.evol_type, s.instruction, s.target
               FROM conversations c LEFT JOIN seeds s USING (seed_id)
               WHERE c.status = 'done' AND ($after IS NULL OR c.conv_id > $after)
               ORDER BY c.conv_id LIMIT $size""",
            {"after": after, "size": size},
        ).fetchall()
        if not heads:
            return
        lo, hi = heads[0][0], heads[-1][0]
        steps: dict[int, list[tuple[str, str]]] = {int(h[0]): [] for h in heads}
        for cid, kind, content in conn.execute(
            """SELECT conv_id, kind, content FROM messages
               WHERE conv_id BETWEEN ? AND ? ORDER BY conv_id, step""",
            [lo, hi],
        ).fetchall():
            if cid in steps:  # the range also holds conversations that are not done
                steps[cid].append((kind, content))
        yield [
            StoredConversation(int(cid), code, tuple(steps[cid]), task, evol, seed or "", target)
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
