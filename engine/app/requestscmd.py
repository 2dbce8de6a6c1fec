"""The ``m2l requests IN.jsonl OUT.jsonl`` command: flags (and an optional TOML) at the edge, the
job inside the live progress display, signals wired to a graceful stop, and exit codes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shlex
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from engine.app import eventloop
from engine.app.eventloop import add_loop_option
from engine.app.status import add_progress_options, progress_options
from engine.config import RequestsConfig, environment, load_requests_config
from engine.errors import ConfigError

if TYPE_CHECKING:  # the job's modules load when the command runs, not for `m2l --help`
    from engine.requestjob import JobReport, RequestJob

__all__ = ["add_requests_parser", "requests_from_cli"]

SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

DESCRIPTION = """\
Send every line of IN (a JSONL file of OpenAI chat-completions bodies) and write one result line
per request to OUT, in the order of IN, with m2l's rate limiter, retries, budget caps and
adaptive concurrency.

A line of IN is a request body ({"model": ..., "messages": [...], ...}); an optional "metadata"
value is passed through to its result and never sent. Batch API lines ({"custom_id", "method",
"url", "body"}) work too; their custom_id is passed through. A body without a token cap gets
--max-tokens. Each line of OUT is
  {"line": N, "metadata": ..., "response": {chat.completion}, "error": null, "cost_usd": ...}
or, for a request that failed for good, "response": null and "error": {"class", "status",
"message"}. The whole input is checked before anything is sent.

The job keeps its state in OUT.m2l/ beside OUT: run the same command again after a kill or
Ctrl-C and it sends only what has no result yet, and writes OUT on from where it stopped; each
line appears once, in order. Ctrl-C once lets requests in flight finish; twice stops at once.

Settings come from flags, or from a TOML file (--config) with the sections of an m2l run
config: [provider] (base_url, api_key_env, model, timeouts, headers, query), [limits] (rpm,
tpm, max_inflight), [retry], [budget] (usd, tokens, requests, [budget.prices.MODEL]), [store],
[sim] and [requests] (max_tokens, max_active, grace_s, buffer_mb); flags win over the file.

Exit codes: 0 every line has a result (some may hold errors: see the summary); 1 the job could
not go on (a rejected key, an unreachable server); 2 bad input or options; 3 stopped at a
budget cap; 130 interrupted."""

EPILOG = """\
examples:
  m2l requests prompts.jsonl results.jsonl --sim                 try it on the simulator
  m2l requests prompts.jsonl results.jsonl --model gpt-4o-mini --budget-usd 5
  m2l requests prompts.jsonl results.jsonl --base-url http://127.0.0.1:8000/v1 --model local
