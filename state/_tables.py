"""Small helpers for the rich tables the state commands print."""

from __future__ import annotations

from rich.table import Table

__all__ = ["table_width"]


def table_width(table: Table) -> int:
    """The width the table needs unwrapped: widest cell of each column plus borders."""
    widths = []
    for column in table.columns:
        cells = [str(column.header), str(column.footer), *map(str, column.cells)]
        widths.append(max(len(c) for c in cells) + 3)  # a space each side and a border
    return sum(widths) + 1
