"""Child-process work for ``bench/conversations.py``: seed files, set-up, measured runs.

Every function named ``*_main`` is the entry of one spawned process, so its CPU time
(``getrusage(RUSAGE_SELF)``: every thread, the DuckDB writer's included) and its peak RSS belong
to that run alone. Simulators run in processes of their own (``bench/_workloads.sim_main``). A
measured run sends back a ``ConvResult``; nothing here raises on a failed request: the scheduler
counts it as a failed conversation and the result says so.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import os
import resource
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Final, Literal

import orjson

from engine.config import Config, Secret, parse_config
from engine.conversation import Conversation
from engine.dispatcher import Accounting
from engine.events import ConversationFinished, Event, RequestDone, RunStarted, StepDone
from engine.scheduler import ConversationStore, StopControl
from prompts.languages import load_languages
from prompts.taxonomy import load_taxonomy
from state.batcher import LINGER_S

__all__ = [
    "API_KEY",
    "CHECKPOINTED",
    "NOOP",
    "ConvResult",
    "ConvSpec",
    "MemResult",
    "MemSpec",
    "MemoryStore",
    "bench_config",
    "cpu_main",
    "mem_run_main",
    "setup_main",
    "write_seed_file",
]

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "seeds.jsonl"
API_KEY = "sk-bench-not-a-key"  # the simulator asks for none; a real provider kind needs one
ENV = {"OPENAI_API_KEY": API_KEY}
MODEL = "gpt-4o-mini"  # o200k_base, like the simulator's replies
Mode = Literal["checkpointed", "noop"]
CHECKPOINTED: Final[Mode] = "checkpointed"  # the engine's own store and request log
NOOP: Final[Mode] = "noop"  # MemoryStore and NullAccounting: nothing recorded


# --- inputs ---------------------------------------------------------------------------------


def write_seed_file(path: Path, rows: int) -> Path:
    """``rows`` seeds cycling through the bundled sample (41 languages), each made distinct."""
    sample = [json.loads(line) for line in SAMPLE.read_text("utf-8").splitlines() if line]
    with path.open("wb") as f:
        for i in range(rows):
            row = dict(sample[i % len(sample)])
            # A distinct suffix survives the normalised dedup of ingestion.
            row["inputs"] = f"{row['inputs']} (#{i})"
            f.write(orjson.dumps(row) + b"\n")
    return path


def bench_config(
    folder: Path,
    *,
    seeds: Path,
    base_url: str,
    evols_per_seed: int,
    rpm: float | None = None,
    tpm: float | None = None,
    max_active: int = 512,
) -> Config:
    """A run config for the simulator at ``base_url``, parsed as ``m2l run`` parses TOML."""
    limits: dict[str, Any] = {"max_inflight": 256}
    if rpm is not None:
        limits["rpm"] = rpm
    if tpm is not None:
        limits["tpm"] = tpm
    data: dict[str, Any] = {
        "run": {
            "name": "bench",
            "output_dir": str(folder / "runs"),
            "seed": 5,
            "max_active": max_active,
            "grace_s": 10.0,
        },
        "seeds": {"file": str(seeds), "evols_per_seed": evols_per_seed},
        # "openai" with a key: requests go to base_url (the simulator in another process), not
        # to an embedded simulator whose CPU would be counted as m2l's.
        "provider": {"kind": "openai", "base_url": base_url, "model": MODEL},
        "limits": limits,
        "generation": {"max_tokens": {"evolve": 128, "answer": 256, "follow_up": 96}},
        "retry": {"base_delay_s": 0.05, "max_delay_s": 1.0},
    }
    return parse_config(data, source="bench/conversations.py", base_dir=folder)


# --- the no-op store ------------------------------------------------------------------------


class MemoryStore:
    """A ConversationStore that serves fixed conversations from memory and records nothing.

    With ``NullAccounting`` in the dispatcher, it is the run with checkpointing taken out.
    """

    __slots__ = ("_convs", "_ids")

    def __init__(self, convs: Sequence[Conversation]) -> None:
        self._convs = sorted(convs, key=lambda c: c.plan.conv_id)
        self._ids = [c.plan.conv_id for c in self._convs]

    async def load(self, statuses: Sequence[str], after: int, limit: int) -> list[Conversation]:
        out: list[Conversation] = []
        for conv in self._convs[bisect.bisect_right(self._ids, after) :]:
            if len(out) >= limit:
                break
            if conv.status.value in statuses:
                out.append(conv)
        return out

    async def record_step(self, conv: Conversation) -> None:
        return None

    async def mark_final(self, conv: Conversation) -> None:
        return None

    async def mark_active(self, conv: Conversation) -> None:
        return None

    async def record_rejection(
        self,
        conv: Conversation,
        *,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        cost: float,
    ) -> None:
        return None

    async def flush(self) -> None:
        return None


# --- counting hook --------------------------------------------------------------------------


class Tally:
    """An event hook that counts replies, steps and finished conversations (cheap, as hooks
    must be), and requests a stop once ``stop_after`` conversations have finished."""

    __slots__ = (
        "finished", "pending_at_start", "replies", "statuses", "steps", "stop", "stop_after"
    )  # fmt: skip

    def __init__(self, stop: StopControl, stop_after: int | None = None) -> None:
        self.stop = stop
        self.stop_after = stop_after
        self.replies = self.steps = self.finished = self.pending_at_start = 0
        self.statuses: Counter[str] = Counter()

    def on_event(self, event: Event) -> None:
        if isinstance(event, RequestDone):
            self.replies += 1
        elif isinstance(event, StepDone):
            self.steps += 1
        elif isinstance(event, ConversationFinished):
            self.finished += 1
            self.statuses[event.status] += 1
            if self.stop_after is not None and self.finished == self.stop_after:
                self.stop.request(f"bench: {self.finished} conversations finished")
        elif isinstance(event, RunStarted):
            self.pending_at_start = event.conversations_total - event.conversations_done


# --- set-up ---------------------------------------------------------------------------------


async def set_up(config: Config) -> int:
    """Ingest, select and plan the run (``m2l run`` with a stop requested before it starts).

    Returns the number of planned conversations.
    """
    from engine.app.run import execute_run

    stop = StopControl()
    stop.request("bench: set-up only")
    report = await execute_run(config, env=ENV, stop=stop)
    return sum(report.counts.values())


def setup_main(config: Config, conn: Connection) -> None:
    """Child process entry: set up a run, send back how many conversations it planned."""
    conn.send(asyncio.run(set_up(config)))
    conn.close()


# --- the engine, assembled ------------------------------------------------------------------


# --- measured CPU runs ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConvSpec:
    """One measured conversation run."""

    label: str
    mode: Mode
    folder: Path
    seed_rows: int
    evols_per_seed: int
    deadline_s: float  # the run is stopped here; what is unfinished is reported
    rpm: float | None = None  # what m2l is told (None: unlimited)
    tpm: float | None = None
    linger_s: float = LINGER_S  # the journal's flush interval (checkpointed runs)


@dataclass(slots=True)
class ConvResult:
    """What one measured run found out about itself."""

    label: str
    mode: str
    conversations: int = 0  # planned
    finished: int = 0  # done, failed or filtered in this run
    statuses: dict[str, int] = field(default_factory=dict)
    replies: int = 0  # requests that came back with a reply
    steps: int = 0  # steps accepted and recorded
    status: str = ""  # the scheduler's RunStatus
    wall_s: float = 0.0
    cpu_s: float = 0.0  # user + system of the whole process (all threads), run only
    peak_rss_mb: float = 0.0
    client_429: int = 0
    writer: dict[str, Any] = field(default_factory=dict)
    threads: dict[str, float] = field(default_factory=dict)  # CPU seconds by thread, run only
    error: str | None = None

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_s * 1e6 / max(1, self.replies)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["cpu_us_per_request"] = round(self.cpu_us_per_request, 1)
        out["requests_per_s"] = round(self.replies / self.wall_s, 1) if self.wall_s else 0.0
        return out


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _thread_cpu_s() -> dict[int, tuple[str, float]]:
    """CPU seconds of each thread of this process, by native id (Linux; empty elsewhere)."""
    names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[str, float]] = {}
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return out
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/stat", "rb") as f:
                # Fields after the parenthesised name: utime and stime are the 12th and 13th.
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue  # the thread ended
        tid = int(task)
        out[tid] = (names.get(tid, "native"), (int(fields[11]) + int(fields[12])) / tick)
    return out


def _thread_split(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds spent between two readings: event loop, state writer, and other threads
    (DuckDB's workers, aiohttp's resolver, ...)."""
    main = threading.main_thread().native_id
    split = {"loop": 0.0, "writer": 0.0, "other": 0.0}
    for tid, (name, seconds) in after.items():
        spent = seconds - before.get(tid, (name, 0.0))[1]
        key = (
            "loop" if tid == main else "writer" if name.startswith("m2l-state-writer") else "other"
        )
        split[key] += spent
    return {k: round(v, 3) for k, v in split.items()}


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


