"""Workloads, clients and child processes for ``bench/throughput.py``.

Each simulator and each client runs in its own spawned process, so a client's CPU time
(``getrusage(RUSAGE_SELF)``, taken around its request loop only) and its peak RSS hold none of
the simulator's work and none of the parent's. Three clients send the same requests: m2l (the
Dispatcher with its limiter), a naive baseline written the way users usually write it
(``openai.AsyncOpenAI`` + ``asyncio.Semaphore`` + ``gather``, sleeping on 429), and a bare
aiohttp loop (the floor). Nothing here raises on a failed request: failures are counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import resource
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal

from engine.chat import REPLY_PRIMING_TOKENS, ChatRequest, Message

__all__ = [
    "MAX_TOKENS",
    "MODEL",
    "ClientResult",
    "ClientSpec",
    "SimHandle",
    "build_requests",
    "client_main",
    "fetch_stats",
    "prompt_pool",
    "sim_main",
]

MODEL = "gpt-4o-sim"  # the simulator's model: o200k_base, like gpt-4o
MAX_TOKENS = 300
PROMPT_TOKENS = 200  # the target prompt size; each prompt's exact count is kept with it
POOL_SIZE = 1000  # distinct prompts, cycled: a request's body is unique by its seed field
SEEDS_FILE = Path(__file__).resolve().parent.parent / "examples" / "seeds.jsonl"
ClientKind = Literal["m2l", "baseline", "floor"]


# --- the requests ---------------------------------------------------------------------------


def prompt_pool(size: int = POOL_SIZE, *, seed: int = 0) -> list[tuple[Message, Message]]:
    """``size`` (system, user) pairs of about PROMPT_TOKENS prompt tokens in the seed languages.

    Each message is counted once, here, and its count travels with it (``Message.tokens``).
    """
    # Imported here: only the parent builds prompts, so clients never load these modules.
    from engine.simulator.languages import ENGLISH, find_language
    from engine.simulator.text import composer_for
    from engine.tokens import TokenCounter

    counter = TokenCounter(MODEL)
    encoding = counter._encoding  # the same encoding the counter uses, to cut the filler
    seeds = [json.loads(line) for line in SEEDS_FILE.read_text("utf-8").splitlines() if line]
    rng = random.Random(seed)
    pool: list[tuple[Message, Message]] = []
    for i in range(size):
        row = seeds[i % len(seeds)]
        lang = find_language(str(row.get("language", ""))) or ENGLISH
        system = counter.message(
            "system",
            f"You are a helpful assistant.\nTarget language: {lang.name}\n"
            f"Answer in {lang.name}, in its usual script.",
        )
        head = f"{row['inputs']}\n\nBackground (note {i}):\n"
        # Framing of the user message (3 + role) and reply priming are part of the prompt too.
        room = PROMPT_TOKENS - REPLY_PRIMING_TOKENS - system.tokens - 4 - counter.count(head)
        filler = composer_for(lang, counter.encoding_name).answer(rng, max(room, 8) + 8)
        ids = encoding.encode_ordinary(filler)[: max(room, 1)]
        text = encoding.decode_bytes(ids).decode("utf-8", errors="ignore")
        pool.append((system, counter.message("user", head + text)))
    return pool


def build_requests(pool: list[tuple[Message, Message]], count: int) -> list[ChatRequest]:
    """``count`` requests cycling through ``pool``; ``seed`` makes every body distinct."""
    return [
        ChatRequest(pool[i % len(pool)], MAX_TOKENS, key=f"bench:{i}", seed=i) for i in range(count)
    ]


# --- specs and results ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientSpec:
    """One client run: which client, how many requests, and what it is told about limits."""

    label: str
    kind: ClientKind
    requests: int
    concurrency: int
    rpm: float | None = None  # the limits m2l is configured with (None: unlimited)
    tpm: float | None = None
    attempts: int = 6  # the baseline's patience: tries per request before it gives up
    seed: int = 0


@dataclass(slots=True)
class ClientResult:
    """What one client process measured about itself."""

    label: str
    kind: str
    requests: int
    ok: int = 0
    failed: int = 0  # gave up (errors by class in ``errors``)
    unfinished: int = 0  # still pending when the deadline cut the run
    wall_s: float = 0.0
    cpu_s: float = 0.0  # user + system, around the request loop only
    sys_s: float = 0.0  # the system part of cpu_s (loopback TCP is charged to the sender)
    peak_rss_mb: float = 0.0
    client_429: int = 0  # 429s this client saw
    errors: dict[str, int] = field(default_factory=dict)
    learned: dict[str, float | None] = field(default_factory=dict)

    def add(self, part: ClientResult) -> None:
        """Fold in the result of one more slice of this client's requests."""
        for name in ("ok", "failed", "unfinished", "client_429"):
            setattr(self, name, getattr(self, name) + getattr(part, name))
        for name in ("wall_s", "cpu_s", "sys_s"):
            setattr(self, name, getattr(self, name) + getattr(part, name))
        for error, count in part.errors.items():
            self.errors[error] = self.errors.get(error, 0) + count
        self.learned.update(part.learned)

    @property
    def lost(self) -> int:
        return self.failed + self.unfinished

    @property
    def cpu_us_per_request(self) -> float:
        """CPU per delivered reply: the cost of a row, failed attempts included."""
        return self.cpu_s * 1e6 / max(1, self.ok)

    @property
    def requests_per_s(self) -> float:
        return self.ok / self.wall_s if self.wall_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(
            lost=self.lost,
            cpu_us_per_request=round(self.cpu_us_per_request, 1),
            requests_per_s=round(self.requests_per_s, 1),
        )
        return out


