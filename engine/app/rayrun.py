"""``m2l run CONFIG --ray [ADDRESS]``: one run split into shards on a Ray cluster.

The driver (this process) plans the run in its store as a single-process run would, splits the
plan into one store per shard (``state.shards``), and starts a coordinator actor, which owns the
run's rate limits and budget (``engine.lease``), and one actor per shard, each running the
ordinary engine on its own store under a lease from the coordinator. A shard whose process dies
is restarted by Ray and resumes from its store. At the end the driver merges the shards' stores
into the run's store, so ``m2l status``, ``export``, ``stats`` and ``filter`` read one run. The
driver's progress display shows the whole run, fed with the shards' events.

Raises ConfigError when Ray is not installed, for batch mode, or for a bad shard count;
StateError as a single-process run does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from budgets.ledger import Spend
from engine.app.providers import check_endpoints
from engine.app.run import (
    RunOptions,
    RunReport,
    ShardRole,
    execute_run,
    prepare_store,
)
from engine.clock import MonotonicClock
from engine.config import BudgetConfig, Config, load_config
from engine.errors import ConfigError, M2LError
from engine.events import (
    BudgetUpdate,
    ConversationFinished,
    Event,
    EventHook,
    Hooks,
    RunFinished,
    RunStarted,
    RunStopping,
    ShardsUpdate,
)
from engine.lease import Lease, LeaseBook, LeaseStats
from engine.leaseholder import LeaseHolder
from engine.progress.snapshot import ProgressSnapshot
from engine.progress.store import store_snapshot
from engine.reasons import by_family
from engine.scheduler import RunResult, RunStatus, StopControl, judge_finished
from engine.simulator import run_simulator
from state import journal
from state.export import default_output, export_with
from state.schema import STATE_FILE, open_store
from state.setup import SetupReport
from state.shards import REQUEST_ID_SPAN, merge_shards, shard_progress, split_run

__all__ = ["INSTALL_HINT", "execute_sharded", "require_ray"]

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'm2l[ray]'"
# A shard's process may die this many times (node lost, OOM, SIGKILL) before the run fails.
MAX_RESTARTS = 3
# How long a dead shard's process may take to come back (a new worker imports m2l).
RESTART_WAIT_S = 120.0
# How often the driver collects the shards' events for its display.
POLL_S = 0.25
Outcome = tuple[str, str, dict[str, int]]  # a shard's end: status, message, conversations


def require_ray() -> ModuleType:
    """The ``ray`` module; raises ConfigError naming the extra to install when it is missing."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            f"--ray runs the run on a Ray cluster, but Ray is not installed: {INSTALL_HINT}"
        ) from exc
    return ray


# --- the actors (decorated when the run starts, so importing this module needs no Ray) -------


class Coordinator:
    """The run's leases (a LeaseBook on the real clock), served to the shards."""

    def __init__(self, shards: int, usd: float | None, tokens: int | None, requests: int | None):
        caps = BudgetConfig(usd=usd, tokens=tokens, requests=requests)
        self._book = LeaseBook(shards, caps, clock=MonotonicClock())

    def start(self, shard: int, committed: Spend) -> Lease:
        return self._book.start(shard, committed)

    def renew(self, shard: int, committed: Spend, need: Spend) -> Lease:
        return self._book.renew(shard, committed, need)

    def finish(self, shard: int, committed: Spend) -> None:
        self._book.finish(shard, committed)

    def stats(self) -> LeaseStats:
        return self._book.stats()


class _ActorLessor:
    """The coordinator actor as a shard's Lessor."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    async def start(self, shard: int, committed: Spend) -> Lease:
        lease: Lease = await self._handle.start.remote(shard, committed)
        return lease

    async def renew(self, shard: int, committed: Spend, need: Spend) -> Lease:
        lease: Lease = await self._handle.renew.remote(shard, committed, need)
        return lease

    async def finish(self, shard: int, committed: Spend) -> None:
        await self._handle.finish.remote(shard, committed)


class _Collect:
    """Keeps a shard's events until the driver collects them."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def on_event(self, event: Event) -> None:
        self.events.append(event)


@dataclasses.dataclass(frozen=True, slots=True)
class ShardSpec:
    """What a shard actor needs; plain values, since a Config does not pickle (it is loaded
    again from its file, which every node must see at the same path)."""

    config_path: str
    coordinator: str  # the coordinator actor's name
    index: int
    store_dir: str
    base_urls: tuple[str | None, ...]
    keys: dict[str, str]  # the endpoints' API keys by variable: passed, never stored or logged
    force: bool
    retry_failed: bool
    forward_events: bool

    def __repr__(self) -> str:
        return f"ShardSpec(index={self.index}, store_dir={self.store_dir!r})"


