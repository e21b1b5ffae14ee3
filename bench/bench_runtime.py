"""Runtime benchmark: the same work as the peers (../shared/peers): an instant scripted model,
3 tool turns (one call each) + a final answer per session, every step durable.

  .venv/bin/python bench/bench_runtime.py [--seq 200] [--tp 1000] [--big 500,2000]

a. per-turn platform overhead at concurrency 1 (one in-process worker slot);
b. throughput at concurrency 50 with 2 worker processes (25 slots each);
c. N sessions at once with a 200 ms model, 2 worker processes: wall vs ideal 0.8 s, peak RSS;
d. per session: commits, WAL fsyncs, WAL bytes, rows and bytes of session state;
and PostgreSQL's floor in the same sitting: sequential one-row INSERT commits.

Sessions are enqueued by one statement shaped like POST /v1/sessions' insert (a row, its
first event, a NOTIFY) but without its audit entry and without HTTP: the API has its own
benchmark (bench_api.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvloop
from common import (
    BENCH_TOOL,
    ROOT,
    TURNS,
    bench_agent,
    bench_database,
    connect,
    machine,
    pct,
    peak_rss_mib,
)

from app.agents import service as agents_service
from app.agents.schemas import AgentWrite
from app.db.engine import create_engine, create_session_factory
from app.db.ids import new_id
from app.runtime.worker import WorkerPool
from app.settings import RuntimeSettings, Settings
from app.tools.registry import ToolRegistry

TENANT = "bench"

_ENQUEUE_ONE = """
WITH s AS (
    INSERT INTO sessions (session_id, tenant_id, agent_id, agent_name, agent_version, input,
                          event_seq, deadline_at, trace_id)
    VALUES ($1, $2, $3, $4, $5, '"do three lookups"'::jsonb, 1, now() + interval '1 hour', $6)
    RETURNING session_id
), e AS (
    INSERT INTO session_events (session_id, seq, type, data)
    SELECT session_id, 1, 'session.queued', '{"status":"queued"}'::json FROM s
)
SELECT pg_notify('agent_sessions', $1 || ':queued')
"""

_ENQUEUE_MANY = """
WITH s AS (
    INSERT INTO sessions (session_id, tenant_id, agent_id, agent_name, agent_version, input,
                          event_seq, deadline_at, trace_id)
    SELECT id, $2, $3, $4, $5, '"do three lookups"'::jsonb, 1,
           now() + interval '1 hour', md5(id)
    FROM unnest($1::text[]) AS id
    RETURNING session_id
), e AS (
    INSERT INTO session_events (session_id, seq, type, data)
    SELECT session_id, 1, 'session.queued', '{"status":"queued"}'::json FROM s
)
SELECT pg_notify('agent_sessions', 'bulk:queued'), now() AS created_at
"""

_STATS = """
SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()) AS commits,
       (SELECT sum(fsyncs) FROM pg_stat_io WHERE object = 'wal') AS fsyncs,
       (SELECT wal_bytes FROM pg_stat_wal) AS wal_bytes
