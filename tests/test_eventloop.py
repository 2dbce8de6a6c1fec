"""The event loop a command runs on: uvloop when installed, asyncio's when asked (or when uvloop
is missing), and a clear error for a uvloop that is asked for but not installed."""

from __future__ import annotations

import asyncio
import sys

import pytest

from engine.app import eventloop
from engine.errors import ConfigError


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_auto_runs_on_uvloop_when_it_is_installed() -> None:
    """The default picks uvloop (installed with the fast extra, as `make` does)."""
    pytest.importorskip("uvloop")
    assert eventloop.run(_loop_module(), "auto").startswith("uvloop")
    assert eventloop.run(_loop_module(), "uvloop").startswith("uvloop")


def test_asyncio_runs_on_asyncios_own_loop() -> None:
    """--loop asyncio keeps asyncio's loop whatever is installed."""
    assert eventloop.run(_loop_module(), "asyncio").startswith("asyncio")


def test_without_uvloop_auto_falls_back_and_asking_for_it_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Missing uvloop: auto uses asyncio's loop; --loop uvloop names the extra to install."""
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    assert eventloop.run(_loop_module(), "auto").startswith("asyncio")
    with pytest.raises(ConfigError, match=r"m2l\[fast\]"):
        eventloop.run(_loop_module(), "uvloop")
