"""`m2l filter` settles duplicates from fingerprints kept in DuckDB (state.fingerprints): the
verdicts of one index fed every clean conversation in conv_id order, and nothing left behind.

The corpus stresses what the order decides: exact copies, chains A ~ B ~ C where C is near B
but not A, clusters of near copies, pairs sharing a band key without being near, and
conversations with a turn finding that are copies of clean later ones. Batches of 5 put
every pair across batch boundaries.
"""

from __future__ import annotations

import json
import random
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

import engine.posthoc
from engine.config import StoreConfig
from engine.filterpool import WorkerDied
from engine.posthoc import Finding, Judged, PosthocFilter, StoredConversation, filter_run
from engine.posthoc import filter_with as run_filter_with
from engine.quality import NearDuplicateIndex
from engine.quality.dedup import DuplicateMatch, Fingerprint
from prompts.languages import load_languages
from state.export import open_run
from state.fingerprints import RunFingerprints
from state.schema import STATE_FILE, connect_memory, open_store
from tests.test_filter_workers import KILL_MARK, CrashingDetector

SIM = Path(__file__).parent / "data" / "sim_conversations.jsonl"
BATCH = 5


def _near(first: str, later: str) -> DuplicateMatch | None:
    index = NearDuplicateIndex()
    index.add(1, first)
    return index.query(later)


def _shared_bands(first: str, later: str) -> int:
    index = NearDuplicateIndex()
    return len(set(index.fingerprint(first).band_keys) & set(index.fingerprint(later).band_keys))


# (language code, steps, the sim row it comes from)
Made = tuple[str, tuple[tuple[str, str], ...], dict[str, Any]]


def _conversation(row: dict[str, Any], answer: str, language: str | None = None) -> Made:
    """The row's instruction and one answer."""
    return (language or row["language"], (("evolve", row["steps"][0][1]), ("answer", answer)), row)


