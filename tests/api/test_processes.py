"""`serve --processes N`: a listening socket per process (SO_REUSEPORT), supervised."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from pathlib import Path

import httpx
import psutil

from tests.runtime.processes import ServeProcess


def _api_processes(server: ServeProcess) -> list[psutil.Process]:
    """The live API processes under `serve` (one just killed may linger as a zombie until
    the parent notices)."""
    found = []
    for child in psutil.Process(server.process.pid).children():
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return found


def _accepted(process: psutil.Process, port: int) -> int:
    """Connections to `port` that `process` has accepted (they are among its files)."""
    return sum(
        1
        for c in process.net_connections("tcp")
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


def _wait_for(condition, timeout: float = 20) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


async def test_each_process_accepts_its_share_and_a_dead_one_is_replaced(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    server = ServeProcess(database_url, redis_url, tmp_path / "serve.log", workers=0, processes=2)
    connections: list[socket.socket] = []
    try:
        await asyncio.to_thread(server.wait_ready)
        first, second = processes = _api_processes(server)
        assert len(processes) == 2
        # 16 connections opened at once (a client pool starting): the kernel hashes each to
        # one process's socket, so both get some (all on one: a chance of 1 in 32,768).
        connections = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(16)]
        await asyncio.to_thread(
            _wait_for, lambda: sum(_accepted(p, server.port) for p in processes) == 16
        )
        assert _accepted(first, server.port) > 0 and _accepted(second, server.port) > 0
        for connection in connections:
            connection.close()

        first.send_signal(signal.SIGKILL)
        await asyncio.to_thread(
            _wait_for,
            lambda: (
                len(_api_processes(server)) == 2
                and first.pid not in {p.pid for p in _api_processes(server)}
            ),
        )
        await asyncio.to_thread(server.wait_ready)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as http:
            answers = [(await http.get("/readyz")).status_code for _ in range(20)]
        assert answers == [200] * 20
    finally:
        for connection in connections:
            connection.close()
        code = await asyncio.to_thread(server.stop)
    assert code == 0
    log = server.log_path.read_text()
    assert f"API process {first.pid} exited (code -9): starting another" in log
    assert "Traceback" not in log


async def test_a_port_already_taken_is_refused(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        server = ServeProcess(
            database_url, redis_url, tmp_path / "serve.log", workers=0, processes=2,
            port=holder.getsockname()[1],
        )  # fmt: skip
        code = await asyncio.to_thread(server.process.wait, 60)
        server.stop()
        assert code == 1
        log = server.log_path.read_text()
        assert "cannot listen on 127.0.0.1" in log and "serving on" not in log
    finally:
        holder.close()
