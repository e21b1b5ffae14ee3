"""Crash recovery with real worker processes killed with SIGKILL or paused with SIGSTOP.

- Killed before a tool's side effect, after it but before recording, or after recording:
  the session completes on another worker; a non-idempotent tool's side effect happens at
  most once (counted at the sink); an idempotent tool may run again.
- Paused past its lease and resumed after another worker took over: it writes nothing.
- Killing a worker never takes the embedded database or Redis down with it.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.api.context import AppContext
from app.tools.demo_models import DemoRefund
from tests.conftest import TokenFactory, bearer
from tests.runtime.processes import WorkerProcess
from tests.runtime_fixtures import Api, script


@pytest.fixture
def workers(database_url: str, redis_url: str, tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.stop()


def _spawn(
    workers: list[WorkerProcess],
    database_url: str,
    redis_url: str,
    tmp_path: Path,
    **kwargs: object,
) -> WorkerProcess:
    worker = WorkerProcess(
        database_url, redis_url, tmp_path / f"worker-{len(workers)}.log", **kwargs
    )  # type: ignore[arg-type]
    workers.append(worker)
    return worker


async def _refunds(context: AppContext, session_id: str) -> int:
    async with context.session_factory() as db:
        return int(
            (
                await db.execute(select(func.count()).where(DemoRefund.session_id == session_id))
            ).scalar_one()
        )


async def _wait_dead(worker: WorkerProcess, within_seconds: float = 20) -> int:
    for _ in range(int(within_seconds / 0.05)):
        if not worker.alive():
            return worker.process.returncode
        await asyncio.sleep(0.05)
    raise AssertionError(f"worker did not die:\n{worker.log()[-3000:]}")


@pytest.mark.parametrize(
    ("point", "refund_status", "refunds"),
    [
        ("before_tool", "unknown", 0),  # recorded `started`, killed before the effect
        ("after_tool_effect", "unknown", 1),  # effect done, killed before recording it
        ("after_tool_record", "succeeded", 1),  # recorded, killed before the next step
    ],
)
async def test_sigkill_at_each_point_then_another_worker_completes(
    point: str,
    refund_status: str,
    refunds: int,
    api: Api,
    context: AppContext,
    workers: list[WorkerProcess],
    database_url: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    crashing = _spawn(
        workers,
        database_url,
        redis_url,
        tmp_path,
        extra_env={
            "RUNTIME_CRASH_AT": f"{point}:refund_order",
            "RUNTIME_CRASH_ONCE_FILE": str(tmp_path / "crashed"),
        },
    )
    session = await api.start("support", {"order_id": "ord_1004", "amount": 12.5})
    assert await _wait_dead(crashing) == -signal.SIGKILL
    assert (tmp_path / "crashed").exists()
    assert (await api.get(session["id"]))["status"] == "running"  # the dead worker's lease

    _spawn(workers, database_url, redis_url, tmp_path)
    done = await api.wait(session["id"], within_seconds=30)
    assert done["status"] == "completed", done
    assert await _refunds(context, session["id"]) == refunds  # never twice
    ledger = {c["tool"]: c for c in await api.tool_calls(session["id"])}
    assert ledger["refund_order"]["status"] == refund_status
    assert ledger["refund_order"]["attempts"] <= 1
    assert ledger["lookup_order"]["status"] == "succeeded"
    # Every tool call has exactly one audit row, crash or not.
    audited = await api.http.get(
        "/v1/audit",
        params={"session_id": session["id"], "action": "tool.call", "limit": 100},
        headers=api.headers,
    )
    calls = [item["payload"]["tool_use_id"] for item in audited.json()["items"]]
    assert sorted(calls) == sorted(c["tool_call_id"] for c in ledger.values())
    changes = await api.http.get(
        "/v1/audit",
        params={"session_id": session["id"], "action": "session.status"},
        headers=api.headers,
    )
    reaped = [i for i in changes.json()["items"] if i["payload"].get("reason") == "lease_expired"]
    assert len(reaped) == 1 and reaped[0]["actor"] == "reaper"
    events = await api.events(session["id"])
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert sum(e["type"] == "session.completed" for e in events) == 1
    requeued = [
        e
        for e in events
        if e["type"] == "session.queued" and e["data"].get("reason") == "lease_expired"
    ]
    assert len(requeued) == 1
    # The database and Redis outlived the killed worker.
    assert (await api.http.get("/readyz")).status_code == 200


async def test_idempotent_tool_is_re_run_after_a_crash(
    api: Api,
    context: AppContext,
    workers: list[WorkerProcess],
    database_url: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    crashing = _spawn(
        workers,
        database_url,
        redis_url,
        tmp_path,
        extra_env={
            "RUNTIME_CRASH_AT": "after_tool_effect:lookup_order",
            "RUNTIME_CRASH_ONCE_FILE": str(tmp_path / "crashed"),
        },
    )
    session = await api.start("support", {"order_id": "ord_1006", "amount": 2})
    await _wait_dead(crashing)
    _spawn(workers, database_url, redis_url, tmp_path)
    done = await api.wait(session["id"], within_seconds=30)
    assert done["status"] == "completed"
    ledger = {c["tool"]: c for c in await api.tool_calls(session["id"])}
    assert ledger["lookup_order"]["status"] == "succeeded"  # re-run, not reported unknown
    assert ledger["refund_order"]["status"] == "succeeded"
    assert await _refunds(context, session["id"]) == 1


async def test_worker_paused_past_its_lease_writes_nothing_after_takeover(
    api: Api,
    context: AppContext,
    workers: list[WorkerProcess],
    database_url: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    await api.create_agent(
        name="slow-refund",
        tools=["refund_order"],
        **script(
            {
                "text": "thinking hard",
                "delay_ms": 1500,
                "tool_use": [
                    {"name": "refund_order", "input": {"order_id": "ord_1008", "amount": 3}}
                ],
            },
            {"text": "done"},
        ),
    )
    first = _spawn(workers, database_url, redis_url, tmp_path)
    session = await api.start("slow-refund", "go")
    await api.wait(session["id"], until=("running",))
    await asyncio.sleep(0.3)  # inside the 1.5 s model call
    first.signal(signal.SIGSTOP)
    second = _spawn(workers, database_url, redis_url, tmp_path)
    done = await api.wait(session["id"], within_seconds=30)
    assert done["status"] == "completed"
    events_before_resume = await api.events(session["id"])
    first.signal(signal.SIGCONT)
    await asyncio.sleep(2.5)  # let the resumed worker finish its model call and try to write

    assert await _refunds(context, session["id"]) == 1
    events = await api.events(session["id"])
    assert events == events_before_resume  # the stale worker wrote nothing
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert "lease lost" in first.log()
    assert second.alive() and first.alive()


async def test_a_worker_killed_between_approval_and_execution_runs_the_call_exactly_once(
    api: Api,
    context: AppContext,
    workers: list[WorkerProcess],
    database_url: str,
    redis_url: str,
    tmp_path: Path,
    make_token: TokenFactory,
) -> None:
    crashing = _spawn(
        workers,
        database_url,
        redis_url,
        tmp_path,
        extra_env={
            "RUNTIME_CRASH_AT": "before_approved_tool:refund_order",
            "RUNTIME_CRASH_ONCE_FILE": str(tmp_path / "crashed"),
        },
    )
    # The demo agent's policy sends refunds over $100 to a reviewer.
    session = await api.start("support", {"order_id": "ord_1004", "amount": 250})
    await api.wait(session["id"], until=("awaiting_approval",), within_seconds=30)
    reviewer = bearer(make_token(api.tenant, sub="rita", roles=("reviewer",)))
    pending = await api.http.get(
        "/v1/approvals", params={"session_id": session["id"]}, headers=reviewer
    )
    [approval] = pending.json()["items"]
    decided = await api.http.post(
        f"/v1/approvals/{approval['id']}/decision", json={"decision": "approve"}, headers=reviewer
    )
    assert decided.status_code == 200, decided.text
    assert await _wait_dead(crashing) == -signal.SIGKILL  # claimed it, died before running it
    assert await _refunds(context, session["id"]) == 0

    _spawn(workers, database_url, redis_url, tmp_path)
    done = await api.wait(session["id"], within_seconds=30)
    assert done["status"] == "completed", done
    assert await _refunds(context, session["id"]) == 1  # exactly once
    ledger = {c["tool"]: c for c in await api.tool_calls(session["id"])}
    assert ledger["refund_order"]["status"] == "succeeded"