class _Meter:
    """Wall clock and process CPU between ``start`` and ``stop``, written into a result."""

    __slots__ = ("_result", "_start")

    def __init__(self, result: ClientResult) -> None:
        self._result = result
        self._start = (0.0, 0.0, 0.0)

    def start(self) -> None:
        self._start = (*_cpu_s(), time.perf_counter())

    def stop(self) -> None:
        user, system = _cpu_s()
        user0, system0, wall0 = self._start
        self._result.cpu_s = user - user0 + system - system0
        self._result.sys_s = system - system0
        self._result.wall_s = time.perf_counter() - wall0


def peak_rss_mb() -> float:
    """This process's peak resident set since it started, imports included."""
    # Linux carries ru_maxrss over fork and exec, so a spawned child would report at least its
    # parent's size; VmHWM is the high-water mark of this process's own address space.
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _cpu_s() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


# --- the three clients ----------------------------------------------------------------------


async def _drive(
    requests: list[ChatRequest],
    concurrency: int,
    deadline_s: float,
    send: Callable[[ChatRequest], Awaitable[None]],
    result: ClientResult,
) -> None:
    """Send every request from ``concurrency`` workers, counting outcomes, until the deadline."""
    pending: Iterator[ChatRequest] = iter(requests)
    errors: Counter[str] = Counter()

    async def worker() -> None:
        for request in pending:  # shared: each request is taken by exactly one worker
            try:
                await send(request)
            except Exception as exc:  # every failure is a lost row to count, not a crash
                errors[type(exc).__name__] += 1
                result.failed += 1
            else:
                result.ok += 1

    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(deadline_s), asyncio.TaskGroup() as group:
            for _ in range(min(concurrency, len(requests))):
                group.create_task(worker())
    result.unfinished = len(requests) - result.ok - result.failed
    result.errors = dict(errors)


