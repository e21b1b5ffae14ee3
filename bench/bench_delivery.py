"""Session-delivery benchmark: live event fan-out (SSE) and the webhook dispatcher.

  .venv/bin/python bench/bench_delivery.py [--followers 500] [--sessions 200] [--webhooks 1000]

a. 1 session x N followers: latency from an event's commit to each follower receiving it
   (p50/p99), and the API process's CPU per delivered event;
b. M sessions x 1 follower each: the same;
c. webhook dispatcher throughput to a local receiver (deliveries/s).

The API (`serve --workers 0`) and a worker run as separate processes; followers are
httpx streams in this process. Latency = receive time - the event's `created_at` (the
database clock of the same machine), which is taken slightly before the commit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import time
from datetime import datetime

import httpx
import psutil
import uvicorn
import uvloop
from common import bench_database, connect, machine, pct, service_env, start_cli, wait_ready
from starlette.responses import PlainTextResponse

from app.api.auth import mint_token
from app.runtime.store import create_pool
from app.settings import Settings, WebhookSettings
from app.webhooks.dispatcher import WebhookDispatcher

TOKEN_TENANT = "bench-delivery"


def agent(turns: int) -> dict[str, object]:
    script: list[dict[str, object]] = [
        {"tool_use": [{"name": "lookup_order", "input": {"order_id": "ord_1001"}}], "delay_ms": 50}
        for _ in range(turns)
    ]
    script.append({"text": "done", "delay_ms": 50})
    return {
        "name": f"fanout-{turns}",
        "model": "offline",
        "tools": ["lookup_order"],
        "policy": {"rules": [{"tool": "lookup_order", "decision": "allow"}]},
        "offline": {"script": script},
        "limits": {"max_turns": turns + 5},
    }


async def follow(
    http: httpx.AsyncClient, session_id: str, headers: dict[str, str], lags: list[float]
) -> int:
    received = 0
    async with http.stream(
        "GET",
        f"/v1/sessions/{session_id}/events",
        headers={**headers, "Accept": "text/event-stream"},
    ) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                now = time.time()
                event = json.loads(line[6:])
                created = datetime.fromisoformat(event["created_at"]).timestamp()
                if event["type"] not in ("session.queued",):
                    lags.append(now - created)
                received += 1
    return received


async def run_fan_out(
    database_url: str,
    base_url: str,
    token: str,
    api_pid: int,
    sessions: int,
    followers: int,
    turns: int,
) -> dict[str, float]:
    """Sessions are created while no worker may take them (the tenant's cap is 0), all
    followers connect, then the cap is lifted and the sessions run."""
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=sessions * followers + 10)
    async with httpx.AsyncClient(
        base_url=base_url, timeout=httpx.Timeout(30, read=None), limits=limits
    ) as http:
        await http.post("/v1/agents", json=agent(turns), headers=headers)
        ids = [
            (
                await http.post(
                    "/v1/sessions",
                    json={"agent": f"fanout-{turns}", "input": "go"},
                    headers=headers,
                )
            ).json()["id"]
            for _ in range(sessions)
        ]
        lags: list[float] = []
        tasks = [
            asyncio.create_task(follow(http, sid, headers, lags))
            for sid in ids
            for _ in range(followers)
        ]
        await asyncio.sleep(2.0 + sessions * followers / 500)  # every follower connected
        api = psutil.Process(api_pid)
        cpu_before = sum(api.cpu_times()[:2])
        connection = await connect(database_url)
        await connection.execute(
            "UPDATE tenants SET max_running_sessions = 100000 WHERE tenant_id = $1", TOKEN_TENANT
        )
        await connection.execute("SELECT pg_notify('agent_sessions', 'bench:queued')")
        await connection.close()
        received = await asyncio.wait_for(asyncio.gather(*tasks), 600)
        cpu = sum(api.cpu_times()[:2]) - cpu_before
    delivered = sum(received)
    return {
        "delivered": delivered,
        "p50_ms": pct(lags, 50) * 1000,
        "p99_ms": pct(lags, 99) * 1000,
        "cpu_us_per_event": cpu * 1e6 / max(delivered, 1),
    }


async def webhook_throughput(database_url: str, n: int) -> float:
    receiver = PlainTextResponse("ok")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(receiver, lifespan="off", log_level="warning", access_log=False)
    )
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    connection = await connect(database_url)
    await connection.execute(
        "INSERT INTO tenants (tenant_id, max_running_sessions) VALUES ('bench-hooks', 1) ON CONFLICT DO NOTHING"
    )
    await connection.execute(
        """INSERT INTO webhook_outbox (delivery_id, tenant_id, event_type, url, payload)
           SELECT 'whd_bench_' || g, 'bench-hooks', 'session.completed', $1, '{"type": "session.completed"}'::jsonb
           FROM generate_series(1, $2) g""",
        f"http://127.0.0.1:{port}/hook",
        n,
    )
    pool = await create_pool(database_url, max_size=4)
    dispatcher = WebhookDispatcher(
        WebhookSettings(dispatch_interval_seconds=0.05), ["127.0.0.1"], batch_size=50
    )
    started = time.perf_counter()
    task = asyncio.create_task(dispatcher.run(pool))
    while (
        await connection.fetchval("SELECT count(*) FROM webhook_outbox WHERE status = 'pending'")
        > 0
    ):
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - started
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await pool.close()
    await connection.close()
    server.should_exit = True
    await serving
    return n / elapsed


def main(args: argparse.Namespace) -> None:
    settings = Settings()
    print(
        f"# delivery benchmark — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} — {machine()}"
    )
    with bench_database(settings) as (database_url, redis_url):
        env = service_env(database_url, redis_url, TENANT_DEFAULT_MAX_RUNNING_SESSIONS="0")
        port = 8766
        api = start_cli("delivery-api", ["serve", "--port", str(port), "--workers", "0"], env)
        worker = start_cli("delivery-worker", ["worker", "--concurrency", "250"], env)
        try:
            wait_ready(f"http://127.0.0.1:{port}/readyz")
            token = mint_token(
                settings.auth,
                tenant=TOKEN_TENANT,
                sub="bench",
                roles=["client", "admin"],
                ttl_seconds=3600,
            )
            base = f"http://127.0.0.1:{port}"
            a = uvloop.run(run_fan_out(database_url, base, token, api.pid, 1, args.followers, 20))
            print(
                f"a. 1 session x {args.followers} followers: {a['delivered']:.0f} events delivered, "
                f"latency p50 {a['p50_ms']:.1f} ms, p99 {a['p99_ms']:.1f} ms, API CPU {a['cpu_us_per_event']:.0f} µs/event"
            )
            b = uvloop.run(run_fan_out(database_url, base, token, api.pid, args.sessions, 1, 3))
            print(
                f"b. {args.sessions} sessions x 1 follower: {b['delivered']:.0f} events delivered, "
                f"latency p50 {b['p50_ms']:.1f} ms, p99 {b['p99_ms']:.1f} ms, API CPU {b['cpu_us_per_event']:.0f} µs/event"
            )
        finally:
            for process in (api, worker):
                process.terminate()
                process.wait(timeout=30)
        rate = uvloop.run(webhook_throughput(database_url, args.webhooks))
        print(
            f"c. webhook dispatcher (one process, batches of 50): {rate:.0f} deliveries/s to a local receiver"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--followers", type=int, default=500)
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--webhooks", type=int, default=1000)
    main(parser.parse_args())
