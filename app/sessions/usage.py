"""Token and cost usage per agent and for the tenant, summed from the sessions (each model
call's usage and cost is persisted on its event and added to its session's totals)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel
from sqlalchemy import func, select

from app.sessions.models import Session
from app.tenants.scoping import TenantScope


class UsageTotals(BaseModel):
    sessions: int
    turns: int
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal


class AgentUsage(UsageTotals):
    agent: str | None  # None: sessions of a workflow


class UsageReport(BaseModel):
    since: datetime | None
    until: datetime | None
    tenant: UsageTotals
    agents: list[AgentUsage]


async def report(
    scope: TenantScope, *, since: datetime | None, until: datetime | None
) -> UsageReport:
    """Sessions created in [since, until), per agent and in total."""
    query = select(
        Session.agent_name,
        func.count(),
        func.coalesce(func.sum(Session.turns), 0),
        func.coalesce(func.sum(Session.input_tokens), 0),
        func.coalesce(func.sum(Session.output_tokens), 0),
        func.coalesce(func.sum(Session.cost_usd), 0),
    ).where(Session.tenant_id == scope.tenant_id)
    if since is not None:
        query = query.where(Session.created_at >= since)
    if until is not None:
        query = query.where(Session.created_at < until)
    rows = (
        await scope.db.execute(query.group_by(Session.agent_name).order_by(Session.agent_name))
    ).all()
    agents = [
        AgentUsage(
            agent=name,
            sessions=n,
            turns=turns,
            input_tokens=tokens_in,
            output_tokens=tokens_out,
            cost_usd=Decimal(cost),
        )
        for name, n, turns, tokens_in, tokens_out, cost in rows
    ]
    tenant = UsageTotals(
        sessions=sum(a.sessions for a in agents),
        turns=sum(a.turns for a in agents),
        input_tokens=sum(a.input_tokens for a in agents),
        output_tokens=sum(a.output_tokens for a in agents),
        cost_usd=sum((a.cost_usd for a in agents), Decimal(0)),
    )
    return UsageReport(since=since, until=until, tenant=tenant, agents=agents)