class Shard:
    """One shard: the ordinary engine on its own store, under its lease."""

    def __init__(self, spec: ShardSpec) -> None:
        import ray

        self._spec = spec
        # Found by name rather than passed: an actor restarted after a crash is made again from
        # its constructor's arguments, and a handle among them would pin it to the object store.
        self._coordinator = ray.get_actor(spec.coordinator)
        self._collect = _Collect()
        self._stop = StopControl()

    def pid(self) -> int:
        return os.getpid()

    def collect(self) -> list[Event]:
        events, self._collect.events = self._collect.events, []
        return events

    def stop(self, reason: str) -> None:
        self._stop.request(reason)

    async def run(self) -> Outcome:
        """Run (or resume) the shard to its end: (status, message, conversations by status)."""
        spec = self._spec
        config = load_config(Path(spec.config_path))
        env = dict(spec.keys)
        role = ShardRole(
            store_dir=Path(spec.store_dir),
            first_request_id=spec.index * REQUEST_ID_SPAN + 1,
            holder=LeaseHolder(_ActorLessor(self._coordinator), spec.index),
            base_urls=spec.base_urls,
        )
        report = await execute_run(
            config,
            env=env,
            hooks=self._collect if spec.forward_events else None,
            options=RunOptions(force=spec.force, retry_failed=spec.retry_failed),
            stop=self._stop,
            shard=role,
        )
        return report.result.status.value, report.result.message, dict(report.counts)


# --- the driver -----------------------------------------------------------------------------


@dataclasses.dataclass
class _ShardState:
    actor: Any
    task: asyncio.Future[Outcome] | None = None
    restarts: int = 0
    outcome: Outcome | None = None
    budget: BudgetUpdate | None = None


async def execute_sharded(
    config: Config,
    *,
    env: Mapping[str, str],
    address: str | None,
    shards: int | None,
    hooks: EventHook | None = None,
    options: RunOptions | None = None,
    stop: StopControl | None = None,
    baseline: Callable[[ProgressSnapshot], None] | None = None,
    on_setup: Callable[[SetupReport], None] | None = None,
    final: Callable[[ProgressSnapshot], None] | None = None,
    forward_events: bool = True,
) -> RunReport:
    """Run (or resume) the configured run sharded over a Ray cluster; see the module doc.

    ``address`` is the cluster's (None: the one RAY_ADDRESS names, or a new local one);
    ``shards`` defaults to the cluster's CPUs. Raises ConfigError or StateError early.
    """
    ray = require_ray()
    events: EventHook = hooks or Hooks()
    options = options or RunOptions()
    if config.run.mode == "batch":
        raise ConfigError(
            'run.mode = "batch" cannot be sharded: the Batch API already runs the requests in '
            "parallel on the provider's side; run it without --ray"
        )
    if shards is not None and shards < 1:
        raise ConfigError(f"--shards must be at least 1, got {shards}")
    if config.source is None:
        raise ConfigError("a sharded run needs its config file: every shard loads it again")
    stop = stop or StopControl()
    _connect(ray, address)
    count = shards or max(1, int(ray.cluster_resources().get("CPU", 1)))

    # Every shard's store starts from the run's store as the last session left it.
    main = config.run_dir / STATE_FILE
    if main.exists():
        _merge(main, config)
    setup = await prepare_store(
        config, env=env, hooks=events, options=options, baseline=baseline, on_setup=on_setup
    )
    conn = open_store(main, create=False, store=config.store)
    try:
        dirs = split_run(conn, config.run_dir, count)
        progress = shard_progress(conn, count)
    finally:
        conn.close()

    async with _shared_endpoints(config, env) as base_urls:
        result = await _drive(
            ray, config, env, dirs, progress, base_urls, events, stop, options, forward_events
        )

    # The shards' stores are closed: bring the run's store up to date and end the run there.
    conn = open_store(main, create=False, store=config.store)
    try:
        merge_shards(conn, config.run_dir)
        counts = journal.count_by_status(conn)
        failures = by_family(journal.failed_by_reason(conn))
        result = judge_finished(result, counts, failures, config.run.max_failed_share)
        journal.write_meta({"status": result.status.value})(conn)
        if final is not None:
            final(store_snapshot(conn, run=config.run.name))
        dataset = export_with(
            conn, "messages-jsonl", default_output(config.run_dir, "messages-jsonl")
        )
    finally:
        conn.close()
    events.on_event(RunFinished(result.status.value, result.message, time.monotonic()))
    return RunReport(result, setup, config.run_dir, counts, dataset)


