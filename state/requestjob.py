"""The state of an ``m2l requests`` job: each line's result, and the output file written in order.

A line's result line is stored in ``request_lines`` when its request ends (answered or failed
for good); the output file is then extended in input order as far as results are contiguous.
The file's length and line count are recorded in ``run_meta`` in the same transaction as the
bytes are written, so after a kill the file is cut back to its recorded length and continued
from the store: every line ends up in it exactly once, in order. ``OutputOrder`` (pure) decides
what can be written; ``OutputFile`` writes it on the writer thread.
Raises StateError (engine.errors) through the writer as every store op does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import duckdb

from state import journal
from state._bulk import columns, now, unnest

__all__ = [
    "JOB_KIND",
    "Chunk",
    "LineRow",
    "OutputFile",
    "OutputOrder",
    "ResultBatch",
    "line_counts",
    "record_end",
    "stored_lines",
    "write_lines",
]

Conn = duckdb.DuckDBPyConnection

JOB_KIND: Final = "requests"  # run_meta "job": what made the store
META_OUT_LINES: Final = "out_lines"
META_OUT_BYTES: Final = "out_bytes"


@dataclass(frozen=True, slots=True)
class LineRow:
    """One line's result: its index among the input's lines, whether it was answered, and the
    exact output line (without its newline)."""

    index: int
    ok: bool
    output: bytes


def write_lines(conn: Conn, rows: Sequence[LineRow]) -> None:
    """Store these results (one statement for them all)."""
    if not rows:
        return
    values = [(r.index, r.ok, r.output.decode()) for r in rows]
    conn.execute(
        f"INSERT INTO request_lines (line, ok, output, finished_at) "
        f"SELECT {unnest(('BIGINT', 'BOOLEAN', 'VARCHAR'))}, $4::TIMESTAMP",
        [*columns(values), now()],
    )


def stored_lines(conn: Conn, *, start: int) -> list[int]:
    """Indices of stored results from ``start`` on (finished but maybe not in the file yet)."""
    rows = conn.execute(
        "SELECT line FROM request_lines WHERE line >= ? ORDER BY line", [start]
    ).fetchall()
    return [int(r[0]) for r in rows]


def line_counts(conn: Conn) -> tuple[int, int]:
    """(answered, failed) lines stored."""
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE ok), count(*) FILTER (WHERE NOT ok) FROM request_lines"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


@dataclass(frozen=True, slots=True)
class Chunk:
    """Lines ``start`` .. ``start + len(texts) - 1`` to append; None: read it from the store."""

    start: int
    texts: tuple[bytes | None, ...]

    @property
    def stop(self) -> int:
        return self.start + len(self.texts)


_MISSING: Final = object()


class OutputOrder:
    """Which finished results can go to the file next (pure; lives on the event loop).

    Results that finish ahead of an earlier line wait here up to ``cap_bytes``; past that only
    their index is kept and the file writer reads them back from the store, so a slow line
    neither holds the others back nor fills the memory. Raises ValueError for a line finished
    twice.
    """

    __slots__ = ("_cap", "_held", "_next", "_ready")

    def __init__(self, *, written: int, stored: Iterable[int] = (), cap_bytes: int) -> None:
        self._next = written  # the first line not handed out yet
        self._ready: dict[int, bytes | None] = {i: None for i in stored if i >= written}
        self._held = 0
        self._cap = cap_bytes

    @property
    def written(self) -> int:
        """Lines handed out to the file so far (a prefix of the input)."""
        return self._next

    @property
    def waiting(self) -> int:
        """Finished lines waiting for an earlier one."""
        return len(self._ready)

    def finish(self, index: int, text: bytes) -> None:
        if index < self._next or index in self._ready:
            raise ValueError(f"line {index} finished twice")
        if self._held + len(text) <= self._cap:
            self._ready[index] = text
            self._held += len(text)
        else:
            self._ready[index] = None  # in the store only

    def take(self) -> Chunk | None:
        """The lines that can be appended now (None: the next line is not finished)."""
        start, texts, ready = self._next, [], self._ready
        while True:
            text = ready.pop(self._next, _MISSING)
            if text is _MISSING:
                break
            assert text is None or isinstance(text, bytes)
            if text is not None:
                self._held -= len(text)
            texts.append(text)
            self._next += 1
        return Chunk(start, tuple(texts)) if texts else None


class OutputFile:
    """The output file, appended to by ops on the writer thread.

    Each write goes at the byte offset where the previous chunk ended, so an op run twice (the
    writer reruns a transaction's ops when a later op fails) writes the same bytes again.
    Raises OSError when the file cannot be written.
    """

    __slots__ = ("_fd", "_offsets", "path")

    def __init__(self, path: Path, *, lines: int, size: int) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.ftruncate(self._fd, size)  # bytes past the recorded end were never committed
        except BaseException:
            os.close(self._fd)
            raise
        self._offsets = {lines: size}

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def op(self, chunk: Chunk) -> Callable[[Conn], None]:
        """An op that appends ``chunk`` and records the file's new length in run_meta."""
        return lambda conn: self.write(conn, chunk)

    def write(self, conn: Conn, chunk: Chunk) -> None:
        """Append ``chunk`` (on the writer thread) and record the file's new length in run_meta,
        in the op's transaction."""
        texts = list(chunk.texts)
        missing = [chunk.start + i for i, t in enumerate(texts) if t is None]
        if missing:
            found = dict(
                conn.execute(
                    "SELECT line, output FROM request_lines WHERE line BETWEEN ? AND ?",
                    [missing[0], missing[-1]],
                ).fetchall()
            )
            for index in missing:
                texts[index - chunk.start] = str(found[index]).encode()
        data = b"".join(t + b"\n" for t in texts if t is not None)
        offset = self._offsets[chunk.start]
        written = 0
        while written < len(data):
            written += os.pwrite(self._fd, data[written:], offset + written)
        end = offset + len(data)
        self._offsets[chunk.stop] = end
        if len(self._offsets) > 1024:  # a rerun goes back a few ops at most
            for line in sorted(self._offsets)[:512]:
                del self._offsets[line]
        record_end(conn, lines=chunk.stop, size=end)


def record_end(conn: Conn, *, lines: int, size: int) -> None:
    """Record how many lines and bytes the output file holds (run_meta)."""
    # One UPDATE of the two rows the job's record was made with: an upsert of two rows is two
    # statements (executemany), each dearer than this one (~1 ms of CPU a flush saved).
    row = conn.execute(
        f"UPDATE run_meta SET value = CASE key WHEN '{META_OUT_LINES}' THEN $1 ELSE $2 END "
        f"WHERE key IN ('{META_OUT_LINES}', '{META_OUT_BYTES}')",
        [str(lines), str(size)],
    ).fetchone()
    if row is None or int(row[0]) < 2:  # a record without them: write them whole
        journal.write_meta({META_OUT_LINES: str(lines), META_OUT_BYTES: str(size)})(conn)


class ResultBatch:
    """The results of one flush and the output lines they let follow: an op for the writer.

    Filled on the event loop while its flush gathers (``add``), run once (or again, with the
    same effect) on the writer thread after the flush is handed over.
    """

    __slots__ = ("_file", "_start", "_texts", "rows")

    def __init__(self, out_file: OutputFile) -> None:
        self._file = out_file
        self.rows: list[LineRow] = []
        self._start = -1
        self._texts: list[bytes | None] = []

    def add(self, row: LineRow | None, chunk: Chunk | None) -> None:
        """One more result stored, and (``chunk``) the lines the file can take after the last."""
        if row is not None:
            self.rows.append(row)
        if chunk is not None:
            if not self._texts:
                self._start = chunk.start
            self._texts.extend(chunk.texts)  # takes are contiguous: each starts at the last stop

    def __call__(self, conn: Conn) -> None:
        write_lines(conn, self.rows)
        if self._texts:
            self._file.write(conn, Chunk(self._start, tuple(self._texts)))