async def _run_m2l(
    spec: ClientSpec, url: str, requests: list[ChatRequest], deadline_s: float
) -> ClientResult:
    """m2l as a run uses it: the Dispatcher, its RateLimiter and ChatClient, no accounting."""
    from engine.client import ChatClient
    from engine.config import LimitsConfig, ProviderConfig
    from engine.dispatcher import Dispatcher
    from engine.limiter import RateLimiter

    result = ClientResult(spec.label, spec.kind, len(requests))
    provider = ProviderConfig(kind="openai", base_url=url, model=MODEL)
    limiter = RateLimiter(LimitsConfig(rpm=spec.rpm, tpm=spec.tpm, max_inflight=spec.concurrency))
    meter = _Meter(result)
    async with ChatClient(provider, base_url=url, api_key=None) as client:
        dispatcher = Dispatcher(client, limiter)

        async def send(request: ChatRequest) -> None:
            await dispatcher.complete(request, kind="answer")

        meter.start()
        await _drive(requests, spec.concurrency, deadline_s, send, result)
        meter.stop()
    stats = limiter.statistics()
    result.client_429 = stats.rate_limited
    for name, bucket in (("rpm", stats.requests), ("tpm", stats.tokens)):
        if bucket is not None:
            result.learned[name] = bucket.limit_per_min
            result.learned[f"{name}_server"] = bucket.server_per_min
            result.learned[f"{name}_capacity"] = round(bucket.capacity, 1)
    return result


async def _run_baseline(
    spec: ClientSpec, url: str, requests: list[ChatRequest], deadline_s: float
) -> ClientResult:
    """The usual script: one AsyncOpenAI, a Semaphore, gather over every request, and
    ``sleep(2 ** attempt)`` on a 429 for up to ``spec.attempts`` tries."""
    import openai

    result = ClientResult(spec.label, spec.kind, len(requests))
    errors: Counter[str] = Counter()
    # max_retries=0: the retry loop below is the one users write; the SDK's own would hide it.
    client = openai.AsyncOpenAI(base_url=url, api_key="sk-bench-not-a-key", max_retries=0)
    semaphore = asyncio.Semaphore(spec.concurrency)
    jitter = random.Random(spec.seed)

    async def one(request: ChatRequest) -> None:
        messages: Any = [m.as_openai() for m in request.messages]
        async with semaphore:
            for attempt in range(spec.attempts):
                try:
                    await client.chat.completions.create(
                        model=MODEL,
                        messages=messages,
                        max_tokens=request.max_tokens,
                        temperature=request.temperature,
                        seed=request.seed,
                    )
                except openai.RateLimitError:
                    result.client_429 += 1
                    if attempt + 1 < spec.attempts:
                        await asyncio.sleep(2**attempt + jitter.random())
                except openai.OpenAIError as exc:
                    errors[type(exc).__name__] += 1
                    result.failed += 1
                    return
                else:
                    result.ok += 1
                    return
            errors["RateLimitError"] += 1
            result.failed += 1

    meter = _Meter(result)
    meter.start()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(one(r) for r in requests)), timeout=deadline_s)
    meter.stop()
    await client.close()
    result.unfinished = len(requests) - result.ok - result.failed
    result.errors = dict(errors)
    return result


async def _run_floor(
    spec: ClientSpec, url: str, requests: list[ChatRequest], deadline_s: float
) -> ClientResult:
    """The least any client does: post pre-encoded bodies with aiohttp, read and parse replies."""
    import aiohttp
    import orjson

    result = ClientResult(spec.label, spec.kind, len(requests))
    endpoint = url.rstrip("/") + "/chat/completions"
    bodies = {id(r): orjson.dumps(r.body(MODEL)) for r in requests}
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=spec.concurrency)
    meter = _Meter(result)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def send(request: ChatRequest) -> None:
            async with session.post(endpoint, data=bodies[id(request)], headers=headers) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}")
            orjson.loads(raw)["choices"][0]["message"]["content"]

        meter.start()
        await _drive(requests, spec.concurrency, deadline_s, send, result)
        meter.stop()
    return result


Runner = Callable[[ClientSpec, str, list[ChatRequest], float], Coroutine[Any, Any, ClientResult]]
_RUNNERS: dict[str, Runner] = {"m2l": _run_m2l, "baseline": _run_baseline, "floor": _run_floor}


