"""Plain log lines and JSON lines: they parse back and carry the model's figures."""

from __future__ import annotations

import io
import json
import shlex
from dataclasses import replace

import pytest
from rich.console import Console

from engine.errors import ConfigError
from engine.progress import (
    JsonDisplay,
    LanguageProgress,
    PlainDisplay,
    ProgressSnapshot,
    QuietDisplay,
    RichDisplay,
    make_display,
    progress_json,
    progress_line,
    resolve_mode,
)

SNAPSHOT = ProgressSnapshot(
    run="demo run",
    state="running",
    elapsed_s=3725.0,
    total=1000,
    done=400,
    failed=7,
    filtered=23,
    active=32,
    conv_per_min=12.34,
    eta_s=2770.0,
    in_flight=17,
    rpm=480.4,
    rpm_limit=500.0,
    tpm=95_000.0,
    tpm_limit=100_000.0,
    tokens_in=1_234_567,
    tokens_out=765_432,
    retries=9,
    rate_limit_hits=3,
    requests_failed=2,
    errors_by_class=(("server_error", 6), ("request_timeout", 3)),
    last_error_class="malformed_response",
    last_error='body was not JSON: "<html>\n502 Bad Gateway" \\ retrying',
    spent_usd=12.345,
    reserved_usd=0.5,
    cap_usd=50.0,
    projected_usd=28.7,
    languages=(
        LanguageProgress("Swahili", total=10, done=2, rate_per_min=0.5, eta_s=960.0),
        LanguageProgress("Hindi", total=10, done=9, rate_per_min=2.0, eta_s=30.0),
    ),
)


def parse_logfmt(line: str) -> dict[str, str]:
    prefix, _, rest = line.partition(" ")
    assert prefix == "m2l"
    return dict(field.split("=", 1) for field in shlex.split(rest))


def test_a_log_line_parses_back_to_the_snapshots_figures() -> None:
    """Every key=value of the plain line matches the snapshot it was made from."""
    line = progress_line(SNAPSHOT, wall=0.0)
    assert "\n" not in line
    fields = parse_logfmt(line)
    assert fields["ts"] == "1970-01-01T00:00:00+00:00"
    assert fields["run"] == "demo run" and fields["state"] == "running"
    assert fields["elapsed"] == "1:02:05" and fields["eta"] == "0:46:10"
    assert fields["conversations"] == "430/1000" and fields["pct"] == "43.0"
    counts = {k: int(fields[k]) for k in ("done", "failed", "filtered", "active", "pending")}
    assert counts == {"done": 400, "failed": 7, "filtered": 23, "active": 32, "pending": 538}
    assert fields["per_min"] == "12.3" and fields["in_flight"] == "17"
    assert (fields["rpm"], fields["rpm_limit"], fields["rpm_util"]) == ("480", "500", "96.1")
    assert (fields["tpm"], fields["tpm_util"]) == ("95000", "95.0")
    assert (fields["tokens_in"], fields["tokens_out"]) == ("1234567", "765432")
    assert (fields["rate_limited"], fields["retries"], fields["failed_requests"]) == ("3", "9", "2")
    assert fields["errors"] == "server_error:6,request_timeout:3"
    assert (fields["spent_usd"], fields["cap_usd"], fields["projected_usd"]) == (
        "12.35",
        "50.00",
        "28.70",
    )
    assert fields["slowest"] == "Swahili:2/10"
    assert fields["last_error"] == (
        'malformed_response: body was not JSON: "<html> 502 Bad Gateway" \\ retrying'
    )


def test_unknown_figures_are_dashes_in_a_log_line() -> None:
    """Before limits, a cap or an ETA are known, their fields read '-'."""
    fields = parse_logfmt(progress_line(ProgressSnapshot()))
    assert "ts" not in fields and "last_error" not in fields
    for key in ("rpm_limit", "rpm_util", "cap_usd", "projected_usd", "eta", "pct", "slowest"):
        assert fields[key] == "-", key
    assert fields["run"] == ""


def test_a_json_line_is_the_snapshot() -> None:
    """A JSON line is one object: type, ts and as_dict(), which from_dict reads back."""
    line = progress_json(SNAPSHOT, wall=60.0)
    assert "\n" not in line
    data = json.loads(line)
    assert data["type"] == "progress" and data["ts"] == "1970-01-01T00:01:00+00:00"
    assert data["finished"] == 430 and data["pending"] == 538
    assert data["errors_by_class"] == {"server_error": 6, "request_timeout": 3}
    assert data["languages"][0]["language"] == "Swahili"
    assert ProgressSnapshot.from_dict(data) == SNAPSHOT


def test_plain_and_json_displays_write_one_line_per_call() -> None:
    """The plain display writes log lines and a summary; the JSON one ends with a summary."""
    plain_out, json_out = io.StringIO(), io.StringIO()
    plain = PlainDisplay(plain_out, wall=lambda: 0.0)
    plain.show(SNAPSHOT)
    plain.show(replace(SNAPSHOT, done=401))
    final = replace(SNAPSHOT, state="finished")
    plain.close(final, run_dir=None, summary=True)
    lines = plain_out.getvalue().splitlines()
    assert parse_logfmt(lines[1])["done"] == "401"
    assert parse_logfmt(lines[2])["state"] == "finished"
    assert "m2l run demo run: finished after 1:02:05" in lines[3]
    assert lines[-1] == "export: m2l export 'demo run' --format release-parquet"

    display = JsonDisplay(json_out, wall=lambda: 0.0)
    display.show(SNAPSHOT)
    display.close(final, run_dir=None, summary=True)
    records = [json.loads(line) for line in json_out.getvalue().splitlines()]
    assert [r["type"] for r in records] == ["progress", "summary"]
    assert records[1]["state"] == "finished"
    assert records[1]["export"] == "m2l export 'demo run' --format release-parquet"


@pytest.mark.parametrize(
    ("mode", "isatty", "chosen"),
    [
        ("auto", True, "rich"),
        ("auto", False, "plain"),
        ("rich", False, "rich"),
        ("plain", True, "plain"),
        ("json", True, "json"),
        ("quiet", True, "quiet"),
    ],
)
def test_the_mode_picks_a_display(mode: str, isatty: bool, chosen: str) -> None:
    """auto is the dashboard on a terminal and plain lines elsewhere; others are as named."""
    assert resolve_mode(mode, isatty=isatty) == chosen
    kinds = {"rich": RichDisplay, "plain": PlainDisplay, "json": JsonDisplay, "quiet": QuietDisplay}
    display = make_display(mode, isatty=isatty, console=Console(file=io.StringIO()))
    assert isinstance(display, kinds[chosen])


def test_intervals_are_bounded_to_four_frames_a_second() -> None:
    """The dashboard never redraws more than 4 times a second; plain lines use the interval."""
    assert (
        make_display("rich", interval_s=0.01, console=Console(file=io.StringIO())).interval_s
        == 0.25
    )
    assert make_display("plain", interval_s=30, stream=io.StringIO()).interval_s == 30
    assert make_display("plain", stream=io.StringIO()).interval_s == 10


def test_an_unknown_mode_is_a_config_error() -> None:
    """A mistyped mode names the valid ones."""
    with pytest.raises(ConfigError, match="auto, rich, plain, json, quiet"):
        resolve_mode("fancy", isatty=True)
