"""Approval resume latency: from a reviewer's decision POST returning to the session's next
step starting (its `session.running` event after the decision), median and p99 over N
approvals — push wake-ups (NOTIFY) end to end. The API (`serve --workers 0`) and a worker
run as separate processes on a fresh database; the reviewer is this process.

  .venv/bin/python bench/bench_approvals.py [--approvals 200]

Latency = the event's `created_at` (the database clock, same machine) - the wall time the
decision's response arrived, so it is what a reviewer would see, not the server's own view.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import datetime

import httpx
from common import bench_database, machine, pct, service_env, start_cli, wait_ready

from app.api.auth import mint_token
from app.settings import Settings

TENANT = "bench-approvals"
AGENT = {
    "name": "gated",
    "model": "offline",
    "tools": ["lookup_order"],
    "policy": {"rules": [{"tool": "lookup_order", "decision": "allow"}]},
    "gates": {"lookup_order": {"type": "approval"}},
    "offline": {
        "script": [{"tool_use": [{"name": "lookup_order", "input": {"order_id": "ord_1001"}}]}]
    },
}


async def run(base_url: str, settings: Settings, approvals: int) -> tuple[list[float], list[float]]:
    client = {"Authorization": "Bearer " + mint_token(
        settings.auth, tenant=TENANT, sub="client", roles=["client", "admin"], ttl_seconds=3600
    )}  # fmt: skip
    reviewer = {"Authorization": "Bearer " + mint_token(
        settings.auth, tenant=TENANT, sub="rita", roles=["reviewer"], ttl_seconds=3600
    )}  # fmt: skip
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        assert (await http.post("/v1/agents", json=AGENT, headers=client)).status_code == 201
        ids = [
            (
                await http.post(
                    "/v1/sessions", json={"agent": "gated", "input": "x"}, headers=client
                )
            ).json()["id"]
            for _ in range(approvals)
        ]
        pending: dict[str, str] = {}
        while len(pending) < approvals:
            await asyncio.sleep(0.5)
            listed = await http.get(
                "/v1/approvals", params={"status": "pending", "limit": 100}, headers=reviewer
            )
            pending.update({item["session_id"]: item["id"] for item in listed.json()["items"]})
            cursor = listed.json().get("next_cursor")
            while cursor:
                listed = await http.get(
                    "/v1/approvals",
                    params={"status": "pending", "limit": 100, "cursor": cursor},
                    headers=reviewer,
                )
                pending.update({i["session_id"]: i["id"] for i in listed.json()["items"]})
                cursor = listed.json().get("next_cursor")
        decided_at: dict[str, float] = {}
        committed_at: dict[str, float] = {}
        for session_id in ids:
            response = await http.post(
                f"/v1/approvals/{pending[session_id]}/decision",
                json={"decision": "approve"},
                headers=reviewer,
            )
            decided_at[session_id] = time.time()
            assert response.status_code == 200, response.text
            committed_at[session_id] = datetime.fromisoformat(
                response.json()["decided_at"]
            ).timestamp()
            await asyncio.sleep(0.02)  # one decision at a time, as reviewers click
        lags: list[float] = []
        from_commit: list[float] = []
        for session_id in ids:
            for _ in range(200):
                events = (
                    await http.get(f"/v1/sessions/{session_id}/events", headers=client)
                ).json()["items"]
                resumed = [e for e in events if e["type"] == "session.running"][
                    1:
                ]  # the claim after the decision
                if resumed:
                    started = datetime.fromisoformat(resumed[0]["created_at"]).timestamp()
                    lags.append(started - decided_at[session_id])
                    from_commit.append(started - committed_at[session_id])
                    break
                await asyncio.sleep(0.05)
    return lags, from_commit


def main(args: argparse.Namespace) -> None:
    settings = Settings()
    print(
        f"# approvals benchmark — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} — {machine()}"
    )
    with bench_database(settings) as (database_url, redis_url):
        env = service_env(database_url, redis_url)
        port = 8767
        processes = [
            start_cli("approvals-api", ["serve", "--port", str(port), "--workers", "0"], env),
            start_cli("approvals-worker", ["worker", "--concurrency", "16"], env),
        ]
        try:
            base_url = f"http://127.0.0.1:{port}"
            wait_ready(base_url + "/readyz")
            lags, from_commit = asyncio.run(run(base_url, settings, args.approvals))
        finally:
            for process in processes:
                process.terminate()
                process.wait(30)
    print(f"approval resume latency over {len(lags)} approvals")
    for name, values in (
        ("decision POST returned → next step started", lags),
        ("decision transaction (decided_at) → next step started", from_commit),
    ):
        print(f"  {name}: p50 {pct(values, 50) * 1000:.1f} ms   "
              f"p99 {pct(values, 99) * 1000:.1f} ms   max {max(values) * 1000:.1f} ms")  # fmt: skip
    print("  (negative: the worker had resumed the session before the reviewer's response arrived)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--approvals", type=int, default=200)
    main(parser.parse_args())
