"""A worker process for the benchmarks: the real worker, plus the peers' instant tool.

python bench/runtime_worker.py DATABASE_URL CONCURRENCY
"""

from __future__ import annotations

import sys

import uvloop
from common import BENCH_TOOL

from app.settings import Settings
from app.tools.registry import ToolRegistry
from app.worker_main import run_worker

if __name__ == "__main__":
    tools = ToolRegistry()
    tools.register(BENCH_TOOL)
    uvloop.run(run_worker(Settings(), sys.argv[1], int(sys.argv[2]), tools=tools))