"""


def add_requests_parser(sub: SubParsers) -> None:
    p = sub.add_parser(
        "requests",
        help="send a JSONL file of chat-completions requests; results in order, resumable",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", type=Path, metavar="IN", help="JSONL file, one request body a line")
    p.add_argument("output", type=Path, metavar="OUT", help="JSONL file of results (its folder "
                   "must exist); the job's state goes to OUT.m2l/")  # fmt: skip
    p.add_argument("--config", type=Path, metavar="TOML", help="settings file (see above)")
    where = p.add_argument_group("endpoint")
    where.add_argument("--base-url", help="OpenAI-compatible API root (default OpenAI's)")
    where.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="environment variable holding the key (default OPENAI_API_KEY; the key itself is "
        "never stored)",
    )
    where.add_argument("--model", help="model of the bodies that name none (default gpt-4o)")
    where.add_argument(
        "--sim", action="store_true", help="send to the embedded simulator (no key, no cost)"
    )
    limits = p.add_argument_group("limits")
    limits.add_argument("--rpm", type=float, help="requests per minute (default: learnt from "
                        "the provider's headers)")  # fmt: skip
    limits.add_argument("--tpm", type=float, help="tokens per minute (default: learnt)")
    limits.add_argument(
        "--max-inflight",
        metavar="N|auto",
        help='requests in flight at once; "auto" (default) finds the server\'s capacity',
    )
    limits.add_argument(
        "--max-tokens",
        type=int,
        metavar="N",
        help="token cap added to bodies that set none (default 1024)",
    )
    limits.add_argument("--max-attempts", type=int, metavar="N", help="tries per request (6)")
    money = p.add_argument_group("budget (hard caps: the job stops before passing one)")
    money.add_argument("--budget-usd", type=float, metavar="USD", help="money cap")
    money.add_argument("--budget-tokens", type=int, metavar="N", help="token cap")
    money.add_argument("--budget-requests", type=int, metavar="N", help="request cap")
    money.add_argument(
        "--price",
        action="append",
        default=[],
        metavar="MODEL=IN,OUT",
        help="USD per 1M input and output tokens for a model m2l has no price for (repeatable)",
    )
    add_progress_options(p)
    add_loop_option(p)
    p.set_defaults(func=requests_from_cli)


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The flags that were given, as config sections; raises ConfigError for a bad --price."""
    out: dict[str, dict[str, Any]] = {}

    def put(section: str, key: str, value: Any) -> None:
        if value is not None:
            out.setdefault(section, {})[key] = value

    put("provider", "base_url", args.base_url)
    put("provider", "api_key_env", args.api_key_env)
    put("provider", "model", args.model)
    if args.sim:
        put("provider", "kind", "sim")
    put("limits", "rpm", args.rpm)
    put("limits", "tpm", args.tpm)
    if args.max_inflight is not None:
        value = args.max_inflight
        put("limits", "max_inflight", value if value == "auto" else _int("--max-inflight", value))
    put("requests", "max_tokens", args.max_tokens)
    put("retry", "max_attempts", args.max_attempts)
    put("budget", "usd", args.budget_usd)
    put("budget", "tokens", args.budget_tokens)
    put("budget", "requests", args.budget_requests)
    prices: dict[str, Any] = {}
    for item in args.price:
        model, _, pair = item.partition("=")
        parts = pair.split(",")
        try:
            if not model or len(parts) != 2:
                raise ValueError
            prices[model] = {"input": float(parts[0]), "output": float(parts[1])}
        except ValueError:
            raise ConfigError(
                f"--price {item!r}: expected MODEL=INPUT,OUTPUT in USD per 1M tokens, e.g. "
                "--price my-model=0.15,0.60"
            ) from None
    if prices:
        out.setdefault("budget", {})["prices"] = prices
    return out


def _int(flag: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f'{flag} {value!r}: expected a whole number or "auto"') from None


def requests_from_cli(args: argparse.Namespace) -> int:
    """Run the job with progress and return the exit code; errors of input reach main()."""
    config = load_requests_config(args.config, _overrides(args))
    mode, interval = progress_options(args)
    report = eventloop.run(
        _run(config, args.input, args.output, mode=mode, interval=interval), args.loop
    )
    command = "m2l " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else ""
    print(_summary(report, command), file=sys.stderr)
    return {"finished": 0, "interrupted": 130, "budget_exhausted": 3, "failed": 1}[report.status]


def _summary(report: JobReport, command: str) -> str:
    lines = [
        f"m2l: {report.out}: {report.written} of {report.total} result lines written "
        f"({report.ok} answered, {report.failed} failed with their error in the line)"
    ]
    again = f"; resume with: {command}" if command else ""
    if report.status == "interrupted":
        lines.append(f"m2l: interrupted{again}")
    elif report.status == "budget_exhausted":
        lines.append(f"m2l: stopped at the budget cap: {report.message}")
        lines.append(f"m2l: raise the cap (--budget-usd/--budget-tokens), then resume{again}")
    elif report.status == "failed":
        lines.append(f"m2l: error: {report.message}")
        lines.append(f"m2l: fix the cause, then resume{again}")
    return "\n".join(lines)


async def _run(
    config: RequestsConfig, in_path: Path, out_path: Path, *, mode: str, interval: float | None
) -> JobReport:
    from engine.clock import MonotonicClock
    from engine.progress import ProgressModel, progress_display
    from engine.requestjob import RequestJob

    model = ProgressModel(MonotonicClock())
    job = RequestJob(config, in_path, out_path, env=environment(), hooks=model)
    run_dir = await job.prepare()  # bad input stops here, before any file is made
    # The run's end summary speaks of conversations and exports: this command prints its own.
    async with progress_display(mode, model, interval_s=interval, run_dir=run_dir, summary=False):
        with _signals(job):
            return await job.run()


@contextlib.contextmanager
def _signals(job: RequestJob) -> Any:
    """SIGINT/SIGTERM: the first stops taking lines, the second cancels what is in flight."""
    loop = asyncio.get_running_loop()
    installed = []
    seen = [0]

    def on_signal(name: str) -> None:
        seen[0] += 1
        job.request_stop(f"stopped by {name}", now=seen[0] > 1)

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, sig.name)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