def _connect(ray: ModuleType, address: str | None) -> None:
    if ray.is_initialized():
        return
    # Shards log to their own files: their lines would tear the driver's display.
    kwargs: dict[str, Any] = {"log_to_driver": False, "include_dashboard": False}
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as exc:
        raise ConfigError(
            f"could not connect to the Ray cluster at {address}: {exc}; check the address "
            "(`ray status` on the head node shows it)"
        ) from exc


def _merge(main: Path, config: Config) -> None:
    conn = open_store(main, create=False, store=config.store)
    try:
        merge_shards(conn, config.run_dir)
    finally:
        conn.close()


@contextlib.asynccontextmanager
async def _shared_endpoints(
    config: Config, env: Mapping[str, str]
) -> AsyncIterator[tuple[str | None, ...]]:
    """For each endpoint, the simulator every shard talks to (so its limits are the run's), or
    None: a real endpoint, which each shard reaches itself."""
    urls: list[str | None] = []
    async with contextlib.AsyncExitStack() as stack:
        for i, simulated in enumerate(check_endpoints(config, env)):
            if not simulated:
                urls.append(None)
                continue
            settings = config.sim if i == 0 else dataclasses.replace(config.sim, port=0)
            sim = await stack.enter_async_context(run_simulator(settings))
            urls.append(sim.base_url)
        yield tuple(urls)


async def _drive(
    ray: ModuleType,
    config: Config,
    env: Mapping[str, str],
    dirs: list[Path],
    progress: list[tuple[int, int]],
    base_urls: tuple[str | None, ...],
    events: EventHook,
    stop: StopControl,
    options: RunOptions,
    forward: bool,
) -> RunResult:
    """Start the coordinator and the shards, restart dead ones, relay events, until all end."""
    caps = config.budget
    # Names unique to this session: several runs may share one cluster.
    prefix = f"m2l/{config.run.name}/{uuid.uuid4().hex[:8]}"
    coordinator = (
        ray.remote(Coordinator)
        .options(num_cpus=0, name=f"{prefix}/coordinator")
        .remote(len(dirs), caps.usd, caps.tokens, caps.requests)
    )
    key_envs = {e.api_key_env for e in config.endpoints()}
    assert config.source is not None
    config_path = str(await asyncio.to_thread(Path(config.source).resolve))
    shard_class = ray.remote(Shard)
    states = []
    for k, folder in enumerate(dirs):
        spec = ShardSpec(
            config_path=config_path,
            coordinator=f"{prefix}/coordinator",
            index=k,
            store_dir=str(folder),
            base_urls=base_urls,
            keys={name: env[name] for name in key_envs if env.get(name)},
            force=options.force,
            retry_failed=options.retry_failed,
            forward_events=forward,
        )
        actor = shard_class.options(
            name=f"{prefix}/shard-{k:02d}",
            num_cpus=1,
            max_restarts=MAX_RESTARTS,
            max_task_retries=0,
            max_concurrency=64,
        ).remote(spec)
        states.append(_ShardState(actor=actor))
    for k, state in enumerate(states):
        state.task = asyncio.ensure_future(_run_shard(ray, k, state, stop))
    relay = _Relay(events, config.budget.usd, progress, coordinator)
    loop = asyncio.get_running_loop()
    installed = _install_signals(loop, stop, states, events, config.run.grace_s)
    try:
        while any(s.outcome is None for s in states):
            running = [s.task for s in states if s.outcome is None and s.task is not None]
            await asyncio.wait(running, timeout=POLL_S)
            if forward:
                await relay.collect(states)
            for state in states:
                if state.outcome is None and state.task is not None and state.task.done():
                    state.outcome = state.task.result()  # a shard's error ends the run here
        if forward:
            await relay.collect(states)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        for state in states:
            with contextlib.suppress(Exception):
                ray.kill(state.actor, no_restart=True)
        with contextlib.suppress(Exception):
            ray.kill(coordinator, no_restart=True)
    return _combine([s.outcome for s in states if s.outcome is not None])


async def _run_shard(ray: ModuleType, k: int, state: _ShardState, stop: StopControl) -> Outcome:
    """Run shard ``k`` to its end; after its process dies, wait for Ray to restart it and run it
    again (it resumes from its store), at most MAX_RESTARTS times."""
    while True:
        try:
            outcome: Outcome = await state.actor.run.remote()
            return outcome
        except ray.exceptions.RayActorError as exc:
            if stop.requested:
                return (RunStatus.INTERRUPTED.value, stop.reason or "stopped", {})
            state.restarts += 1
            if state.restarts > MAX_RESTARTS:
                return (
                    RunStatus.FAILED.value,
                    f"its process died {state.restarts} times; see the Ray logs of the node "
                    "that ran it, then resume with the same command",
                    {},
                )
            log.warning(
                "shard %d: its process died (%s); restarting it, it resumes from its store",
                k,
                type(exc).__name__,
            )
            if not await _until_alive(ray, state.actor):
                return (
                    RunStatus.FAILED.value,
                    f"its process died and Ray did not restart it within {RESTART_WAIT_S:.0f} s",
                    {},
                )
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, M2LError):
                raise cause from None
            raise M2LError(f"shard {k} failed: {cause}") from exc


