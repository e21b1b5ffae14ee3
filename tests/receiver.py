"""A real HTTP receiver on 127.0.0.1 for tests of outbound calls (HTTP tools, webhooks):
an ASGI app served by uvicorn that records every request it gets."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.types import Receive, Scope, Send


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes


class Receiver:
    """An ASGI app that records every request; the path picks the answer:
    `/echo/…` 200 JSON echo, `/text/…` 200 text, `/status/<code>/…` that status,
    `/slow/…` waits (until released), `/flaky/<n>/…` 500 for the first n requests then 200,
    `/redirect/…` 302 to the metadata address."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.release = asyncio.Event()
        self.port = 0

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def hits(self, path: str) -> list[Received]:
        return [request for request in self.received if request.path == path]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        body = await request.body()
        headers = {name.lower(): value for name, value in request.headers.items()}
        self.received.append(Received(request.url.path, headers, body))
        response = await self._answer(request.url.path.split("/")[1:], body)
        await response(scope, receive, send)

    async def _answer(self, parts: list[str], body: bytes) -> Response:
        kind = parts[0]
        if kind == "echo":
            return JSONResponse({"echo": json.loads(body)})
        if kind == "text":
            return PlainTextResponse("plain words, not JSON")
        if kind == "status":
            return PlainTextResponse("refused: " + "x" * 500, status_code=int(parts[1]))
        if kind == "slow":
            await asyncio.wait_for(self.release.wait(), timeout=10)
            return JSONResponse({"late": True})
        if kind == "flaky":  # /flaky/<n>/…: the first n requests of the path fail with 500
            if len(self.hits("/" + "/".join(parts))) <= int(parts[1]):
                return PlainTextResponse("try later", status_code=500)
            return JSONResponse({"ok": True})
        if kind == "redirect":
            return RedirectResponse("http://169.254.169.254/latest/meta-data/", status_code=302)
        return PlainTextResponse("no such behaviour", status_code=404)


@asynccontextmanager
async def serving(app: Receiver, **tls: Any) -> AsyncIterator[Receiver]:
    """Run `app` with uvicorn on a free port of 127.0.0.1 (TLS when `tls` names the files)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    app.port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning", **tls))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()  # surfaces a start-up failure instead of waiting it out
                await asyncio.sleep(0.01)
        yield app
    finally:
        app.release.set()
        server.should_exit = True
        await task
        sock.close()
