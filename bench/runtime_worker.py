"""A worker process for the benchmarks: the real WorkerPool, plus the peers' instant tool.

python bench/runtime_worker.py DATABASE_URL CONCURRENCY
"""

from __future__ import annotations

import asyncio
import signal
import sys

import uvloop
from common import BENCH_TOOL

from app.settings import Settings
from app.tools.registry import ToolRegistry
from app.worker_main import build_pool


async def main(database_url: str, concurrency: int) -> None:
    settings = Settings()
    tools = ToolRegistry()
    tools.register(BENCH_TOOL)
    pool, engine = build_pool(settings, database_url, concurrency, tools=tools)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await pool.run(stop)
    finally:
        await engine.dispose()  # type: ignore[attr-defined]


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1], int(sys.argv[2])))
