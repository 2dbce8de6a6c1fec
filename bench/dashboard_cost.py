"""What the progress display costs the engine: CPU seconds per wall second at full throughput.

Feeds a synthetic event stream shaped like a busy run (by default 2,000 requests/s for 20 s of
simulated time after a 5 s warm-up; 70 languages, six-request conversations, 1% retries, 0.1%
429s, and a budget update per reply, which is pessimistic: the ledger sends at most 4 a
second) into a ProgressModel, redraws a rich Live dashboard on a terminal console that writes
to /dev/null at 4 Hz, and writes the status file once a second. Everything runs on a
FakeClock, so the measured process CPU time is all display work (the bench's own loop is
measured with a do-nothing hook and subtracted); dividing it by the simulated seconds gives
the share of one core a real run of that speed spends on its display. Prints a table, then
one JSON line.

    .venv/bin/python bench/dashboard_cost.py [--rps 2000] [--seconds 20] [--hz 4] [--width 100]
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from engine.clock import FakeClock
from engine.events import (
    BudgetUpdate,
    ConversationFinished,
    ConversationStarted,
    Event,
    RateLimitHit,
    RequestDone,
    RequestRetried,
    RequestSent,
    RunStarted,
    StepDone,
)
from engine.progress import Dashboard, ProgressModel, StatusFileWriter
from engine.progress.display import DRAW_BUDGET

LANGUAGES = [f"language-{i:02d}" for i in range(70)]
KINDS = ["evolve", "answer", "follow_up", "answer", "follow_up", "answer"]


def synthetic_events(rps: float, seconds: float, seed: int = 7) -> Iterator[tuple[float, Event]]:
    """(time, event) in time order: requests sent evenly, replies after a random latency."""
    rng = random.Random(seed)
    heap: list[tuple[float, int, Event]] = []
    seq = 0
    n_requests = int(rps * seconds)
    spent = 0.0

    def push(t: float, event: Event) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(heap, (t, seq, event))

    for i in range(n_requests):
        t = i / rps
        conv, step = divmod(i, len(KINDS))
        lang = LANGUAGES[conv % len(LANGUAGES)]
        kind = KINDS[step]
        key = f"{conv}/{step}"
        while heap and heap[0][0] <= t:
            yield heap[0][0], heapq.heappop(heap)[2]
        if step == 0:
            yield t, ConversationStarted(conv_id=conv, language=lang, task="qa", t=t)
        yield t, RequestSent(key=key, kind=kind, prompt_tokens=600, max_tokens=512, t=t)
        done_at = t + rng.uniform(0.5, 3.0)
        roll = rng.random()
        if roll < 0.001:
            push(done_at, RateLimitHit(key=key, limit_kind="tokens", pause_s=1.0, t=done_at))
            continue
        if roll < 0.011:
            push(
                done_at,
                RequestRetried(
                    key=key,
                    error_class="server_error",
                    message="503 Service Unavailable: the server is overloaded",
                    attempt=1,
                    delay_s=1.0,
                    t=done_at,
                ),
            )
            continue
        spent += 0.0009
        push(
            done_at,
            RequestDone(
                key=key,
                kind=kind,
                prompt_tokens=600,
                completion_tokens=350,
                latency_s=done_at - t,
                cost_usd=0.0009,
                t=done_at,
            ),
        )
        push(done_at, StepDone(conv_id=conv, kind=kind, language=lang, t=done_at))
        push(done_at, BudgetUpdate(spent, 0.5, 500.0, 900.0, done_at))
        if step == len(KINDS) - 1:
            status = "filtered" if rng.random() < 0.03 else "done"
            reason = "repetition" if status == "filtered" else None
            push(
                done_at,
                ConversationFinished(
                    conv_id=conv,
                    status=status,
                    reason=reason,
                    language=lang,
                    task="qa",
                    turns=3,
                    t=done_at,
                ),
            )
    while heap:
        yield heap[0][0], heapq.heappop(heap)[2]


def cpu(call: Callable[[], object]) -> float:
    start = time.process_time()
    call()
    return time.process_time() - start


WARMUP_S = 5.0  # longer than the slowest reply, so the measured part is at steady state


def measure(rps: float, seconds: float, hz: float, width: int) -> dict[str, float]:
    stream = list(synthetic_events(rps, WARMUP_S + seconds))
    warm = [(t, e) for t, e in stream if t < WARMUP_S]
    events = [(t, e) for t, e in stream if WARMUP_S <= t < WARMUP_S + seconds]
    conversations = int(rps * (WARMUP_S + seconds)) // len(KINDS)

    def feed(
        clock: FakeClock, part: list[tuple[float, Event]], hook: Callable[[Event], None]
    ) -> None:
        for t, event in part:
            if t > clock.now():
                clock.advance(t - clock.now())
            hook(event)

    def model_only() -> float:
        clock = FakeClock()
        model = ProgressModel(clock)
        feed(clock, warm, model.on_event)
        return cpu(lambda: feed(clock, events, model.on_event))

    # The bench's own loop (moving the clock) with a hook that does nothing is subtracted: the
    # engine pays for its own loop anyway.
    loop_cpu = min(cpu(lambda: feed(FakeClock(), events, lambda e: None)) for _ in range(3))
    model_cpu = min(model_only() for _ in range(3)) - loop_cpu

    # The whole display: the model, a dashboard frame at `hz`, the status file at 1 Hz.
    clock = FakeClock()
    model = ProgressModel(clock, language_totals=dict.fromkeys(LANGUAGES, conversations // 70))
    model.on_event(RunStarted("bench", conversations, 0, 10_000_000, 2e9, 500.0, 0.0))
    feed(clock, warm, model.on_event)
    sink = open(os.devnull, "w")  # noqa: SIM115 - closed below, after the Live stops
    console = Console(file=sink, force_terminal=True, width=width, height=40)
    live = Live(console=console, auto_refresh=False, transient=True)
    frame_s, next_frame, next_status = 1.0 / hz, WARMUP_S, WARMUP_S
    frames = writes = 0
    snapshot_cpu = render_cpu = status_cpu = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        writer = StatusFileWriter(Path(tmp))
        live.start()
        start = time.process_time()
        for t, event in events:
            if t > clock.now():
                clock.advance(t - clock.now())
            model.on_event(event)
            if t >= next_frame:
                a = time.process_time()
                snapshot = model.snapshot()
                b = time.process_time()
                live.update(Dashboard(snapshot, max_languages=12), refresh=True)
                c = time.process_time()
                snapshot_cpu += b - a
                render_cpu += c - b
                frames += 1
                next_frame += frame_s
                if t >= next_status:
                    writer.write(snapshot)
                    status_cpu += time.process_time() - c
                    writes += 1
                    next_status += 1.0
        total_cpu = time.process_time() - start
        live.stop()
    sink.close()
    display_cpu = total_cpu - loop_cpu
    return {
        "rps": rps,
        "simulated_s": seconds,
        "events": len(events),
        "events_per_s": len(events) / seconds,
        "frames": frames,
        "status_writes": writes,
        "width": width,
        "on_event_us": model_cpu / len(events) * 1e6,
        "snapshot_ms": snapshot_cpu / frames * 1e3,
        "render_ms": render_cpu / frames * 1e3,
        "status_write_ms": status_cpu / max(writes, 1) * 1e3,
        "model_cpu_per_s": model_cpu / seconds,
        "frames_cpu_per_s": (snapshot_cpu + render_cpu) / seconds,
        "status_cpu_per_s": status_cpu / seconds,
        "display_cpu_per_s": display_cpu / seconds,
        "core_percent": display_cpu / seconds * 100,
        # progress_display stretches its frame interval so drawing stays within DRAW_BUDGET of
        # a core; this is the rate it would settle at for frames this expensive.
        "governed_hz": min(hz, DRAW_BUDGET / ((snapshot_cpu + render_cpu) / frames)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rps", type=float, default=2000.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="simulated seconds")
    parser.add_argument("--hz", type=float, default=4.0, help="dashboard frames per second")
    parser.add_argument("--width", type=int, default=100, help="terminal columns")
    args = parser.parse_args()
    r = measure(args.rps, args.seconds, args.hz, args.width)
    table = Table(title="progress display cost (CPU seconds per wall second of the run)")
    table.add_column("what")
    table.add_column("figure", justify="right")
    table.add_row("load", f"{r['rps']:,.0f} requests/s, {r['events_per_s']:,.0f} events/s")
    table.add_row("simulated", f"{r['simulated_s']:.0f} s, {r['events']:,} events")
    table.add_row("model.on_event", f"{r['on_event_us']:.2f} µs/event")
    table.add_row("snapshot", f"{r['snapshot_ms']:.2f} ms/frame")
    table.add_row(f"dashboard draw ({r['width']} cols)", f"{r['render_ms']:.2f} ms/frame")
    table.add_row("status file write", f"{r['status_write_ms']:.2f} ms/write")
    table.add_row("model CPU", f"{r['model_cpu_per_s'] * 100:.2f}% of a core")
    table.add_row(f"frames CPU ({args.hz:g} Hz)", f"{r['frames_cpu_per_s'] * 100:.2f}% of a core")
    table.add_row("status file CPU (1 Hz)", f"{r['status_cpu_per_s'] * 100:.2f}% of a core")
    table.add_row("frame rate the governor allows", f"{r['governed_hz']:.1f} Hz (max {args.hz:g})")
    verdict = "under" if r["core_percent"] < 2 else "OVER"
    table.add_row("display total", f"{r['core_percent']:.2f}% of a core ({verdict} the 2% target)")
    Console(stderr=False).print(table)
    sys.stdout.write(json.dumps({"bench": "dashboard_cost", **r}) + "\n")


if __name__ == "__main__":
    main()
