"""Joining Parquet files of one schema into one file by copying their bytes, decoding nothing.

A Parquet file is ``PAR1``, its column chunks (and bloom filters), then a footer: a Thrift
(compact protocol) FileMetaData that locates every chunk by its absolute offset in the file.
So the parts' bytes can follow one another in a new file under one footer that lists every
part's row groups, each offset moved by where its part landed. The export uses this instead of
reading every part back into one writer, whose memory grew with the rows written: here what is
held is a copy buffer and one part's footer (about 30 kB), whatever the number of parts.

Only what this needs of the compact protocol is here: a generic decoder into (field id, type,
value) lists and the encoder that writes them back unchanged, except the offsets it moves.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["ParquetConcatError", "concat_parquet"]

_MAGIC = b"PAR1"

# Compact protocol types.
_TRUE, _FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT = range(1, 13)

# Field ids (parquet.thrift) of what is read or moved.
_FILE_SCHEMA, _FILE_NUM_ROWS, _FILE_ROW_GROUPS = 2, 3, 4
_GROUP_COLUMNS, _GROUP_NUM_ROWS, _GROUP_FILE_OFFSET, _GROUP_ORDINAL = 1, 3, 5, 7
_CHUNK_FILE_PATH, _CHUNK_META = 1, 3
# Absolute file offsets: ColumnChunk's file_offset, offset_index_offset, column_index_offset;
# ColumnMetaData's data_page_offset, index_page_offset, dictionary_page_offset,
# bloom_filter_offset.
_CHUNK_OFFSETS = frozenset({2, 4, 6})
_CHUNK_OFFSET_INDEX = 4
_META_OFFSETS = frozenset({9, 10, 11, 14})

Field = tuple[int, int, Any]  # (field id, compact type, value)


class ParquetConcatError(ValueError):
    """A part is not a Parquet file this module can join, or the parts' schemas differ."""


def concat_parquet(parts: Sequence[Path], output: BinaryIO, spill: BinaryIO) -> int:
    """Write the parts' row groups, in order, as one Parquet file to ``output``; the row count.

    The row groups' metadata waits in ``spill`` (an empty file open for reading and writing)
    until the footer is written, so memory holds one part's footer at a time. Every part must
    have the same schema (byte for byte in its footer) and no encryption or external column
    chunks. Raises ParquetConcatError otherwise and OSError on I/O failure.
    """
    if not parts:
        raise ParquetConcatError("no Parquet part to join")
    output.write(_MAGIC)
    position = len(_MAGIC)
    head: list[Field] = []
    schema: Any = None
    groups = spilled = rows = 0
    for part in parts:
        meta, body_end = _footer(part)
        fields = dict((fid, value) for fid, _, value in meta)
        if schema is None:
            head, schema = meta, fields.get(_FILE_SCHEMA)
        elif fields.get(_FILE_SCHEMA) != schema:
            raise ParquetConcatError(f"{part.name}: its schema differs from the first part's")
        # The part's bytes after its magic land at ``position``: each offset moves by this.
        shift = position - len(_MAGIC)
        for group in _list_items(fields.get(_FILE_ROW_GROUPS)):
            spilled += spill.write(_encode_struct(_moved_group(group, shift, groups)))
            groups += 1
        rows += int(fields.get(_FILE_NUM_ROWS, 0))
        with part.open("rb") as src:
            src.seek(len(_MAGIC))
            position += _copy_bytes(src, output, body_end - len(_MAGIC))
    before, after = _footer_around_groups(head, rows, groups)
    output.write(before)
    spill.seek(0)
    _copy_bytes(spill, output, spilled)
    output.write(after)
    output.write(struct.pack("<I", len(before) + spilled + len(after)))
    output.write(_MAGIC)
    return rows


def _footer(path: Path) -> tuple[list[Field], int]:
    """The part's decoded FileMetaData and where its footer starts."""
    with path.open("rb") as f:
        f.seek(0, 2)
        size = f.tell()
        if size < 12:
            raise ParquetConcatError(f"{path.name}: too short for a Parquet file")
        f.seek(size - 8)
        tail = f.read(8)
        length = struct.unpack("<I", tail[:4])[0]
        if tail[4:] != _MAGIC or length > size - 12:
            raise ParquetConcatError(f"{path.name}: not a Parquet file (or an encrypted one)")
        start = size - 8 - length
        f.seek(start)
        data = f.read(length)
    reader = _Reader(data)
    meta = reader.struct()
    return meta, start


def _copy_bytes(src: BinaryIO, dst: BinaryIO, count: int) -> int:
    copied = 0
    while copied < count:
        chunk = src.read(min(1 << 20, count - copied))
        if not chunk:
            raise ParquetConcatError("a part ended before its footer said")
        dst.write(chunk)
        copied += len(chunk)
    return copied


def _moved_group(group: list[Field], shift: int, ordinal: int) -> list[Field]:
    """A RowGroup with every absolute offset moved by ``shift`` and its new ordinal."""
    out: list[Field] = []
    for fid, ttype, value in group:
        if fid == _GROUP_COLUMNS:
            elem, chunks = value
            value = (elem, [_moved_chunk(chunk, shift) for chunk in chunks])
        elif fid == _GROUP_FILE_OFFSET:
            value += shift
        elif fid == _GROUP_ORDINAL:
            value = ordinal
        out.append((fid, ttype, value))
    return out


