"""The end-of-run summary: its table, its plain text, and the next step for each ending."""

from __future__ import annotations

import dataclasses
import io
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console

from engine.progress import ProgressSnapshot, export_command, render_summary, summary_text

RUN = ProgressSnapshot(
    run="hi-sw",
    state="finished",
    elapsed_s=5025.0,
    total=1000,
    done=950,
    failed=20,
    filtered=30,
    failed_by_reason=(("context_length_exceeded", 15), ("content_filtered", 5)),
    filtered_by_reason=(("repetition", 25), ("wrong_language", 5)),
    requests_sent=6100,
    requests_ok=6000,
    retries=80,
    rate_limit_hits=12,
    requests_failed=20,
    errors_by_class=(("server_error", 60),),
    tokens_in=12_300_000,
    tokens_out=4_560_000,
    spent_usd=123.456,
    cap_usd=200.0,
    binding_limit="tpm",
    mean_utilisation=0.873,
)


def rendered(snapshot: ProgressSnapshot, run_dir: Path, width: int = 100) -> str:
    console = Console(record=True, width=width, file=io.StringIO())
    render_summary(snapshot, run_dir=run_dir, console=console)
    return console.export_text()


def test_utilisation_over_100_percent_is_explained() -> None:
    """A short run that used the provider's initial burst says so next to its utilisation."""
    text = rendered(dataclasses.replace(RUN, mean_utilisation=2.4), Path("runs/hi-sw"))
    assert "240.0%" in text and "initial burst" in text


def test_the_summary_table_has_every_figure() -> None:
    """Done, failed and filtered with reasons, tokens, cost, wall time and utilisation."""
    text = rendered(RUN, Path("runs/hi-sw"))
    assert "m2l · hi-sw · finished" in text
    lines = {line.split()[1]: line for line in text.splitlines() if len(line.split()) > 2}
    assert "950" in lines["done"] and "95.0%" in lines["done"]
    assert (
        "20" in lines["failed"]
        and "context_length_exceeded 15, content_filtered 5" in lines["failed"]
    )
    assert "30" in lines["filtered"] and "repetition 25, wrong_language 5" in lines["filtered"]
    assert "6,100" in text and "80 retried" in text and "12 rate-limited (429)" in text
    assert "12,300,000" in text and "4,560,000" in text
    assert "$123.46" in text and "of the $200.00 cap (61.7%)" in text
    assert "1:23:45" in text
    assert "87.3%" in text and "tpm limit" in text
    assert "initial burst" not in text
    assert "not finished" not in text  # every conversation reached a final state
    assert text.splitlines()[-1] == "export: m2l export runs/hi-sw --format release-parquet"


def test_the_summary_fits_80_columns() -> None:
    """At 80 columns nothing is cut: the export command stays on one line."""
    run_dir = Path("/data/m2l runs/a rather long run directory name")
    text = rendered(RUN, run_dir, width=80)
    assert max(len(line) for line in text.splitlines()[:-1]) <= 80
    assert text.splitlines()[-1] == f"export: {export_command(run_dir)}"
    assert export_command(run_dir).startswith("m2l export '/data/m2l runs/")


@pytest.mark.parametrize(
    ("state", "message", "hint"),
    [
        ("interrupted", "", "resume: run the same command again"),
        ("budget_exhausted", "", "raise budget.usd in the config"),
        ("failed", "AuthenticationFailed: 401", "stopped early (AuthenticationFailed: 401)"),
    ],
)
def test_each_ending_says_what_to_do_next(state: str, message: str, hint: str) -> None:
    """Interrupted, capped and failed runs each say how to go on, before the export command."""
    snapshot = replace(RUN, state=state, message=message, done=500)
    text = rendered(snapshot, Path("runs/x"))
    assert hint in text
    assert "not finished" in text and "450" in text
    assert text.splitlines()[-1] == "export: m2l export runs/x --format release-parquet"


def test_the_plain_summary_matches_the_table() -> None:
    """The plain-text summary carries the same rows and next steps, without a box."""
    text = summary_text(replace(RUN, state="interrupted"), run_dir=Path("runs/hi-sw"))
    lines = text.splitlines()
    assert lines[0] == "m2l run hi-sw: interrupted after 1:23:45"
    assert any(line.split()[:3] == ["done", "950", "95.0%"] for line in lines)
    assert "context_length_exceeded 15" in text and "$123.46" in text
    assert lines[-2] == "resume: run the same command again; finished steps are kept"
    assert lines[-1] == "export: m2l export runs/hi-sw --format release-parquet"
    assert "│" not in text


def test_a_run_without_limits_or_cap_says_so() -> None:
    """Unknown limits and no cap read plainly, not as zeros."""
    text = summary_text(ProgressSnapshot(run="r", state="finished"), run_dir=Path("r"))
    assert "no rpm or tpm limit known" in text
    assert "cap" not in text


def test_time_at_the_server_and_queued_in_m2l_are_shown_apart() -> None:
    """The summary gives the mean time at the server and the mean wait inside m2l apart, with
    the concurrency limit; without those figures the row is left out."""
    timed = replace(RUN, server_mean_s=1.25, queued_mean_s=7.5, concurrency_limit=4)
    text = summary_text(timed, run_dir=Path("runs/hi-sw"))
    assert "time per request" in text
    assert "1.25 s  mean at the server · 7.50 s queued in m2l before sending · limit 4" in text
    assert "time per request" not in summary_text(RUN, run_dir=Path("runs/hi-sw"))