async def _measured(spec: ConvSpec, config: Config, result: ConvResult) -> None:
    """Run the set-up run once with the engine's parts (as ``engine.app.run`` assembles them),
    checkpointing into DuckDB or into nothing, and measure CPU and wall time around it."""
    from engine.app.run import assemble
    from engine.client import ChatClient
    from engine.dispatcher import NullAccounting
    from state.batcher import JournalBatcher
    from state.requestlog import RequestLog
    from state.store import RunStore
    from state.writer import GroupCommitWriter

    state = config.run_dir / "state.duckdb"
    writer = GroupCommitWriter(state, create=False)
    await writer.open()
    store: ConversationStore
    accounting: Accounting[Any]
    if spec.mode == "noop":
        # The same conversations the checkpointed run gets, read before the clock starts.
        convs = await RunStore(writer, JournalBatcher(writer)).load(("pending",), 0, 1 << 30)
        await writer.aclose()
        store, accounting = MemoryStore(convs), NullAccounting()
    else:
        first_id = await writer.run(RequestLog.next_id)
        batcher = JournalBatcher(writer, linger_s=spec.linger_s)
        store = RunStore(writer, batcher)
        accounting = RequestLog(batcher, model=config.provider.model, next_request_id=first_id)
    stop = StopControl()
    tally = Tally(stop)
    async with ChatClient(
        config.provider, base_url=config.provider.base_url, api_key=Secret(API_KEY)
    ) as client:
        scheduler = assemble(
            config,
            client,
            store=store,
            accounting=accounting,
            hooks=tally,
            stop=stop,
            taxonomy=load_taxonomy(config.taxonomy),
            languages=load_languages(),
        )
        limiter = scheduler.limiter
        loop = asyncio.get_running_loop()
        deadline = loop.call_later(spec.deadline_s, stop.request, "bench: deadline")
        threads, cpu, wall = _thread_cpu_s(), _cpu_s(), time.perf_counter()
        run = await scheduler.run(grace_s=config.run.grace_s)
        result.threads = _thread_split(threads, _thread_cpu_s())
        if spec.mode == "checkpointed":
            stats = writer.statistics()
            before_close = _cpu_s()
            # Closing commits what is still queued and checkpoints the WAL: part of the cost.
            await writer.aclose()
            result.writer = {
                "batches": stats.batches,
                "ops": stats.ops_committed,
                "mean_commit_ms": round(stats.mean_commit_ms, 2),
                "close_cpu_s": round(_cpu_s() - before_close, 3),
            }
        result.cpu_s, result.wall_s = _cpu_s() - cpu, time.perf_counter() - wall
        deadline.cancel()
    result.status = run.status.value
    result.replies, result.steps, result.finished = tally.replies, tally.steps, tally.finished
    result.statuses = dict(tally.statuses)
    result.client_429 = limiter.statistics().rate_limited
    if run.status.value == "failed":
        result.error = run.message


