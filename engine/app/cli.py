"""The ``m2l`` command line: parses arguments, loads config at the edge, maps errors to exit codes.

Exit codes: 0 done; 1 the run failed (a fatal provider error, or a bug); 2 bad input (config,
seed file, arguments) or an unusable state store; 3 stopped at a budget cap; 130 interrupted.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeAlias

import duckdb

from engine.errors import ConfigError, M2LError, StateError
from engine.version import __version__
from state.schema import STATE_FILE, damaged, is_damage

__all__ = ["build_parser", "main"]

Handler = Callable[[argparse.Namespace], int]
SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

EPILOG = """\
Start with `make demo`, or:
  m2l run examples/demo.toml          generate a dataset (no API key: the embedded simulator)
  m2l status runs/demo                how a run is doing, from any terminal
  m2l export runs/demo --format release-parquet
  m2l requests in.jsonl out.jsonl     send a file of chat-completions requests, results in order
Docs: README.md."""


def _add_run_parser(sub: SubParsers) -> None:
    from engine.app.eventloop import add_loop_option
    from engine.app.status import add_progress_options

    p = sub.add_parser(
        "run",
        help="generate (or resume) the run a config describes",
        description=(
            "Generate the run described by CONFIG. Running the same command again resumes "
            "where it stopped: finished steps are never redone or stored twice. Ctrl-C once "
            "stops admitting and lets in-flight requests finish (run.grace_s); twice stops now."
        ),
    )
    p.add_argument("config", type=Path, help="the run's TOML config (see examples/demo.toml)")
    p.add_argument(
        "--force",
        action="store_true",
        help="on resume, accept config changes that alter cost or delivery, not content "
        "(prices, base_url, headers, query, timeouts, limits, budget, retries, concurrency)",
    )
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="on resume, put failed conversations back to work from their last good step "
        "(after fixing what made them fail); the run records how often this was done",
    )
    p.add_argument(
        "--cancel-batches",
        action="store_true",
        help='run.mode = "batch": cancel the run\'s batches open on the provider and exit; '
        "what they finished is kept, and the next `m2l run` sends the rest again",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="split the run into shards on a Ray cluster (pip install 'm2l[ray]'): ADDRESS is "
        "its head's (e.g. head-node:6379; run m2l on a node of the cluster); without it, the "
        "cluster RAY_ADDRESS names, or a new one on this machine. The shards share the run's "
        "rate limits and budget",
    )
    p.add_argument(
        "--shards",
        type=int,
        default=None,
        metavar="N",
        help="with --ray: how many shards (default: the cluster's CPUs; a resumed run keeps its "
        "number)",
    )
    add_progress_options(p)
    add_loop_option(p)
    p.set_defaults(func=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    from engine.app.runcmd import run_from_cli

    return run_from_cli(args)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser; given the arguments, only the named command's own parser, so a
    command imports its own modules and no other's (`m2l status` starts in a fraction of the
    time it takes to import the run's engine)."""
    parser = argparse.ArgumentParser(
        prog="m2l",
        description=(
            "m2l builds M2Lingual-style multilingual, multi-turn instruction datasets from seed "
            "instructions with an OpenAI-compatible model, under rate limits and a hard budget."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"m2l {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    named = _command_named(argv)
    if named is None or named == "run":
        _add_run_parser(sub)
    for command, (module, function) in COMMANDS.items():
        if named is None or named == command:
            getattr(importlib.import_module(module), function)(sub)
    return parser


# Each command's registrar: (module, function). Only the command being run is imported; with
# no command, or one m2l does not know, all are (for --help and the "invalid choice" message).
COMMANDS: dict[str, tuple[str, str]] = {
    "status": ("engine.app.status", "add_status_parser"),
    "export": ("engine.app.outputs", "add_export_parser"),
    "stats": ("engine.app.outputs", "add_stats_parser"),
    "filter": ("engine.app.outputs", "add_filter_parser"),
    "estimate": ("engine.app.estimate", "add_estimate_parser"),
    "sim": ("engine.app.sim", "add_sim_parser"),
    "prompts": ("engine.app.prompts", "add_prompts_parser"),
    "seeds": ("engine.app.seeds", "add_seeds_parser"),
    "requests": ("engine.app.requestscmd", "add_requests_parser"),
}


def _command_named(argv: Sequence[str] | None) -> str | None:
    """The command the arguments name (the first one that is not an option), if m2l knows it."""
    if argv is None:
        return None
    for arg in argv:
        if arg == "--":
            return None
        if not arg.startswith("-"):
            return arg if arg == "run" or arg in COMMANDS else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(arguments)
    args = parser.parse_args(arguments)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="m2l: %(levelname)s: %(message)s",
    )
    func: Handler | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return func(args)
    except (ConfigError, StateError) as exc:
        print(f"m2l: error: {exc}", file=sys.stderr)
        return 2
    except duckdb.Error as exc:
        # DuckDB reads a file lazily: damage can surface mid-command, after a clean open.
        print(f"m2l: error: {_store_error(args, exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"m2l: error: {_os_error(exc)}", file=sys.stderr)
        return 2
    except M2LError as exc:
        print(f"m2l: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("m2l: interrupted", file=sys.stderr)
        return 130


def _store_path(args: argparse.Namespace, exc: BaseException) -> Path:
    """The state file a command was reading: named in DuckDB's message, or from the arguments."""
    quoted = re.search(r'file "([^"]+)"', str(exc))
    if quoted:
        return Path(quoted.group(1))
    run_dir = getattr(args, "run_dir", None)
    if run_dir is not None:
        return Path(run_dir) / STATE_FILE
    return Path(STATE_FILE)


def _store_error(args: argparse.Namespace, exc: duckdb.Error) -> str:
    path = _store_path(args, exc)
    if is_damage(exc):
        return str(damaged(path, exc))
    first = " ".join(str(exc).split())[:200]
    return f"reading the state file {path} failed: {first}; check the file and try again"


def _os_error(exc: OSError) -> str:
    """One line for a file m2l could not read or write, naming it and what to do."""
    name = exc.filename if exc.filename is not None else "a file"
    what = exc.strerror or str(exc)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (
            f"permission denied for {name} ({what}); make its folder writable (or, for export, "
            "choose another place with --output)"
        )
    if exc.errno == errno.ENOSPC:
        return f"no space left on the device holding {name}; free some space and run again"
    return f"{name}: {what}"


if __name__ == "__main__":
    sys.exit(main())