def _moved_chunk(chunk: list[Field], shift: int) -> list[Field]:
    out: list[Field] = []
    for fid, ttype, value in chunk:
        if fid == _CHUNK_FILE_PATH:
            raise ParquetConcatError("a part's column chunk lives in another file")
        if fid == _CHUNK_OFFSET_INDEX:
            # Its page locations are absolute offsets inside the index itself, which this does
            # not rewrite: refused rather than joined into a file whose page index misleads.
            raise ParquetConcatError("a part has a page offset index (not joined)")
        if fid in _CHUNK_OFFSETS:
            value += shift
        elif fid == _CHUNK_META:
            value = [(f, t, v + shift if f in _META_OFFSETS else v) for f, t, v in value]
        out.append((fid, ttype, value))
    return out


def _list_items(value: Any) -> list[Any]:
    return list(value[1]) if value is not None else []


def _footer_around_groups(head: list[Field], rows: int, groups: int) -> tuple[bytes, bytes]:
    """The first part's FileMetaData with the total row count, encoded up to its row groups
    (list header included) and after them: the row groups go between."""
    before, after = bytearray(), bytearray()
    out = before
    last = 0
    for fid, ttype, value in head:
        if fid == _FILE_NUM_ROWS:
            value = rows
        _field_header(out, fid, ttype, last)
        if fid == _FILE_ROW_GROUPS:
            _list_header(out, _STRUCT, groups)
            out = after
        elif ttype not in (_TRUE, _FALSE):  # a struct's booleans are in their field's type
            _value(out, ttype, value)
        last = fid
    out.append(0)
    return bytes(before), bytes(after)


class _Reader:
    """Decodes compact-protocol values from bytes."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise ParquetConcatError("a Parquet footer ends early")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def varint(self) -> int:
        result = shift = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ParquetConcatError("a Parquet footer ends early")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def struct(self) -> list[Field]:
        fields: list[Field] = []
        last = 0
        while True:
            head = self.byte()
            if head == 0:
                return fields
            ttype, delta = head & 0x0F, head >> 4
            fid = last + delta if delta else self.zigzag()
            if ttype in (_TRUE, _FALSE):
                fields.append((fid, ttype, ttype == _TRUE))
            else:
                fields.append((fid, ttype, self.value(ttype)))
            last = fid

    def value(self, ttype: int) -> Any:
        if ttype in (_TRUE, _FALSE):  # only inside a list: one byte each
            return self.byte() == _TRUE
        if ttype == _BYTE:
            return self.byte()
        if ttype in (_I16, _I32, _I64):
            return self.zigzag()
        if ttype == _DOUBLE:
            return self.take(8)
        if ttype == _BINARY:
            return self.take(self.varint())
        if ttype in (_LIST, _SET):
            head = self.byte()
            size = head >> 4
            if size == 15:
                size = self.varint()
            elem = head & 0x0F
            return (elem, [self.value(elem) for _ in range(size)])
        if ttype == _MAP:
            size = self.varint()
            kinds = self.byte() if size else 0
            k, v = kinds >> 4, kinds & 0x0F
            return (k, v, [(self.value(k), self.value(v)) for _ in range(size)])
        if ttype == _STRUCT:
            return self.struct()
        raise ParquetConcatError(f"unknown Thrift type {ttype} in a Parquet footer")


def _varint(out: bytearray, n: int) -> None:
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _zigzag(out: bytearray, n: int) -> None:
    _varint(out, (n << 1) ^ (n >> 63))


def _field_header(out: bytearray, fid: int, ttype: int, last: int) -> None:
    if 0 < fid - last <= 15:
        out.append(((fid - last) << 4) | ttype)
    else:
        out.append(ttype)
        _zigzag(out, fid)


def _list_header(out: bytearray, elem: int, size: int) -> None:
    if size < 15:
        out.append((size << 4) | elem)
    else:
        out.append(0xF0 | elem)
        _varint(out, size)


def _encode_struct(fields: list[Field]) -> bytes:
    out = bytearray()
    _struct(out, fields)
    return bytes(out)


def _struct(out: bytearray, fields: list[Field]) -> None:
    last = 0
    for fid, ttype, value in fields:
        _field_header(out, fid, ttype, last)
        if ttype not in (_TRUE, _FALSE):  # a struct's booleans are in their field's type
            _value(out, ttype, value)
        last = fid
    out.append(0)


def _value(out: bytearray, ttype: int, value: Any) -> None:
    if ttype in (_TRUE, _FALSE):
        out.append(_TRUE if value else _FALSE)
    elif ttype == _BYTE:
        out.append(value & 0xFF)
    elif ttype in (_I16, _I32, _I64):
        _zigzag(out, value)
    elif ttype == _DOUBLE:
        out += value
    elif ttype == _BINARY:
        _varint(out, len(value))
        out += value
    elif ttype in (_LIST, _SET):
        elem, items = value
        _list_header(out, elem, len(items))
        for item in items:
            _value(out, elem, item)
    elif ttype == _MAP:
        k, v, pairs = value
        _varint(out, len(pairs))
        if pairs:
            out.append((k << 4) | v)
            for key, val in pairs:
                _value(out, k, key)
                _value(out, v, val)
    elif ttype == _STRUCT:
        _struct(out, value)
    else:
        raise ParquetConcatError(f"unknown Thrift type {ttype} in a Parquet footer")
