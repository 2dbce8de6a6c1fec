"""The API key never leaves the client boundary, whatever a server echoes back.

A proxy on loopback stands in front of the simulator and echoes the request's Authorization
header in every kind of answer: 4xx and 5xx bodies, 429s, malformed 200 bodies, headers, and
the fields of good replies. A real `m2l run` goes through it; then the state file, status file,
exports, stdout and stderr (of the run and of the commands that read it) are searched for the
key.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web

from engine.config import ProviderConfig, Secret, load_config
from engine.errors import ConfigError
from engine.redact import MASK, Redactor, scrub
from engine.simulator import SimSettings, run_simulator
from tests.runfixtures import write_config

# Shaped like a project key; built at run time so secret scanners do not flag this file.
KEY = "sk-proj-" + "Lk9" * 16
# What the server answers, in turn, per request; 'pass' forwards the simulator's reply as it is.
PLAN = (
    "echo_500",
    "pass_echo",
    "echo_400_json",
    "echo_malformed",
    "echo_429",
    "echo_503_text",
    "pass_echo",
    "echo_content",
)


@asynccontextmanager
async def echoing_proxy(upstream: str, key_header: str = "Authorization") -> AsyncIterator[str]:
    """A proxy to ``upstream`` that puts the caller's key (from ``key_header``) everywhere it
    can, and passes it on to the simulator as a bearer token."""
    count = 0
    session = aiohttp.ClientSession()

    async def handle(request: web.Request) -> web.Response:
        nonlocal count
        body = await request.read()
        raw = request.headers.get(key_header, "")
        auth = raw if key_header.lower() == "authorization" else f"Bearer {raw}"
        kind = PLAN[count % len(PLAN)]
        count += 1
        echo = {"X-Debug-Authorization": auth, "X-Request-Id": auth.removeprefix("Bearer ")}
        echo[f"X-Echo-{key_header}"] = raw
        if kind == "echo_500":
            data = {"error": {"message": f"upstream failed for {auth}", "type": "server_error"}}
            return web.json_response(data, status=500, headers=echo)
        if kind == "echo_400_json":
            data = {
                "error": {
                    "message": f"Invalid header value {auth!r} (api_key={auth[7:]})",
                    "type": "invalid_request_error",
                    "code": auth[7:],
                }
            }
            return web.json_response(data, status=400, headers=echo)
        if kind == "echo_malformed":
            return web.Response(status=200, text=f"<pre>Authorization: {auth}", headers=echo)
        if kind == "echo_429":
            data = {"error": {"message": f"Rate limit reached for key {auth[7:]}"}}
            return web.json_response(data, status=429, headers={**echo, "Retry-After": "0"})
        if kind == "echo_503_text":
            return web.Response(status=503, text=f"Service Unavailable ({auth})", headers=echo)
        async with session.post(
            upstream + "/chat/completions", data=body, headers={"Authorization": auth}
        ) as up:
            status, raw = up.status, await up.read()
        if status != 200:
            return web.Response(status=status, body=raw, headers=echo)
        reply = orjson.loads(raw)
        reply["model"] = f"{reply['model']} via {auth}"
        reply["system_fingerprint"] = auth
        if kind == "echo_content":
            message = reply["choices"][0]["message"]
            message["content"] = message["content"] + f" {auth[7:]}"
        return web.Response(
            status=200,
            body=orjson.dumps(reply),
            headers={**echo, "Content-Type": "application/json"},
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None and server.sockets
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    finally:
        await runner.cleanup()
        await session.close()


async def m2l(*args: str, cwd: Path, env: dict[str, str]) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "engine.app.cli",
        *args,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out, err


def leaks(data: bytes) -> list[str]:
    """The forms of the key found in ``data`` (whole, or its distinctive tail)."""
    return [form for form in (KEY, KEY[8:], KEY[12:40]) if form.encode() in data]


@pytest.mark.anyio
@pytest.mark.parametrize("key_header", ["auto", "api-key", "x-api-key"])
async def test_a_server_echoing_the_key_everywhere_leaks_it_nowhere(
    tmp_path: Path, key_header: str
) -> None:
    """Key echoed in bodies, headers and replies: not in the DB, status, exports or any output,
    whichever header it went out in (Authorization, or a gateway's api-key / x-api-key)."""
    path = write_config(tmp_path, evols_per_seed=2)
    settings = SimSettings(require_api_key=KEY, ttft_s=0, per_token_s=0)
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env["M2L_SECRET_KEY"] = KEY
    outputs: list[tuple[str, bytes]] = []
    sent_in = "Authorization" if key_header == "auto" else key_header
    async with run_simulator(settings) as sim, echoing_proxy(sim.base_url, sent_in) as url:
        text = path.read_text().replace('kind = "sim"', f'kind = "openai"\nbase_url = "{url}"')
        text = text.replace(
            'model = "gpt-4o-mini"',
            'model = "gpt-4o-mini"\napi_key_env = "M2L_SECRET_KEY"\n'
            f'api_key_header = "{key_header}"',
        )
        text = text.replace("[retry]", "[retry]\nmax_attempts = 8")
        path.write_text(text)
        code, out, err = await m2l("run", "m2l.toml", "--progress", "json", cwd=tmp_path, env=env)
        outputs += [("run stdout", out), ("run stderr", err)]
    assert code in (0, 1), err.decode()
    run_dir = tmp_path / "runs" / "t"
    readers = (
        ("status", str(run_dir)),
        ("status", str(run_dir), "--json"),
        ("stats", str(run_dir), "--json"),
        ("export", str(run_dir), "--format", "release-jsonl", "--include-filtered"),
        ("export", str(run_dir), "--format", "sharegpt-jsonl"),
    )
    # The commands after the run read only the run directory, searched below whatever the
    # header: running them once is enough (each is a process start of a second or two).
    for args in readers if key_header == "auto" else ():
        code, out, err = await m2l(*args, cwd=tmp_path, env=env)
        assert code == 0, (args, err.decode())
        outputs += [(f"{args[0]} stdout", out), (f"{args[0]} stderr", err)]
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"state.duckdb", "status.json", "messages.jsonl"} <= names, names
    found = {str(p): leaks(p.read_bytes()) for p in files}
    found.update({name: leaks(data) for name, data in outputs})
    assert not {where: forms for where, forms in found.items() if forms}
    # The echoes did reach m2l (so the search above means something): masked, not absent.
    state = (run_dir / "state.duckdb").read_bytes()
    assert MASK.encode() in state


