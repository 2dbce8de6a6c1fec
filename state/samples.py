"""A few conversations of each language to read, and the run's metadata, for the HTML report.

Samples are picked by a hash of the conversation id, so the same run gives the same samples;
done conversations first, and a filtered one where the language has any, marked with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import duckdb
import orjson

from state.schema import STATE_FILE, release_cache, stored_store_config

__all__ = ["Message", "Sample", "run_metadata", "sample_conversations"]


@dataclass(frozen=True, slots=True)
class Message:
    """One stored turn: its role, what made it (step kind and evol type) and its text."""

    role: str
    kind: str
    evol_type: str | None
    content: str


@dataclass(frozen=True, slots=True)
class Sample:
    """One conversation to show, with its labels and messages in order."""

    conv_id: int
    language: str
    task: str
    evol_type: str
    status: str
    filter_reason: str | None
    messages: tuple[Message, ...]


def sample_conversations(
    conn: duckdb.DuckDBPyConnection, *, done: int = 2, filtered: int = 1
) -> tuple[Sample, ...]:
    """Up to ``done`` done and ``filtered`` filtered conversations per language, by language."""
    # Each (language, status) keeps its few smallest hashes as it goes (min_by with a count):
    # ranking every conversation with a window function sorted them all, 25 MB at 10^5.
    first = conn.execute(
        """SELECT language, status, min_by(conv_id, (hash(conv_id), conv_id), ?)
        FROM conversations WHERE status IN ('done', 'filtered') GROUP BY ALL ORDER BY ALL""",
        [max(done, filtered, 1)],
    ).fetchall()
    order = [
        int(conv_id)
        for _, status, ids in first
        for conv_id in ids[: done if status == "done" else filtered]
    ]
    labels = {
        int(row[0]): row
        for row in conn.execute(
            "SELECT conv_id, language, task, evol_type, status, filter_reason "
            "FROM conversations WHERE conv_id IN (SELECT unnest(?::BIGINT[]))",
            [order],
        ).fetchall()
    }
    picked = [labels[conv_id] for conv_id in order]
    if not picked:
        return ()
    messages: dict[int, list[Message]] = {}
    store = stored_store_config(conn, Path(STATE_FILE))
    for ids in _windows(sorted(int(row[0]) for row in picked)):
        # The range lets DuckDB skip the row groups of other conversations; the texts it read
        # are then let go, so this holds one window's blocks, not the whole messages table
        # (one query over all the samples kept 34 MB of texts cached at 10^5 conversations).
        for conv_id, role, kind, evol_type, content in conn.execute(
            "SELECT conv_id, role, kind, evol_type, content FROM messages "
            "WHERE conv_id BETWEEN ? AND ? AND conv_id IN (SELECT unnest(?::BIGINT[])) "
            "ORDER BY conv_id, step",
            [ids[0], ids[-1], ids],
        ).fetchall():
            messages.setdefault(int(conv_id), []).append(
                Message(str(role), str(kind), evol_type, str(content or ""))
            )
        release_cache(conn, store)
    return tuple(
        Sample(
            int(conv_id),
            str(language),
            str(task),
            str(evol_type),
            str(status),
            reason,
            tuple(messages.get(int(conv_id), [])),
        )
        for conv_id, language, task, evol_type, status, reason in picked
    )


# Conversation ids per read of sampled messages: a row group of messages holds about 18,000
# conversations' turns.
_WINDOW = 20_000


def _windows(ids: list[int]) -> list[list[int]]:
    """Sorted ids cut into runs that each span fewer than _WINDOW ids."""
    out: list[list[int]] = []
    for conv_id in ids:
        if out and conv_id - out[-1][0] < _WINDOW:
            out[-1].append(conv_id)
        else:
            out.append([conv_id])
    return out


def run_metadata(conn: duckdb.DuckDBPyConnection) -> tuple[tuple[str, str], ...]:
    """(label, value) facts about the run: model, provider, seed file, hashes, version, dates.

    Only what the store holds is shown; the API key never is (the config keeps only the name
    of the variable that holds it).
    """
    meta = dict(conn.execute("SELECT key, value FROM run_meta").fetchall())
    try:
        config = orjson.loads(meta.get("config_json", "{}"))
    except orjson.JSONDecodeError:
        config = {}
    provider = config.get("provider") or {}
    seeds = config.get("seeds") or {}
    span = conn.execute(
        "SELECT min(created_at), max(finished_at) FROM conversations"
    ).fetchone() or (None, None)
    facts = [
        ("run", (config.get("run") or {}).get("name")),
        ("model", provider.get("model")),
        ("provider", provider.get("kind")),
        ("base URL", _base_url(provider)),
        ("seed file", seeds.get("file")),
        ("seed file sha256", meta.get("seeds_sha256")),
        ("config hash", meta.get("config_hash")),
        ("taxonomy fingerprint", meta.get("taxonomy_fingerprint")),
        ("m2l version", meta.get("m2l_version")),
        ("created", meta.get("created_at")),
        ("first conversation planned", _when(span[0])),
        ("last conversation finished", _when(span[1])),
        ("status", meta.get("status")),
    ]
    return tuple((label, str(value)) for label, value in facts if value not in (None, ""))


def _base_url(provider: dict[str, object]) -> str | None:
    if provider.get("kind") == "sim":
        return "(the embedded simulator)"
    return _without_userinfo(provider.get("base_url"))


def _without_userinfo(url: object) -> str | None:
    """The URL without any user:password@ part, which must never reach a report."""
    if not isinstance(url, str):
        return None
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def _when(value: object) -> str | None:
    if value is None:
        return None
    text = str(value)
    return text[:19].replace("T", " ") + " UTC"