def _stress() -> list[StoredConversation]:
    rows = [json.loads(line) for line in SIM.read_text(encoding="utf-8").splitlines()]
    answers = [" ".join(c for k, c in row["steps"] if k == "answer") for row in rows]
    long = [i for i, a in enumerate(answers) if len(a.split()) >= 120]
    groups: list[list[Made]] = []
    chains = bands = 0
    for i in long[:12]:
        row, words = rows[i], answers[i].split()

        def text(ws: list[str], row: dict[str, Any] = row) -> str:
            return "\n".join((row["steps"][0][1], " ".join(ws)))

        # A chain: B near A, C near B but not near A (so C stays: B is never indexed).
        for k in range(2, len(words) // 4):
            a, b, c = words, words[:-k], words[k:-k]
            if _near(text(a), text(b)) and _near(text(b), text(c)) and not _near(text(a), text(c)):
                groups.append([_conversation(row, " ".join(ws)) for ws in (a, b, c)])
                chains += 1
                break
        # A band shared without being near: the index confirms the candidate and rejects it.
        for k in range(2, len(words) // 2):
            d = words[:-k]
            if not _near(text(words), text(d)) and _shared_bands(text(words), text(d)):
                groups.append([_conversation(row, " ".join(d))])
                bands += 1
                break
        # A cluster: near copies that each drop one word, and an exact copy (spaces doubled).
        groups.append(
            [_conversation(row, " ".join(words[:n] + words[n + 1 :])) for n in (3, 10, 17)]
            + [_conversation(row, "  ".join(words))]
        )
    assert chains >= 3 and bands >= 3
    # Pairs and nothing more: each key they share is shared by two conversations only.
    for i in long[12:20]:
        words = answers[i].split()
        groups.append([_conversation(rows[i], " ".join(ws)) for ws in (words, words[:-2])])
    # Copies in decomposed Unicode: the same exact key, but other units, so no band key in
    # common; only the exact key finds them.
    accented = [i for i, a in enumerate(answers) if a != unicodedata.normalize("NFD", a)]
    for i in accented[:4]:
        nfd = tuple((k, unicodedata.normalize("NFD", c)) for k, c in rows[i]["steps"])
        groups.append([(rows[i]["language"], nfd, rows[i])])
    # A conversation failing a turn check (an English answer in a Spanish conversation) is
    # not indexed: its clean later copy stays, and a copy of that copy is its duplicate.
    english = [i for i, row in enumerate(rows) if row["language"] == "eng"][:3]
    for i in english:
        groups.append([_conversation(rows[i], answers[i], language="spa")])
    groups.append([_conversation(rows[i], answers[i]) for i in english])
    groups.append([_conversation(rows[i], answers[i].replace(" ", "  ")) for i in english])
    # Everything else once, and the groups' members spread among them.
    plain = [[(row["language"], tuple((k, c) for k, c in row["steps"]), row)] for row in rows]
    rng = random.Random(21)
    made: list[Made] = []
    pending = [list(g) for g in groups]
    for item in plain:
        made.extend(item)
        for group in rng.sample(pending, k=min(3, len(pending))):
            if group:
                made.append(group.pop(0))
    for group in pending:
        made.extend(group)
    return [
        StoredConversation(
            conv_id,
            language,
            steps,
            str(row.get("task", "general")),
            str(row.get("evol_type", "DEEPEN")),
            str(row.get("seed", "")),
            row.get("seed_target"),
        )
        for conv_id, (language, steps, row) in enumerate(made, start=1)
    ]


def _write_store(run_dir: Path, convs: list[StoredConversation]) -> None:
    conn = open_store(run_dir / STATE_FILE, create=True)
    try:
        conn.execute("BEGIN TRANSACTION")
        conn.executemany(
            "INSERT INTO seeds VALUES (?, ?, ?, ?, ?, ?, ?, 'test', 20)",
            [
                (c.conv_id, c.conv_id, c.seed_text, c.seed_target, c.language_code,
                 c.language_code, c.task)
                for c in convs
            ],
        )  # fmt: skip
        conn.executemany(
            "INSERT INTO conversations VALUES "
            "(?, ?, ?, ?, [], ?, ?, ?, 'done', ?, 0, NULL, NULL, NULL, NULL, 0)",
            [
                (c.conv_id, c.conv_id, c.evol_type, len(c.steps) // 2, c.language_code,
                 c.language_code, c.task, len(c.steps))
                for c in convs
            ],
        )  # fmt: skip
        conn.executemany(
            "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL, NULL, NULL)",
            [
                (c.conv_id, step, step // 2 + 1, "assistant" if kind == "answer" else "user",
                 kind, content, len(content) // 4)
                for c in convs
                for step, (kind, content) in enumerate(c.steps)
            ],
        )  # fmt: skip
        conn.execute('INSERT INTO run_meta VALUES (\'config_json\', \'{"run": {"name": "d"}}\')')
        conn.execute("COMMIT")
    finally:
        conn.close()


@pytest.fixture(scope="module")
def corpus() -> list[StoredConversation]:
    return _stress()


@pytest.fixture(scope="module")
def reference(corpus: list[StoredConversation]) -> list[Finding | None]:
    """Each conversation's verdict from one index fed every clean conversation in conv_id
    order (PosthocFilter.check_many: what the pass did before the fingerprints were stored)."""
    return PosthocFilter(load_languages()).check_many(corpus)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, corpus: list[StoredConversation]) -> Path:
    run_dir = tmp_path_factory.mktemp("stress") / "run"
    _write_store(run_dir, corpus)
    return run_dir


def _copy(template: Path, run_dir: Path) -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / STATE_FILE).write_bytes((template / STATE_FILE).read_bytes())
    return run_dir


def _statuses(run_dir: Path) -> dict[int, tuple[str, str | None]]:
    conn = duckdb.connect(str(run_dir / STATE_FILE), read_only=True)
    try:
        rows = conn.execute("SELECT conv_id, status, filter_reason FROM conversations").fetchall()
    finally:
        conn.close()
    return {int(cid): (status, reason) for cid, status, reason in rows}


def _files(run_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*"))


def test_the_corpus_holds_what_it_is_for(
    corpus: list[StoredConversation], reference: list[Finding | None]
) -> None:
    """The reference verdicts hold exact and near duplicates (some exact ones sharing no band
    key with what they copy), chains, and turn findings whose clean copies stay."""
    reasons = [f.reason for f in reference if f is not None]
    by_id = {conv.conv_id: conv for conv in corpus}
    index = NearDuplicateIndex()
    bandless = [
        f
        for f in reference
        if f is not None
        and f.reason == "exact_duplicate"
        and not set(index.fingerprint(by_id[f.conv_id].text()).band_keys)
        & set(index.fingerprint(by_id[int(f.detail.split()[-1])].text()).band_keys)
    ]
    assert len(bandless) >= 2
    # Chains: a conversation stays although it is near one filtered as a near duplicate.
    kept = [conv for conv, f in zip(corpus, reference, strict=True) if f is None]
    near = [by_id[f.conv_id] for f in reference if f is not None and f.reason == "near_duplicate"]
    chained = [
        (x.conv_id, y.conv_id)
        for x in kept
        for y in near
        if y.conv_id < x.conv_id and x.steps[0] == y.steps[0] and _near(y.text(), x.text())
    ]
    assert len(chained) >= 3
    # A turn finding's copy stays, and the copy's own copy is its duplicate, not the finding's.
    wrong = [by_id[f.conv_id] for f in reference if f is not None and f.reason == "wrong_language"]
    copied = [
        f
        for f in reference
        if f is not None
        and f.reason == "exact_duplicate"
        and any(by_id[int(f.detail.split()[-1])].steps == w.steps for w in wrong)
    ]
    assert len(copied) >= 2
    assert reasons.count("exact_duplicate") >= 10
    assert reasons.count("near_duplicate") >= 20
    assert reasons.count("wrong_language") >= 3
    assert len(reference) >= 250


@pytest.mark.parametrize(
    ("workers", "dry_run", "samples"),
    [(1, False, 3), (2, False, 10**6), (1, True, 10**6), (2, True, 3)],
)
def test_the_pass_gives_the_verdicts_of_one_index_fed_in_order(
    template: Path,
    tmp_path: Path,
    reference: list[Finding | None],
    monkeypatch: pytest.MonkeyPatch,
    workers: int,
    dry_run: bool,
    samples: int,
) -> None:
    """With 1 and 2 workers, dry or not, the pass filters the conversations the sequential
    index filters, with its reasons and details (the earlier conversation, the similarity),
    counts them the same, and reports the first ``samples`` of each reason in conv_id order."""
    monkeypatch.setattr(engine.posthoc, "_SAMPLES_PER_REASON", samples)
    run_dir = _copy(template, tmp_path / "run")
    before = _statuses(run_dir)
    report = filter_run(run_dir, dry_run=dry_run, workers=workers, batch_size=BATCH)
    found = [f for f in reference if f is not None]
    counts: dict[str, int] = {}
    expected_samples = []
    for finding in found:
        counts[finding.reason] = counts.get(finding.reason, 0) + 1
        if counts[finding.reason] <= samples:
            expected_samples.append(finding)
    assert report.checked == len(reference)
    assert dict(report.by_reason) == counts
    assert list(report.samples) == expected_samples
    expected = {f.conv_id: ("filtered", f.reason) for f in found}
    after = _statuses(run_dir)
    if dry_run:
        assert after == before
    else:
        assert after == {cid: expected.get(cid, ("done", None)) for cid in before}
        assert filter_run(run_dir, workers=workers, batch_size=BATCH).by_reason == ()


def _random_fingerprints(seed: int, n: int) -> Iterator[tuple[int, Fingerprint]]:
    """Fingerprints in conv_id order (with gaps) drawn from few prototypes: exact copies (some
    with band keys of their own), near copies (a few signature bytes changed, band keys mostly
    kept), and texts that share one band key or two and little else."""
    rng = random.Random(seed)
    protos = [
        (rng.getrandbits(63), [rng.getrandbits(63) for _ in range(12)], rng.randbytes(128))
        for _ in range(max(2, n // 8))
    ]
    conv_id = 0
    for _ in range(n):
        conv_id += rng.choice((1, 1, 2, 7))
        exact, bands, sig = rng.choice(protos)
        kind = rng.random()
        if kind < 0.15:  # an exact copy
            yield conv_id, Fingerprint(exact, tuple(bands), sig)
            continue
        if kind < 0.2:  # an exact copy with other units (decomposed Unicode): other band keys
            yield conv_id, Fingerprint(exact, tuple(rng.getrandbits(63) for _ in range(12)), sig)
            continue
        flips = rng.choice((2, 8, 14, 20, 30, 60, 128))  # similarities on both sides of 0.85
        mine = bytearray(sig)
        for at in rng.sample(range(128), flips):
            mine[at] = rng.randrange(256)
        keep = rng.sample(range(12), k=rng.choice((0, 1, 2, 6, 12)))
        keys = tuple(bands[b] if b in keep else rng.getrandbits(63) for b in range(12))
        yield conv_id, Fingerprint(rng.getrandbits(63), keys, bytes(mine))


@pytest.mark.parametrize(("seed", "slice_rows"), [(1, 7), (2, 50_000), (3, 1)])
def test_only_colliding_fingerprints_are_settled_with_the_same_answers(
    seed: int, slice_rows: int
) -> None:
    """An index fed only the fingerprints that share a key with another, found by SQL in
    slices of the key space, answers each of them as one fed all of them in order; every
    one left out is one the full index kept and never matched."""
    fingerprints = list(_random_fingerprints(seed, 400))
    full = NearDuplicateIndex()
    expected = {cid: full.add_fingerprint(cid, fp) for cid, fp in fingerprints}
    conn = connect_memory()
    try:
        with RunFingerprints(conn, StoreConfig(), slice_rows=slice_rows) as stored:
            for start in range(0, len(fingerprints), 37):
                stored.add(
                    [
                        (cid, fp.exact, fp.band_keys, fp.sig)
                        for cid, fp in fingerprints[start : start + 37]
                    ]
                )
            settled = NearDuplicateIndex()
            got = {
                cid: settled.add_fingerprint(cid, Fingerprint(exact, tuple(bands), sig))
                for chunk in stored.colliding(chunk=11)
                for cid, exact, bands, sig in chunk
            }
    finally:
        conn.close()
    assert list(got) == sorted(got)
    assert got == {cid: expected[cid] for cid in got}
    left_out = expected.keys() - got.keys()
    assert all(expected[cid] is None for cid in left_out)
    matches = [m for m in got.values() if m is not None]
    # The draw exercises every branch: exact and near matches, candidates rejected.
    assert any(m.exact for m in matches) and any(not m.exact for m in matches)
    assert sum(m is None for m in got.values()) > len(fingerprints) // 10
    assert len(left_out) > len(fingerprints) // 10


def _temp_tables(conn: duckdb.DuckDBPyConnection) -> list[str]:
    rows = conn.execute("SELECT table_name FROM duckdb_tables() WHERE temporary").fetchall()
    return [str(row[0]) for row in rows]


def _schema(conn: duckdb.DuckDBPyConnection) -> list[tuple[object, ...]]:
    return conn.execute(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_catalog = current_database() AND table_schema = 'main' ORDER BY ALL"
    ).fetchall()


class SettleFails(PosthocFilter):
    """A filter whose duplicate settling fails at its first conversation."""

    def settle(self, conv_id: int, judged: Judged) -> Finding | None:
        raise RuntimeError("settling failed")


@pytest.mark.parametrize("failure", [None, "worker dies", "settle fails"])
def test_nothing_is_left_behind(template: Path, tmp_path: Path, failure: str | None) -> None:
    """After a pass, and after one that fails while judging (a worker killed) or while
    settling, the connection holds no table of the pass, the store's schema is as it was, and
    the run directory holds the same files."""
    run_dir = _copy(template, tmp_path / "run")
    if failure == "worker dies":
        conn = duckdb.connect(str(run_dir / STATE_FILE))
        try:
            conn.execute(
                "UPDATE messages SET content = content || ' ' || $mark WHERE conv_id = 40",
                {"mark": KILL_MARK},
            )
        finally:
            conn.close()
    files = _files(run_dir)
    conn = open_run(run_dir, action="filter it", write=True)
    try:
        schema = _schema(conn)
        languages = load_languages()
        if failure is None:
            report = run_filter_with(conn, PosthocFilter(languages), batch_size=BATCH)
            assert report.filtered > 0
        elif failure == "worker dies":
            with pytest.raises(WorkerDied, match="died"):
                run_filter_with(
                    conn,
                    PosthocFilter(languages, detector=CrashingDetector()),
                    batch_size=BATCH,
                    workers=2,
                )
        else:
            with pytest.raises(RuntimeError, match="settling failed"):
                run_filter_with(conn, SettleFails(languages), batch_size=BATCH)
        assert _temp_tables(conn) == []
        assert _schema(conn) == schema
    finally:
        conn.close()
    assert _files(run_dir) == files
