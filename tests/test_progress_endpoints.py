"""Per-endpoint figures in the live model, the dashboard, the end summary and the status JSON:
each endpoint's requests, replies, 429s and failures, added to earlier sessions' figures, and
why an endpoint was taken out."""

from __future__ import annotations

import orjson
from rich.console import Console

from engine.clock import FakeClock
from engine.events import (
    EndpointOut,
    RateLimitHit,
    RequestDone,
    RequestFailed,
    RequestRetried,
    RequestSent,
    RunStarted,
)
from engine.progress.dashboard import Dashboard
from engine.progress.model import ProgressModel
from engine.progress.snapshot import EndpointProgress, ProgressSnapshot
from engine.progress.summary import summary_rows


def fed() -> ProgressModel:
    clock = FakeClock(100.0)
    earlier = ProgressSnapshot(
        endpoints=(EndpointProgress("east", "gpt-4o", sent=10, ok=8, latency_s=2.0),)
    )
    model = ProgressModel(clock, baseline=earlier)
    model.on_event(
        RunStarted(
            "r", 10, 0, 600, None, None, 100.0, endpoints=(("east", "gpt-4o"), ("west", "dep"))
        )
    )
    for i in range(4):
        model.on_event(RequestSent(f"{i}:0", "evolve", 10, 20, 100.0, endpoint="east"))
        model.on_event(RequestDone(f"{i}:0", "evolve", 10, 5, 1.0, 0.01, 100.0, endpoint="east"))
    model.on_event(RequestSent("9:0", "evolve", 10, 20, 100.0, endpoint="west"))
    model.on_event(RateLimitHit("9:0", "requests", 1.0, 100.0, endpoint="west"))
    model.on_event(RequestSent("9:0", "evolve", 10, 20, 100.0, endpoint="west"))
    model.on_event(RequestRetried("9:0", "server_error", "500", 1, 0.1, 100.0, "west"))
    model.on_event(RequestSent("9:0", "evolve", 10, 20, 100.0, endpoint="west"))
    model.on_event(RequestFailed("9:0", "authentication_failed", "401 on west", 100.0, "west"))
    model.on_event(EndpointOut("west", "the provider rejected the API key (401)", 1, 100.0))
    clock.advance(60.0)
    return model


def test_the_live_model_keeps_each_endpoints_figures() -> None:
    """Counts per endpoint, earlier sessions' added; the mean time at the server is over all
    replies; the endpoint taken out says why."""
    east, west = fed().snapshot().endpoints
    assert (east.name, east.model, east.sent, east.ok) == ("east", "gpt-4o", 14, 12)
    assert east.latency_s is not None and abs(east.latency_s - (8 * 2.0 + 4 * 1.0) / 12) < 1e-9
    assert east.rpm == 4.0 and east.out is None and east.tokens == 60
    assert (west.model, west.sent, west.ok, west.rate_limited, west.failed) == ("dep", 3, 0, 1, 2)
    assert west.out is not None and "401" in west.out


def test_dashboard_summary_and_json_show_the_endpoints() -> None:
    """The dashboard draws a line per endpoint (the one out in red, with its reason), the end
    summary a row each, and the JSON snapshot round-trips them."""
    snapshot = fed().snapshot()
    console = Console(width=100, record=True, color_system=None)
    console.print(Dashboard(snapshot))
    drawn = console.export_text()
    assert "endpoints" in drawn
    east = next(line for line in drawn.splitlines() if line.startswith("│ east "))
    west = next(line for line in drawn.splitlines() if line.startswith("│ west "))
    assert "gpt-4o" in east and "out: the provider rejected" in west
    rows = {label.strip(): (figure, detail) for label, figure, detail in summary_rows(snapshot)}
    assert rows["west"][0] == "3" and "taken out" in rows["west"][1]
    again = ProgressSnapshot.from_dict(orjson.loads(orjson.dumps(snapshot.as_dict())))
    assert again.endpoints == snapshot.endpoints


def test_one_endpoint_adds_no_endpoint_lines() -> None:
    """A run with one endpoint shows no endpoint table: its figures are the run's."""
    clock = FakeClock()
    model = ProgressModel(clock)
    model.on_event(RequestSent("1:0", "evolve", 10, 20, 0.0, endpoint="provider"))
    snapshot = model.snapshot()
    console = Console(width=100, record=True, color_system=None)
    console.print(Dashboard(snapshot))
    assert "endpoints" not in console.export_text()
    assert not any(label.strip() == "provider" for label, _, _ in summary_rows(snapshot))