def cpu_main(spec: ConvSpec, base_url: str, conn: Connection) -> None:
    """Child process entry: set up a run, run it measured, send back a ConvResult."""
    result = ConvResult(spec.label, spec.mode)
    try:
        spec.folder.mkdir(parents=True, exist_ok=True)
        seeds = write_seed_file(spec.folder / "seeds.jsonl", spec.seed_rows)
        config = bench_config(
            spec.folder,
            seeds=seeds,
            base_url=base_url,
            evols_per_seed=spec.evols_per_seed,
            rpm=spec.rpm,
            tpm=spec.tpm,
        )
        result.conversations = asyncio.run(set_up(config))
        asyncio.run(_measured(spec, config, result))
    except Exception as exc:  # reported in the table, not a crash of the whole bench
        result.error = _describe(exc)
    result.peak_rss_mb = _peak_mb()
    conn.send(result)
    conn.close()


def _describe(exc: BaseException) -> str:
    """An error and, for a task group's, the errors inside it (what actually went wrong)."""
    if isinstance(exc, BaseExceptionGroup):
        inner = "; ".join(_describe(e) for e in exc.exceptions)
        return f"{type(exc).__name__}: {inner}"
    return f"{type(exc).__name__}: {exc}"


# --- memory runs ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemSpec:
    """A run of many pending conversations, stopped after a while, for its peak RSS."""

    label: str
    folder: Path
    conversations: int
    stop_after: int  # finished conversations
    deadline_s: float

    @property
    def evols_per_seed(self) -> int:
        return 5

    @property
    def seed_rows(self) -> int:
        return self.conversations // self.evols_per_seed


