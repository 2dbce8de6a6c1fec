"""Shared fixtures: async tests run on asyncio through anyio's pytest plugin; a test never leaves
an ``m2l`` process of its own running."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

# The command lines of the processes tests start that run m2l (`python -m engine.app.cli ...`,
# the `m2l` console script). Other children (a module's simulator, Ray's processes) are left
# alone: a fixture outside this test may own them.
_M2L_MARKS = (b"engine.app.cli", b"/m2l\0")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _reap_m2l_children() -> Iterator[None]:
    """Kill and reap the ``m2l`` processes a test left running.

    A test that fails or times out while its ``m2l run`` is alive leaves the process loading the
    machine, and when the test's ``Popen`` is collected later (its traceback keeps it alive),
    Python warns that the process is still running: with warnings as errors, that fails whichever
    test runs then, on the same worker. Reaping here ends both.
    """
    yield
    for pid in _m2l_children():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _m2l_children() -> list[int]:
    """This process's children running m2l, from /proc (Linux); none elsewhere."""
    found: list[int] = []
    for listing in Path(f"/proc/{os.getpid()}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            for word in listing.read_text().split():
                with contextlib.suppress(OSError):
                    cmdline = Path(f"/proc/{word}/cmdline").read_bytes()
                    if any(mark in cmdline + b"\0" for mark in _M2L_MARKS):
                        found.append(int(word))
    return found