async def _until_alive(ray: ModuleType, actor: Any) -> bool:
    """Whether the restarted actor answers within RESTART_WAIT_S."""
    deadline = time.monotonic() + RESTART_WAIT_S
    while time.monotonic() < deadline:
        try:
            await actor.pid.remote()
            return True
        except ray.exceptions.ActorDiedError:
            return False  # out of restarts
        except ray.exceptions.RayActorError:
            await asyncio.sleep(0.25)  # restarting: not reachable yet
    return False


def _combine(outcomes: list[Outcome]) -> RunResult:
    """The run's result from its shards': a failure first, then a stop, then the budget."""
    for status in (RunStatus.FAILED, RunStatus.INTERRUPTED, RunStatus.BUDGET_EXHAUSTED):
        for k, (value, message, _counts) in enumerate(outcomes):
            if value == status.value:
                prefix = f"shard {k}: " if len(outcomes) > 1 else ""
                return RunResult(status, prefix + message)
    return RunResult(RunStatus.FINISHED, "every conversation is done, failed or filtered")


class _Relay:
    """Feeds the shards' events to the driver's hooks as one run's: their RunStarted and
    RunFinished are the driver's own to send, and their budgets add up into one."""

    def __init__(
        self,
        hooks: EventHook,
        cap_usd: float | None,
        progress: list[tuple[int, int]],
        coordinator: Any,
    ) -> None:
        """``progress``: each shard's conversations (finished, planned) when the session began."""
        self._hooks = hooks
        self._cap = cap_usd
        self._budgets: list[BudgetUpdate | None] = [None] * len(progress)
        self._finished = [finished for finished, _ in progress]
        self._total = tuple(total for _, total in progress)
        self._coordinator = coordinator

    async def collect(self, states: list[_ShardState]) -> None:
        calls = [s.actor.collect.remote() for s in states]
        leases = self._coordinator.stats.remote()
        changed = False
        for k, call in enumerate(calls):
            try:
                batch: list[Event] = await call
            except Exception:  # a dead or restarting shard: its events come next time
                continue
            for event in batch:
                if isinstance(event, RunStarted | RunFinished | RunStopping):
                    continue
                # A node's monotonic clock is its own: events are the driver's from now on.
                event = dataclasses.replace(event, t=time.monotonic())
                if isinstance(event, BudgetUpdate):
                    self._budgets[k] = event
                    changed = True
                    continue
                if isinstance(event, ConversationFinished):
                    self._finished[k] += 1
                self._hooks.on_event(event)
        try:
            stats: LeaseStats = await leases
            shares = tuple(round(100 * s) for s in stats.shares)
        except Exception:  # the coordinator is going away with the run
            shares = (0,) * len(states)
        for k, state in enumerate(states):
            if state.outcome is not None and state.outcome[2]:
                # An ended shard's own count: events a killed process had not handed over
                # yet are missing from the relayed ones.
                counts = state.outcome[2]
                self._finished[k] = sum(counts.get(s, 0) for s in ("done", "failed", "filtered"))
        self._hooks.on_event(
            ShardsUpdate(
                tuple(self._finished),
                self._total,
                tuple(s.restarts for s in states),
                shares,
                time.monotonic(),
            )
        )
        if changed:
            known = [b for b in self._budgets if b is not None]
            projected = [b.projected_usd for b in known]
            self._hooks.on_event(
                BudgetUpdate(
                    sum(b.spent_usd for b in known),
                    sum(b.reserved_usd for b in known),
                    self._cap,
                    None if any(p is None for p in projected) else sum(p or 0.0 for p in projected),
                    time.monotonic(),
                )
            )


def _install_signals(
    loop: asyncio.AbstractEventLoop,
    stop: StopControl,
    states: list[_ShardState],
    events: EventHook,
    grace_s: float,
) -> list[signal.Signals]:
    """Ctrl-C (or SIGTERM) asks every shard to stop as a single run stops."""
    installed = []

    def on_signal(reason: str) -> None:
        if not stop.requested:
            events.on_event(RunStopping(reason, grace_s, time.monotonic()))
        stop.request(reason)
        for state in states:
            with contextlib.suppress(Exception):
                state.actor.stop.remote(reason)

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, f"stopped by {sig.name}")
            installed.append(sig)
    return installed