@dataclass(slots=True)
class MemResult:
    label: str
    pending: int = 0
    finished: int = 0
    replies: int = 0
    status: str = ""
    wall_s: float = 0.0
    rss_before_mb: float = 0.0  # after imports and set-up, before the run
    peak_rss_mb: float = 0.0
    error: str | None = None


def mem_config(spec: MemSpec, base_url: str) -> Config:
    return bench_config(
        spec.folder,
        seeds=spec.folder / "seeds.jsonl",
        base_url=base_url,
        evols_per_seed=spec.evols_per_seed,
    )


async def _mem_run(spec: MemSpec, config: Config, result: MemResult) -> None:
    """``m2l run`` on a set-up run (a resume), stopped after ``stop_after`` conversations."""
    from engine.app.run import execute_run

    stop = StopControl()
    tally = Tally(stop, stop_after=spec.stop_after)
    loop = asyncio.get_running_loop()
    deadline = loop.call_later(spec.deadline_s, stop.request, "bench: deadline")
    wall = time.perf_counter()
    report = await execute_run(config, env=ENV, hooks=tally, stop=stop)
    result.wall_s = time.perf_counter() - wall
    deadline.cancel()
    result.status = report.result.status.value
    result.finished, result.replies = tally.finished, tally.replies
    result.pending = tally.pending_at_start
    if report.result.status.value == "failed":
        result.error = report.result.message


def mem_run_main(spec: MemSpec, base_url: str, conn: Connection) -> None:
    """Child process entry: run a set-up run until stopped, send back its peak RSS."""
    result = MemResult(spec.label)
    try:
        config = mem_config(spec, base_url)
        result.rss_before_mb = _peak_mb()
        asyncio.run(_mem_run(spec, config, result))
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    result.peak_rss_mb = _peak_mb()
    conn.send(result)
    conn.close()


def mem_setup_main(spec: MemSpec, base_url: str, conn: Connection) -> None:
    """Child process entry: write the seed file and set up the run of a MemSpec."""
    spec.folder.mkdir(parents=True, exist_ok=True)
    write_seed_file(spec.folder / "seeds.jsonl", spec.seed_rows)
    conn.send(asyncio.run(set_up(mem_config(spec, base_url))))
    conn.close()
