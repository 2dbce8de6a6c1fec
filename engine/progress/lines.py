"""Progress as text lines for logs and programs: logfmt ``key=value`` lines and JSON objects.

Nothing here raises for any snapshot.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from engine.formats import duration
from engine.progress.snapshot import ProgressSnapshot

__all__ = ["iso_time", "progress_json", "progress_line"]


def iso_time(wall: float) -> str:
    """A wall-clock time (``time.time()``) as ISO 8601 in UTC, to the second."""
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="seconds")


def _quote(value: str) -> str:
    """A logfmt value: bare when it can be, else double-quoted (a POSIX shell can split it)."""
    value = " ".join(value.split())  # one line per record, whatever the error message held
    if value and not any(c in value for c in ' "=\\'):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pct(fraction: float | None) -> str:
    return "-" if fraction is None else f"{fraction * 100:.1f}"


def _of(n: int, total: int | None) -> str:
    return f"{n}/{'-' if total is None else total}"


def progress_line(s: ProgressSnapshot, *, wall: float | None = None) -> str:
    """One logfmt line with the dashboard's figures (percentages without the % sign).

    Counts are exact integers and money has cents, so a program can parse the line back; a
    figure that is not known yet is ``-``.
    """
    fields: list[tuple[str, str]] = []
    if wall is not None:
        fields.append(("ts", iso_time(wall)))
    slowest = next((lang for lang in s.languages if lang.total != lang.finished), None)
    fields += [
        ("run", s.run),
        ("provider", s.provider or "-"),
        ("model", s.model or "-"),
        ("state", s.state),
        ("elapsed", duration(s.elapsed_s)),
        ("conversations", f"{s.finished}/{s.total}"),
        ("pct", _pct(s.fraction)),
        ("done", str(s.done)),
        ("failed", str(s.failed)),
        ("filtered", str(s.filtered)),
        ("earlier", str(s.finished_before)),
        ("active", str(s.active)),
        ("pending", str(s.pending)),
        ("per_min", _num(s.conv_per_min)),
        ("eta", duration(s.eta_s)),
        ("in_flight", str(s.in_flight)),
        ("rpm", f"{s.rpm:.0f}"),
        ("rpm_limit", _num(s.rpm_limit, 0)),
        ("rpm_util", _pct(s.rpm_util)),
        ("tpm", f"{s.tpm:.0f}"),
        ("tpm_limit", _num(s.tpm_limit, 0)),
        ("tpm_util", _pct(s.tpm_util)),
        ("tokens_in", str(s.tokens_in)),
        ("tokens_out", str(s.tokens_out)),
        ("tokens_reasoning", str(s.tokens_reasoning)),
        ("tokens_cached", str(s.tokens_cached)),
        ("rate_limited", str(s.rate_limit_hits)),
        ("retries", str(s.retries)),
        ("failed_requests", str(s.requests_failed)),
        ("errors", ",".join(f"{name}:{n}" for name, n in s.errors_by_class) or "-"),
        ("money", "simulated" if s.simulated else "real"),
        ("spent_usd", f"{s.spent_usd:.2f}"),
        ("reserved_usd", f"{s.reserved_usd:.2f}"),
        ("unknown_usd", f"{s.unknown_usd:.4f}"),
        ("cap_usd", _num(s.cap_usd, 2)),
        ("projected_usd", _num(s.projected_usd, 2)),
        (
            "slowest",
            "-"
            if slowest is None
            else f"{slowest.language}:{_of(slowest.finished, slowest.total)}",
        ),
    ]
    if s.batches_open is not None:
        fields += [
            ("batches_open", str(s.batches_open)),
            ("batches", ",".join(f"{name}:{n}" for name, n in s.batches_by_status) or "-"),
            ("batch_requests", f"{s.batch_requests_done}/{s.batch_requests_total}"),
            ("batch_waiting", str(s.batch_waiting)),
            ("oldest_batch", duration(s.batch_oldest_age_s)),
            ("batch_held_usd", _num(s.batch_held_usd, 2)),
        ]
    if s.paused_s > 0:
        fields.append(("paused_s", _num(s.paused_s)))
    if max(s.rpm_util or 0.0, s.tpm_util or 0.0) > 1.0 and s.rate_limit_hits == 0:
        fields.append(("over_limit", "initial_burst"))  # the provider's bucket starts full
    if s.last_error is not None:
        fields.append(("last_error", f"{s.last_error_class or 'error'}: {s.last_error}"))
    return "m2l " + " ".join(f"{key}={_quote(value)}" for key, value in fields)


def progress_json(
    s: ProgressSnapshot,
    *,
    wall: float,
    kind: str = "progress",
    extra: Mapping[str, Any] | None = None,
) -> str:
    """One JSON object on one line: ``type`` (progress or summary), ``ts``, and ``as_dict()``."""
    record: dict[str, Any] = {"type": kind, "ts": iso_time(wall)}
    record.update(s.as_dict())
    if extra:
        record.update(extra)
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