def client_main(
    spec: ClientSpec, url: str, pool: list[tuple[Message, Message]], conn: Connection
) -> None:
    """Child process entry: build the requests, then run slices of them as the parent says.

    The parent sends ``(start, stop, deadline_s)`` for each slice (and gets that slice's
    ClientResult back), then None, and receives the sum of all slices with the peak RSS.
    """
    requests = build_requests(pool, spec.requests)
    total = ClientResult(spec.label, spec.kind, spec.requests)
    conn.send("ready")  # imports done: the parent may start what should not overlap them
    while (order := conn.recv()) is not None:
        start, stop, deadline_s = order
        part = asyncio.run(_RUNNERS[spec.kind](spec, url, requests[start:stop], deadline_s))
        total.add(part)
        conn.send(part)
    total.peak_rss_mb = peak_rss_mb()
    conn.send(total)
    conn.close()


# --- simulators -----------------------------------------------------------------------------


def sim_main(settings: Any, conn: Connection) -> None:
    """Child process entry: serve one simulator, send its base URL, stop when told to."""
    from engine.simulator import run_simulator

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_reader(conn.fileno(), stop.set)  # any message (or EOF) from the parent
        async with run_simulator(settings) as sim:
            conn.send(sim.base_url)
            await stop.wait()
        loop.remove_reader(conn.fileno())

    asyncio.run(serve())


@dataclass(slots=True)
class SimHandle:
    """A running simulator process: its URL, and how to read its stats and stop it."""

    label: str
    settings: Any
    process: Any
    conn: Connection
    base_url: str = ""

    def stats(self) -> dict[str, Any]:
        return fetch_stats(self.base_url)

    def stop(self) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            self.conn.send("stop")
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=5)


def start_sims(ctx: Any, wanted: dict[str, Any]) -> dict[str, SimHandle]:
    """Start one simulator process per label (all at once) and wait for their URLs."""
    handles: dict[str, SimHandle] = {}
    for label, settings in wanted.items():
        parent, child = ctx.Pipe()
        process = ctx.Process(target=sim_main, args=(settings, child), name=f"sim-{label}")
        process.daemon = True
        process.start()
        child.close()
        handles[label] = SimHandle(label, settings, process, parent)
    for handle in handles.values():
        if not handle.conn.poll(60):
            raise RuntimeError(f"the simulator for {handle.label} did not start in 60 s")
        handle.base_url = handle.conn.recv()
    return handles


def utilisation(stats: dict[str, Any], settings: Any) -> dict[str, Any]:
    """Burst-aware use of each limit over the admission span; the larger one binds.

    In a span of T seconds a server bucket admits at most one full bucket plus T x rate, so
    (admitted - bucket) / (rate x T) is 1.0 at best, for any client.
    """
    first, last = stats.get("first_admission_s"), stats.get("last_admission_s")
    out: dict[str, Any] = {"span_s": None, "binding": None, "value": None}
    if first is None or last is None or last <= first:
        return out
    span = float(last) - float(first)
    out["span_s"] = round(span, 2)
    for kind, limit, used in (
        ("rpm", settings.rpm, stats["admitted"]),
        ("tpm", settings.tpm, stats["tokens_charged"]),
    ):
        if limit is None:
            continue
        bucket = limit * settings.bucket_seconds / 60.0
        value = (used - bucket) / (limit / 60.0 * span)
        out[kind] = round(value, 4)
        if out["value"] is None or value > out["value"]:
            out["binding"], out["value"] = kind, round(value, 4)
    return out


def fetch_stats(base_url: str) -> dict[str, Any]:
    """GET the simulator's /stats (the URL without its /v1)."""
    root = base_url.rsplit("/v1", 1)[0]
    with urllib.request.urlopen(root + "/stats", timeout=10) as response:
        data: dict[str, Any] = json.loads(response.read())
    return data
