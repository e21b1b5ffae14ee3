"""Serve a FakeAnthropic on a real loopback port from a background thread.

The server has its own thread and event loop, so it works the same from sync code, from any
test's event loop, from benchmarks, and for subprocesses that are given `base_url`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from types import TracebackType
from typing import Any, Self

import uvicorn

from app.llm.fake_anthropic.app import DEFAULT_API_KEY, ConnectionDropped, FakeAnthropic
from app.llm.fake_anthropic.records import RecordedRequest
from app.llm.fake_anthropic.script import Entry

_START_TIMEOUT_SECONDS = 10.0


class QuietDrops(logging.Filter):
    """Keeps scripted disconnects (ConnectionDropped) out of uvicorn's error log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], ConnectionDropped))


def install_quiet_drops() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(item, QuietDrops) for item in logger.filters):
        logger.addFilter(QuietDrops())


def uvicorn_config(app: FakeAnthropic, **options: Any) -> uvicorn.Config:
    """Settings that keep the fake fast and quiet: no access log, no lifespan, short
    graceful shutdown (scripted delays must not hold a test run up)."""
    values: dict[str, Any] = {
        "lifespan": "off",
        "log_level": "warning",
        "access_log": False,
        "timeout_graceful_shutdown": 2,
    }
    values.update(options)
    return uvicorn.Config(app, **values)


class FakeAnthropicServer:
    """A FakeAnthropic served on `host`:`port` (0: a free port) while started.

    ```python
    with FakeAnthropicServer() as fake:
        fake.script(Reply(["hi"]))
        client = anthropic.AsyncAnthropic(base_url=fake.base_url, api_key=fake.api_key)
    ```
    """

    def __init__(
        self,
        app: FakeAnthropic | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str = DEFAULT_API_KEY,
    ) -> None:
        self.app = app or FakeAnthropic(api_key)
        self.host = host
        self.port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def api_key(self) -> str:
        return self.app.api_key

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def requests(self) -> list[RecordedRequest]:
        return self.app.requests

    def script(self, *entries: Entry, model: str | None = None) -> None:
        self.app.script(*entries, model=model)

    def script_always(self, entry: Entry | None, *, model: str | None = None) -> None:
        self.app.script_always(entry, model=model)

    def pending(self, model: str | None = None) -> int:
        return self.app.pending(model)

    def reset(self) -> None:
        self.app.reset()

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("the fake Anthropic server is already running")
        install_quiet_drops()
        # IPPROTO_TCP (not 0): asyncio sets TCP_NODELAY only on such sockets, and without it
        # a response written as head + body waits ~40 ms for a delayed ACK.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn_config(self.app))
        failure: list[BaseException] = []

        def serve() -> None:
            try:
                asyncio.run(server.serve(sockets=[sock]))
            except BaseException as exc:  # reported by start(); the thread must not die silently
                failure.append(exc)
            finally:
                sock.close()

        thread = threading.Thread(target=serve, name=f"fake-anthropic-{self.port}", daemon=True)
        thread.start()
        deadline = time.monotonic() + _START_TIMEOUT_SECONDS
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                thread.join(_START_TIMEOUT_SECONDS)
                raise RuntimeError("the fake Anthropic server did not start") from (
                    failure[0] if failure else None
                )
            time.sleep(0.005)
        self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(_START_TIMEOUT_SECONDS)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)
