"""Worker processes that judge batches in order: the machinery of `m2l filter --workers N`.

A conversation's turn checks and duplicate fingerprint are pure functions of it
(``PosthocFilter.judge_many``), so they can run in processes of their own while the caller
keeps what needs the whole run (the duplicate index, marking, the report) and takes the judged
batches back in the order it sent them. Workers start with "spawn": the caller holds an open
DuckDB connection, which a forked child must not inherit. Each worker builds its judge once
(``make(*args)``: for the filter, the language table, detector and names) and ignores Ctrl-C,
so an interrupt is the caller's to handle; at most ``2 * workers`` batches are out at a time,
so memory stays bounded whatever the run's size. Nothing here knows the filter itself: it gets
the judge's class, which the worker imports when it unpickles it.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections import deque
from collections.abc import Callable, Generator, Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol, TypeVar

from engine.errors import M2LError

__all__ = ["Judge", "WorkerDied", "judged_batches"]

Item = TypeVar("Item")
Result = TypeVar("Result")
_Item_contra = TypeVar("_Item_contra", contravariant=True)

# The judge each worker process builds once, in its initializer.
_JUDGE: Judge[Any, Any] | None = None


class Judge(Protocol[_Item_contra, Result]):
    """What a worker runs: one result per item of a batch, a pure function of the batch."""

    def judge_many(self, items: Sequence[_Item_contra], /) -> list[Result]: ...


class WorkerDied(M2LError):
    """A worker process ended without answering (killed, or out of memory).

    ``index``: the position (from 0) of the first batch whose results were lost.
    """

    def __init__(self, message: str, index: int = 0) -> None:
        super().__init__(message)
        self.index = index


def judged_batches(
    make: Callable[..., Judge[Item, Result]],
    args: tuple[object, ...],
    batches: Iterable[list[Item]],
    workers: int,
) -> Generator[tuple[list[Item], list[Result]], None, None]:
    """Each batch of ``batches`` with ``make(*args).judge_many`` of it, made by ``workers``
    processes, in the order the batches came.

    ``make`` and ``args`` must pickle (a class pickles by name). Raises what ``judge_many``
    raised in a worker (same class and message) and WorkerDied when a worker process died;
    batches already yielded stay yielded.
    """
    context = multiprocessing.get_context("spawn")
    ahead = 2 * workers
    pending: deque[tuple[list[Item], Future[list[Result]]]] = deque()
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_start, initargs=(make, args)
    )
    index = 0  # of the first batch not yet yielded
    try:
        source = iter(batches)
        exhausted = False
        while True:
            while not exhausted and len(pending) < ahead:
                batch = next(source, None)
                if batch is None:
                    exhausted = True
                else:
                    pending.append((batch, pool.submit(_judge, batch)))
            if not pending:
                return
            batch, future = pending.popleft()
            judged = future.result()
            yield batch, judged
            index += 1
    except BrokenProcessPool as exc:
        # From result() or from submit(), whichever meets the dead pool first.
        raise WorkerDied("a worker process died (killed, or out of memory)", index) from exc
    finally:
        # Waits for the batches being judged (each takes well under a second), drops the rest.
        pool.shutdown(wait=True, cancel_futures=True)


def _start(make: Callable[..., Judge[Any, Any]], args: tuple[object, ...]) -> None:
    global _JUDGE
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _JUDGE = make(*args)


def _judge(batch: Sequence[Any]) -> list[Any]:
    assert _JUDGE is not None, "the worker's initializer builds the judge"
    return _JUDGE.judge_many(batch)