def test_redactor_masks_the_key_and_token_shapes_in_diagnostics() -> None:
    """Error texts lose the key, bearer tokens and api-key fields; reply text only the key."""
    redact = Redactor(Secret(KEY))
    other = "sk-" + "Ab3" * 10  # a different key, echoed by a proxy
    text = redact.text(f"got Authorization: Bearer {KEY}, api_key={other}, x-api-key: abcdef123456")
    assert KEY not in text and other not in text and "abcdef123456" not in text
    assert "Bearer ***" in text
    prose = "The bearer bonds matured; the Basic income debate went on."
    assert redact.content(prose) == prose
    assert redact.content(f"token {KEY}.") == "token ***."
    assert scrub(f"{KEY[:20]}") != KEY[:20]  # even a cut-off key-shaped prefix is masked


def test_scrub_masks_whatever_the_case_and_leaves_plain_words_alone() -> None:
    """The quick test before the expressions never lets a key-shaped string through."""
    from engine.redact import Redactor, scrub

    assert scrub("stop") == "stop"
    assert "abcdefghijklmnop" not in scrub("Authorization: BEARER abcdefghijklmnop")
    assert "s3cr3tvalue99" not in scrub('{"X-Api-Key": "s3cr3tvalue99"}')
    assert "12345678901234" not in Redactor(None).content("use sk-abcd12345678901234 here")
    assert Redactor(None).content("a plain answer") == "a plain answer"


@pytest.mark.parametrize(
    ("table", "name", "value"),
    [
        ("headers", "Authorization", "Bearer " + KEY),
        ("headers", "api-key", KEY[8:]),
        ("headers", "X-API-Key", KEY[8:]),
        ("headers", "Ocp-Apim-Subscription-Key", KEY[8:]),
        ("headers", "X-Trace", "Bearer " + KEY[8:]),  # a key-shaped value under any name
        ("query", "api-key", KEY[8:]),
        ("query", "key", KEY[8:]),
    ],
)
def test_a_key_in_the_config_is_refused_without_showing_it(
    tmp_path: Path, table: str, name: str, value: str
) -> None:
    """Headers or query parameters that carry a credential would be stored with the run: the
    config is refused at load, naming the key to use instead and never echoing the value."""
    path = write_config(tmp_path)
    path.write_text(
        path.read_text().replace(
            'kind = "sim"', f'kind = "sim"\n{table} = {{ "{name}" = "{value}" }}'
        )
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert f"provider.{table}.{name}" in message and "api_key_env" in message
    assert "api_key_header" in message and value not in message and KEY[12:40] not in message


def test_the_key_goes_out_under_the_configured_header() -> None:
    """api_key_header: Bearer by default, Azure's api-key on *.azure.com, else the bare key."""
    secret = Secret(KEY)
    auto = ProviderConfig()
    assert auto.key_headers("https://api.openai.com/v1", secret) == {
        "Authorization": f"Bearer {KEY}"
    }
    assert auto.key_headers("https://r.openai.azure.com/openai", secret) == {"api-key": KEY}
    gateway = ProviderConfig(api_key_header="Ocp-Apim-Subscription-Key")
    assert gateway.key_headers("https://gw.example/v1", secret) == {
        "Ocp-Apim-Subscription-Key": KEY
    }
    with pytest.raises(ConfigError, match="api_key_header"):
        ProviderConfig(api_key_header="bad header")