"""


_TERMINAL = "('completed', 'failed', 'cancelled', 'timed_out')"


class RunEndings:
    """When each session's run ended in the in-process worker pool (its task's done
    callback: right after the final commit), without polling the database — status changes
    other than `queued` send no NOTIFY (a NOTIFY serialises the commits that send one)."""

    def __init__(self, pool: WorkerPool) -> None:
        self.ended: dict[str, asyncio.Event] = {}
        original = pool._finished_callback

        def finished_callback(session_id: str) -> Callable[[asyncio.Task[None]], None]:
            inner = original(session_id)

            def finished(task: asyncio.Task[None]) -> None:
                inner(task)
                self.ended.setdefault(session_id, asyncio.Event()).set()

            return finished

        pool._finished_callback = finished_callback  # type: ignore[method-assign]

    async def wait(self, session_id: str, within_seconds: float) -> None:
        event = self.ended.setdefault(session_id, asyncio.Event())
        await asyncio.wait_for(event.wait(), within_seconds)


async def wait_until_all_ended(
    conn: Any, created_at: Any, n: int, within_seconds: float
) -> tuple[list[float], list[str]]:
    """Poll (every 100 ms, by the (tenant, created_at) index) until the `n` sessions enqueued
    at `created_at` have ended: each session's end relative to its creation (database
    clock; the last is the phase's wall time, so the poll need not be frequent, and an
    observer polling often took a tenth of a core from the run it measured), and the ids of
    those that did not complete."""
    started = time.perf_counter()
    while True:
        ended = await conn.fetchval(
            "SELECT count(*) FROM sessions WHERE tenant_id = $1 AND created_at >= $2"
            f" AND status IN {_TERMINAL}",
            TENANT,
            created_at,
        )
        if ended >= n:
            break
        if time.perf_counter() - started > within_seconds:
            raise TimeoutError(f"{ended} of {n} sessions ended within {within_seconds} s")
        await asyncio.sleep(0.1)
    rows = await conn.fetch(
        """SELECT session_id, status, extract(epoch FROM finished_at - created_at) AS seconds
           FROM sessions WHERE tenant_id = $1 AND created_at >= $2""",
        TENANT,
        created_at,
    )
    failed = [row["session_id"] for row in rows if row["status"] != "completed"]
    return sorted(float(row["seconds"]) for row in rows), failed


async def setup(database_url: str, settings: Settings) -> dict[int, tuple[str, str, int]]:
    engine = create_engine(settings.database, database_url)
    tools = ToolRegistry()
    tools.register(BENCH_TOOL)
    agents: dict[int, tuple[str, str, int]] = {}
    async with create_session_factory(engine).begin() as db:
        await db.execute(
            __import__("sqlalchemy").text(
                "INSERT INTO tenants (tenant_id, max_running_sessions) VALUES (:t, 100000)"
            ),
            {"t": TENANT},
        )
        for delay in (0, 200):
            view, _ = await agents_service.save(
                db,
                tools,
                tenant_id=TENANT,
                body=AgentWrite.model_validate(bench_agent(delay)),
                created_by="bench",
            )
            agent, _version = await agents_service.get_visible(db, TENANT, view.name)
            agents[delay] = (agent.agent_id, agent.name, view.version)
    await engine.dispose()
    return agents


async def commit_floor_ms(database_url: str, n: int = 300) -> float:
    """PostgreSQL's floor here: the p50 of `n` sequential one-row INSERT commits (the
    issue's reference: ~0.28 ms per durable commit, sequential)."""
    conn = await connect(database_url)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS bench_floor (n int)")
        times = []
        for i in range(n + 30):
            started = time.perf_counter()
            await conn.execute("INSERT INTO bench_floor VALUES ($1)", i)
            times.append((time.perf_counter() - started) * 1000)
        return pct(times[30:], 50)
    finally:
        await conn.close()


