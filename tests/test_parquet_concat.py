"""Joining Parquet files by their bytes (state._parquet_concat): DuckDB and pyarrow read the
joined file as the parts' rows in order, with the parts' schema and row groups; parts that
cannot be joined are refused before anything is written."""

from __future__ import annotations

import struct
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from state._parquet_concat import ParquetConcatError, concat_parquet

# Lists, nested structs, strings long enough for dictionary pages and bloom filters, NULLs.
ROWS = """SELECT CAST(i AS INTEGER) AS id, 'text ' || i || repeat('x', i % 50) AS body,
    CASE WHEN i % 3 = 0 THEN NULL ELSE i % 7 END AS small,
    [{'role': 'user', 'content': 'q' || i}, {'role': 'assistant', 'content': 'a' || i}] AS chat,
    ['t' || (i % 4)] AS tags
    FROM range(LO, HI) t(i) ORDER BY i"""


def write_part(path: Path, lo: int, hi: int, row_group: int = 1000) -> Path:
    conn = duckdb.connect()
    try:
        # As the export writes its parts: every column nullable whatever the data.
        conn.execute("SET disabled_optimizers = 'statistics_propagation'")
        conn.execute(
            f"COPY ({ROWS.replace('LO', str(lo)).replace('HI', str(hi))}) TO '{path}' "
            f"(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {row_group})"
        )
    finally:
        conn.close()
    return path


def group_rows(path: Path) -> list[int]:
    meta = pq.ParquetFile(path).metadata
    return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]


def join(parts: list[Path], out: Path) -> int:
    with out.open("wb") as f, (out.parent / "spill").open("w+b") as spill:
        return concat_parquet(parts, f, spill)


def test_joined_file_holds_every_parts_rows_in_order(tmp_path: Path) -> None:
    """DuckDB and pyarrow read the joined file as the rows of one COPY of the same query."""
    bounds = [(0, 700), (700, 700), (700, 3100), (3100, 3105)]  # an empty part among them
    parts = [write_part(tmp_path / f"p{i}", lo, hi) for i, (lo, hi) in enumerate(bounds)]
    rows = join(parts, tmp_path / "joined.parquet")
    whole = write_part(tmp_path / "whole.parquet", 0, 3105)
    assert rows == 3105
    conn = duckdb.connect()
    read = "SELECT * FROM read_parquet('{}')"
    joined_rows = conn.execute(read.format(tmp_path / "joined.parquet")).fetchall()
    assert joined_rows == conn.execute(read.format(whole)).fetchall()
    assert [r[0] for r in joined_rows] == list(range(3105))
    table = pq.read_table(tmp_path / "joined.parquet")
    assert table.equals(pq.read_table(whole))
    # Each part's row groups, as DuckDB wrote them (the empty part has none).
    groups = [group_rows(p) for p in parts]
    assert group_rows(tmp_path / "joined.parquet") == [n for g in groups for n in g]
    assert len(groups[2]) > 1 and groups[1] == []
    # Every chunk is where the footer says: a filter pushed into the scan (row group
    # statistics, dictionaries, bloom filters) finds the same rows.
    tagged = "SELECT list(id ORDER BY id) FROM read_parquet('{}') WHERE small = 3"
    found = conn.execute(tagged.format(tmp_path / "joined.parquet")).fetchone()
    assert found == conn.execute(tagged.format(whole)).fetchone()
    assert found is not None and found[0] == [i for i in range(3105) if i % 3 and i % 7 == 3]


def test_one_part_is_copied_whole(tmp_path: Path) -> None:
    """A single part joins into a file of the same bytes as the part."""
    part = write_part(tmp_path / "p0", 0, 1500)
    assert join([part], tmp_path / "joined.parquet") == 1500
    assert (tmp_path / "joined.parquet").read_bytes() == part.read_bytes()


def test_parts_of_different_schemas_are_refused(tmp_path: Path) -> None:
    """A part whose schema differs from the first's is an error, not a damaged file."""
    first = write_part(tmp_path / "p0", 0, 10)
    other = tmp_path / "p1"
    duckdb.connect().execute(f"COPY (SELECT 1 AS id) TO '{other}' (FORMAT parquet)")
    with pytest.raises(ParquetConcatError, match="p1: its schema differs"):
        join([first, other], tmp_path / "joined.parquet")


def test_a_file_that_is_not_parquet_is_refused(tmp_path: Path) -> None:
    """Something other than a Parquet file (or a cut one) is an error naming it."""
    first = write_part(tmp_path / "p0", 0, 10)
    (tmp_path / "text").write_bytes(b"not a parquet file at all")
    cut = tmp_path / "cut"
    data = first.read_bytes()
    cut.write_bytes(data[:4] + data[-8:-4] + b"PAR1")  # a footer length beyond the file
    for bad in ("text", "cut"):
        with pytest.raises(ParquetConcatError, match=f"{bad}: not a Parquet file"):
            join([first, tmp_path / bad], tmp_path / "joined.parquet")
    assert struct.unpack("<I", data[-8:-4])[0] > 0


def test_a_part_with_a_page_offset_index_is_refused(tmp_path: Path) -> None:
    """An offset index holds absolute page offsets the join would not move: such parts are
    refused (DuckDB writes none today) rather than joined into a misleading file."""
    import pyarrow as pa

    parts = []
    for i in range(2):
        part = tmp_path / f"p{i}.parquet"
        pq.write_table(
            pa.table({"id": list(range(i * 10, i * 10 + 10))}), part, write_page_index=True
        )
        parts.append(part)
    out, spill = (tmp_path / "out.parquet").open("wb"), (tmp_path / "spill").open("w+b")
    with out, spill, pytest.raises(ParquetConcatError, match="offset index"):
        concat_parquet(parts, out, spill)
