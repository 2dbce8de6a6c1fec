"""Every command on a damaged run: a truncated or corrupt state file, a missing or read-only run
directory. Each exits 2 with one line naming the file and what to do, never a traceback."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.app.cli import main
from engine.app.run import execute_run
from engine.config import load_config
from tests.runfixtures import write_config

COMMANDS = {
    "run": ["run", "{config}", "--quiet"],
    "status": ["status", "{run_dir}"],
    "status-json": ["status", "{run_dir}", "--json"],
    "export": ["export", "{run_dir}", "--format", "release-jsonl"],
    "stats": ["stats", "{run_dir}"],
    "filter": ["filter", "{run_dir}"],
}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A folder with a config and a finished run of it, and a pristine copy of it."""
    base = tmp_path_factory.mktemp("damaged")
    folder = base / "w"
    folder.mkdir()
    config = load_config(write_config(folder))
    asyncio.run(execute_run(config, env={}))
    (config.run_dir / "status.json").unlink(missing_ok=True)  # the store must be read
    shutil.copytree(folder, base / "pristine")
    return folder, base / "pristine"


@pytest.fixture
def finished(template: tuple[Path, Path]) -> Path:
    """The finished run, restored at the same path (the run stores absolute paths)."""
    folder, pristine = template
    for path in folder.rglob("*"):
        if path.is_dir():
            path.chmod(0o755)
    shutil.rmtree(folder)
    shutil.copytree(pristine, folder)
    return folder


def damage(folder: Path, how: str) -> None:
    state = folder / "runs" / "t" / "state.duckdb"
    size = state.stat().st_size
    if how == "truncated":
        with state.open("r+b") as f:
            f.truncate(size // 3)
    elif how == "corrupt":
        # Garbage over every block after the header: DuckDB's checksums must catch it.
        with state.open("r+b") as f:
            f.seek(12288)
            f.write(os.urandom(size - 12288))
    elif how == "garbage":
        state.write_bytes(b"this is not a database\n" * 100)
    elif how == "missing":
        shutil.rmtree(folder / "runs")


def one_line_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (argv, out, err)
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("how", ["truncated", "corrupt", "garbage"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_damaged_state_file_is_one_line_and_exit_2(
    finished: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    how: str,
) -> None:
    """Truncated, corrupt or foreign: the line says damaged, names the file and the way out."""
    folder = finished
    damage(folder, how)
    monkeypatch.chdir(folder)
    argv = [a.format(config="m2l.toml", run_dir="runs/t") for a in COMMANDS[command]]
    line = one_line_exit_2(capsys, argv)
    assert "state.duckdb" in line
    assert "damaged" in line, line
    assert "permission" not in line.lower(), line


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "run"])
def test_a_missing_run_directory_is_one_line_and_exit_2(
    finished: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: str,
) -> None:
    """A run directory that is not there: one line naming it (a new `run` simply starts)."""
    folder = finished
    damage(folder, "missing")
    monkeypatch.chdir(folder)
    argv = [a.format(config="m2l.toml", run_dir="runs/t") for a in COMMANDS[command]]
    line = one_line_exit_2(capsys, argv)
    assert "runs/t" in line


def unprivileged() -> list[str]:
    """A prefix that makes a command obey file permissions even when the tests run as root."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: a read-only folder cannot be made")
    # Without these capabilities root is bound by a folder's mode like anyone else.
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search"]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_read_only_run_directory_is_one_line_and_exit_2(
    finished: Path, tmp_path: Path, command: str
) -> None:
    """A run directory the user may not write: commands that write say so in one line; those
    that only read still work."""
    folder = finished
    run_dir = folder / "runs" / "t"
    (run_dir / "export").chmod(0o555)
    run_dir.chmod(0o555)
    argv = [a.format(config="m2l.toml", run_dir="runs/t") for a in COMMANDS[command]]
    try:
        proc = subprocess.run(
            [*unprivileged(), sys.executable, "-m", "engine.app.cli", *argv],
            cwd=folder,
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        run_dir.chmod(0o755)
        (run_dir / "export").chmod(0o755)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    if command in ("status", "status-json", "stats", "filter"):
        # Reading needs no write access to the folder; filter writes only inside the state
        # file, which stays writable.
        assert proc.returncode == 0, proc.stderr
        return
    # Warnings (an old price table) may come first; the error itself is one line.
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "WARNING" not in line]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "runs/t" in lines[0] and "permission" in lines[0].lower(), lines[0]