async def phase_sequential(
    database_url: str, settings: Settings, agent: tuple[str, str, int], n: int
) -> dict[str, Any]:
    tools = ToolRegistry()
    tools.register(BENCH_TOOL)
    engine = create_engine(settings.database, database_url)
    pool = WorkerPool(
        RuntimeSettings(),
        database_url,
        concurrency=1,
        session_factory=create_session_factory(engine),
        tools=tools,
    )
    endings = RunEndings(pool)
    stop = asyncio.Event()
    task = asyncio.create_task(pool.run(stop))
    writer = await connect(database_url)
    stats_before = await writer.fetchrow(_STATS)
    await asyncio.sleep(0.3)
    latencies = []
    ids = []
    for _ in range(n):
        session_id = new_id("ses")
        ids.append(session_id)
        started = time.perf_counter()
        await writer.execute(_ENQUEUE_ONE, session_id, TENANT, *agent, uuid.uuid4().hex)
        await endings.wait(session_id, 30)
        latencies.append((time.perf_counter() - started) * 1000)
    stop.set()
    await task  # closes the worker's connections, which flushes their statistics
    failed = [
        row["session_id"]
        for row in await writer.fetch(
            "SELECT session_id FROM sessions WHERE session_id = ANY($1) AND status <> 'completed'",
            ids,
        )
    ]
    await asyncio.sleep(1.1)
    await writer.execute("SELECT pg_stat_clear_snapshot()")
    stats_after = await writer.fetchrow(_STATS)
    in_worker = await writer.fetch(
        """SELECT extract(epoch FROM s.finished_at - e.created_at) * 1000 AS ms
           FROM sessions s JOIN session_events e ON e.session_id = s.session_id AND e.type = 'session.running'
           WHERE s.session_id = ANY($1)""",
        ids,
    )
    storage = await writer.fetchrow(
        """SELECT
             (SELECT avg(pg_column_size(s.*)) FROM sessions s WHERE session_id = ANY($1)) AS session_bytes,
             (SELECT count(*)::float / $2 FROM session_events WHERE session_id = ANY($1)) AS event_rows,
             (SELECT sum(pg_column_size(e.*))::float / $2 FROM session_events e WHERE session_id = ANY($1)) AS event_bytes,
             (SELECT count(*)::float / $2 FROM tool_calls WHERE session_id = ANY($1)) AS tool_rows,
             (SELECT sum(pg_column_size(t.*))::float / $2 FROM tool_calls t WHERE session_id = ANY($1)) AS tool_bytes""",
        ids,
        n,
    )
    await writer.close()
    await engine.dispose()
    session_ms = [ms for ms in latencies]
    worker_ms = [float(row["ms"]) for row in in_worker]
    return {
        "failed": failed,
        "e2e_mean": statistics.mean(session_ms),
        "e2e_p50": pct(session_ms, 50),
        "e2e_p99": pct(session_ms, 99),
        "worker_p50": pct(worker_ms, 50),
        "worker_p99": pct(worker_ms, 99),
        "commits": (stats_after["commits"] - stats_before["commits"]) / n,
        "fsyncs": float(stats_after["fsyncs"] - stats_before["fsyncs"]) / n,
        "wal_bytes": float(stats_after["wal_bytes"] - stats_before["wal_bytes"]) / n,
        "rows": 1 + storage["event_rows"] + storage["tool_rows"],
        "state_bytes": float(storage["session_bytes"])
        + storage["event_bytes"]
        + storage["tool_bytes"],
        "breakdown": dict(storage),
    }


def start_workers(
    database_url: str, processes: int, concurrency: int
) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "bench" / "runtime_worker.py"),
                database_url,
                str(concurrency),
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=open(f"/tmp/bench-worker-{i}.log", "wb"),
            env={
                **__import__("os").environ,
                "LOG_LEVEL": "WARNING",
                "RUNTIME_POLL_INTERVAL_SECONDS": "1",
            },
        )
        for i in range(processes)
    ]


async def wait_for_listening_workers(conn: Any, processes: int, within_seconds: float = 60) -> None:
    """Until every worker process listens for wake-ups (its last LISTEN is done), so the
    wall times below do not include the workers' start-up."""
    deadline = time.monotonic() + within_seconds
    while time.monotonic() < deadline:
        listening = await conn.fetchval(
            """SELECT count(*) FROM pg_stat_activity
               WHERE datname = current_database() AND query = 'LISTEN "agent_approvals"'"""
        )
        if listening >= processes:
            await asyncio.sleep(0.5)  # their first (empty) claims
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{processes} workers did not start within {within_seconds} s")


def stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.wait(timeout=60)


async def phase_batch(
    database_url: str,
    agent: tuple[str, str, int],
    n: int,
    processes: int,
    concurrency: int,
    within_seconds: float,
) -> dict[str, Any]:
    workers = start_workers(database_url, processes, concurrency)
    writer = await connect(database_url)
    await wait_for_listening_workers(writer, processes)
    ids = [new_id("ses") for _ in range(n)]  # ids as POST /v1/sessions makes them
    enqueued = await writer.fetchrow(_ENQUEUE_MANY, ids, TENANT, *agent)
    latencies, failed = await wait_until_all_ended(
        writer, enqueued["created_at"], n, within_seconds
    )
    wall = latencies[-1]  # from the enqueue's start to the last session's end
    peaks = [peak_rss_mib(worker.pid) for worker in workers]
    await writer.close()
    stop_workers(workers)
    return {
        "failed": failed,
        "wall": wall,
        "sessions_per_s": n / wall,
        "turns_per_s": n * TURNS / wall,
        "p50": pct(latencies, 50),
        "p99": pct(latencies, 99),
        "peak_rss_mib": peaks,
    }


