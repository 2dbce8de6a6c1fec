"""The command line imports only the command it runs: `m2l status` must not load the run's engine.

Each case runs in a fresh interpreter (a subprocess), since modules imported by other tests in
this process would hide what the command itself imports.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.app.cli import COMMANDS, build_parser

# Modules only generating needs: the HTTP client and server, the simulator, the scheduler.
RUN_ONLY = ("aiohttp", "engine.app.run", "engine.simulator", "engine.scheduler", "openai")


def imported_after(argv: list[str]) -> set[str]:
    """The modules loaded once `m2l ARGV` has run (its exit code is ignored)."""
    code = (
        "import contextlib, io, json, sys\n"
        "from engine.app.cli import main\n"
        "quiet = io.StringIO()\n"
        "with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):\n"
        "    try:\n"
        f"        main({argv!r})\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return set(json.loads(out.stdout.splitlines()[-1]))


def loaded(modules: set[str], prefix: str) -> bool:
    return any(m == prefix or m.startswith(prefix + ".") for m in modules)


@pytest.mark.parametrize("argv", [["status", "{dir}"], ["-v", "stats", "{dir}"]])
def test_a_reading_command_does_not_import_the_run_engine(tmp_path: Path, argv: list[str]) -> None:
    modules = imported_after([a.format(dir=tmp_path) for a in argv])
    assert "engine.app.status" in modules or "engine.app.outputs" in modules
    assert [m for m in RUN_ONLY if loaded(modules, m)] == []


def test_status_does_not_import_the_other_commands(tmp_path: Path) -> None:
    modules = imported_after(["status", str(tmp_path)])
    others = {module for module, _ in COMMANDS.values()} - {"engine.app.status"}
    assert sorted(others & modules) == []


def test_help_still_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    shown = capsys.readouterr().out
    for command in ["run", *COMMANDS]:
        assert f"    {command}" in shown, command


def test_an_unknown_command_is_refused_naming_the_known_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from engine.app.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["statsu", "runs/x"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'statsu'" in err
    assert "status" in err and "export" in err and "run" in err


def test_a_command_parses_its_own_options_with_only_its_parser() -> None:
    args = build_parser(["stats", "runs/x", "--html", "r.html"]).parse_args(
        ["stats", "runs/x", "--html", "r.html"]
    )
    assert args.command == "stats"
    assert str(args.html) == "r.html"
