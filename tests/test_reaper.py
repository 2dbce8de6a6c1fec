"""The suite's reaper finds the m2l processes a test left running, and only those."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import _m2l_children


def test_the_reaper_lists_m2l_children_and_leaves_other_children_alone() -> None:
    # argv[1:] shows in /proc/PID/cmdline: the first child looks like `python -m engine.app.cli`.
    m2l = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "engine.app.cli"])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "simulator"])
    try:
        for child in (m2l, other):  # until each has exec'd: before, its cmdline is pytest's
            while b"time.sleep" not in Path(f"/proc/{child.pid}/cmdline").read_bytes():
                time.sleep(0.01)
        found = _m2l_children()
        assert m2l.pid in found
        assert other.pid not in found
    finally:
        for child in (m2l, other):
            child.kill()
            child.wait()
    assert m2l.pid not in _m2l_children()