async def run(args: argparse.Namespace, settings: Settings, database_url: str) -> None:
    agents = await setup(database_url, settings)
    failures: list[str] = []
    figures: dict[str, Any] = {"big": {}}
    if args.seq:
        await phase_sequential(database_url, settings, agents[0], 20)  # warm-up
        a = await phase_sequential(database_url, settings, agents[0], args.seq)
        a["commit_floor_ms"] = await commit_floor_ms(database_url)
        print(f"a. {args.seq} sessions sequentially (concurrency 1), instant model")
        print(
            f"   end-to-end ms/session (enqueue → completed): p50 {a['e2e_p50']:.2f}  p99 {a['e2e_p99']:.2f}  mean {a['e2e_mean']:.2f}"
        )
        print(
            f"   ms/turn (end-to-end / 4):                    p50 {a['e2e_p50'] / TURNS:.3f}  p99 {a['e2e_p99'] / TURNS:.3f}"
        )
        print(
            f"   in-worker ms/session (claim → completed):    p50 {a['worker_p50']:.2f}  p99 {a['worker_p99']:.2f}"
        )
        floor = a["commit_floor_ms"]
        print(
            f"   PostgreSQL floor: a one-row INSERT commit p50 {floor:.3f} ms; a session's"
            f" {a['fsyncs']:.0f} durable commits at that floor = {a['fsyncs'] * floor / TURNS:.3f} ms/turn"
        )
        print(
            f"d. per session: {a['commits']:.1f} commits, {a['fsyncs']:.1f} WAL fsyncs, {a['wal_bytes'] / 1024:.1f} KiB WAL,"
        )
        print(
            f"   {a['rows']:.0f} rows, {a['state_bytes'] / 1024:.2f} KiB of session state  {json.dumps({k: round(float(v), 1) for k, v in a['breakdown'].items()})}"
        )
        failures += a["failed"]
        figures["a"] = a
    if args.tp:
        b = await phase_batch(database_url, agents[0], args.tp, 2, 25, 300)
        print(
            f"b. {args.tp} sessions, 2 worker processes x 25 slots (concurrency 50), instant model"
        )
        print(
            f"   {b['turns_per_s']:.0f} turns/s, {b['sessions_per_s']:.0f} sessions/s, wall {b['wall']:.2f} s, p99 session {b['p99']:.2f} s"
        )
        failures += b["failed"]
        figures["b"] = b
    for n in args.big:
        c = await phase_batch(database_url, agents[200], n, 2, (n + 1) // 2, 600)
        print(f"c. {n} sessions at once, 200 ms model, 2 worker processes x {(n + 1) // 2} slots")
        print(
            f"   wall {c['wall']:.2f} s (ideal 0.80 s, ratio {c['wall'] / 0.8:.1f}x), p50 {c['p50']:.2f} s, p99 {c['p99']:.2f} s, peak RSS per worker {', '.join(f'{p:.0f}' for p in c['peak_rss_mib'])} MiB"
        )
        failures += c["failed"]
        figures["big"][str(n)] = c
    if args.json:
        args.json.write_text(json.dumps(figures, default=str, indent=1))
    if failures:
        print(f"!! {len(failures)} sessions did not complete: {failures[:5]}")
        sys.exit(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seq", type=int, default=200)
    parser.add_argument("--tp", type=int, default=1000)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--big", type=lambda s: [int(x) for x in s.split(",") if x], default=[500, 2000]
    )
    arguments = parser.parse_args()
    bench_settings = Settings()
    print(
        f"# runtime benchmark — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} — {machine()}"
    )
    with bench_database(bench_settings) as (url, _redis_url):
        uvloop.run(run(arguments, bench_settings, url))
