"""A real HTTP server on loopback that answers chat requests badly, in one chosen way.

For run-level checks (a base_url pointing at a web page, a proxy that echoes the key) that the
simulator does not imitate. ``answer`` gets the request's Authorization header and returns
(status, body bytes, extra headers).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from aiohttp import web

Answer = Callable[[str, int], tuple[int, bytes, dict[str, str]]]


@asynccontextmanager
async def bad_server(
    answer: Answer, *, hold: Callable[[int], float] | None = None
) -> AsyncIterator[str]:
    """Serve ``answer`` for every POST; yields the base URL (``http://127.0.0.1:PORT/v1``).

    ``hold`` gives the seconds to wait before answering the n-th request (a request in flight);
    requests still held when the server closes are answered at once, so closing does not wait
    for them."""
    count = 0
    closing = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        nonlocal count
        count += 1
        await request.read()
        n = count
        if hold is not None and hold(n) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(closing.wait(), hold(n))
        status, body, headers = answer(request.headers.get("Authorization", ""), n)
        return web.Response(status=status, body=body, headers=headers)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None and server.sockets
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        closing.set()
        await runner.cleanup()
