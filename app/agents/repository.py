"""All SQL for agents. An agent is visible to a tenant if it is the tenant's own or a
platform agent (tenant_id NULL); the tenant's own wins on a name clash."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.agents.models import Agent, AgentVersion
from app.db.ids import new_id


async def find_visible(
    db: AsyncSession, tenant_id: str, name: str, *, share_lock: bool = False
) -> Agent | None:
    """The agent `name` as `tenant_id` sees it. With `share_lock` its row is read `FOR SHARE`
    until commit: a writer changing it (the kill switch) waits for this transaction, and this
    read waits for a writer's commit and then sees the new row."""
    statement = (
        select(Agent)
        .where(Agent.name == name, or_(Agent.tenant_id == tenant_id, Agent.tenant_id.is_(None)))
        .order_by(Agent.tenant_id.is_(None))  # the tenant's own first
        .limit(1)
    )
    if share_lock:
        statement = statement.with_for_update(read=True).execution_options(populate_existing=True)
    return (await db.execute(statement)).scalar_one_or_none()


async def lock_name(db: AsyncSession, tenant_id: str | None, name: str) -> None:
    """Serialise writers of one agent name (also its first creation) until commit."""
    await db.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
        {"key": f"agent:{tenant_id or '*'}:{name}"},
    )


async def find_owned(
    db: AsyncSession, tenant_id: str | None, name: str, *, lock: bool = False
) -> Agent | None:
    owner = Agent.tenant_id.is_(None) if tenant_id is None else Agent.tenant_id == tenant_id
    statement = select(Agent).where(Agent.name == name, owner)
    if lock:
        statement = statement.with_for_update()
    return (await db.execute(statement)).scalar_one_or_none()


async def list_visible(
    db: AsyncSession, tenant_id: str, *, after_name: str | None, limit: int
) -> list[Agent]:
    statement = (
        select(Agent)
        .where(or_(Agent.tenant_id == tenant_id, Agent.tenant_id.is_(None)))
        .order_by(Agent.name, Agent.tenant_id.is_(None))
    )
    if after_name is not None:
        statement = statement.where(Agent.name > after_name)
    agents: list[Agent] = []
    for agent in (await db.execute(statement.limit(limit * 2 + 1))).scalars():
        if agents and agents[-1].name == agent.name:
            continue  # shadowed platform agent
        agents.append(agent)
    return agents[: limit + 1]


async def get_version(db: AsyncSession, agent_id: str, version: int) -> AgentVersion | None:
    return await db.get(AgentVersion, (agent_id, version))


async def insert_agent(db: AsyncSession, tenant_id: str | None, name: str, enabled: bool) -> Agent:
    agent = Agent(
        agent_id=new_id("agt"), tenant_id=tenant_id, name=name, latest_version=0, enabled=enabled
    )
    db.add(agent)
    await db.flush()
    return agent


async def insert_version(
    db: AsyncSession, agent: Agent, definition: dict[str, Any], created_by: str | None
) -> AgentVersion:
    version = AgentVersion(
        agent_id=agent.agent_id,
        version=agent.latest_version,
        definition=definition,
        created_by=created_by,
    )
    db.add(version)
    await db.flush()
    return version


async def bump_version(
    db: AsyncSession, agent: Agent, *, expected: int | None, enabled: bool
) -> bool:
    """Move the agent to its next version; False if `expected` is stale (someone else moved it)."""
    statement = (
        update(Agent)
        .where(Agent.agent_id == agent.agent_id)
        .values(latest_version=Agent.latest_version + 1, enabled=enabled, updated_at=func.now())
        .returning(Agent.latest_version, Agent.updated_at)
    )
    if expected is not None:
        statement = statement.where(Agent.latest_version == expected)
    row = (await db.execute(statement)).one_or_none()
    if row is None:
        return False
    agent.latest_version, agent.updated_at = row
    agent.enabled = enabled
    return True


@dataclass(frozen=True)
class AgentForSession:
    agent_id: str
    name: str
    enabled: bool
    version: int
    deadline_seconds: float


def for_new_session_sql(tenant_id: str, name: str, version: str) -> str:
    """SQL selecting the agent a new session of `name` runs, as `tenant_id` sees it (its
    own first, else the platform's), at `version` or its current version when that is NULL
    (the arguments: SQL expressions, e.g. parameters), its row read `FOR SHARE` until
    commit. Columns: agent_id, name, enabled, version, deadline_seconds — only what a new
    session needs, not the whole definition. `app.sessions.transitions` inserts from it."""
    return f"""
    SELECT a.agent_id, a.name, a.enabled, v.version,
           CAST(v.definition->'limits'->>'deadline_seconds' AS double precision) AS deadline_seconds
    FROM agents a
    JOIN agent_versions v ON v.agent_id = a.agent_id
        AND v.version = COALESCE({version}, a.latest_version)
    WHERE a.name = {name} AND (a.tenant_id = {tenant_id} OR a.tenant_id IS NULL)
    ORDER BY a.tenant_id IS NULL
    LIMIT 1
    FOR SHARE OF a
    """


_FOR_SESSION = text(for_new_session_sql(":tenant_id", ":name", "CAST(:version AS integer)"))


async def for_new_session(
    db: AsyncSession, tenant_id: str, name: str, version: int | None
) -> AgentForSession | None:
    """The agent a new session will run (its current or the requested version), in one round
    trip, its row read `FOR SHARE` until commit so the kill switch cannot miss the session
    (a disable waits for this transaction, or this read waits for the disable)."""
    parameters = {"tenant_id": tenant_id, "name": name, "version": version}
    row = (await db.execute(_FOR_SESSION, parameters)).one_or_none()
    if row is None:
        # If we waited on the share lock for an update (a new version), the row came back
        # re-checked but the join still saw the old snapshot: a second read sees the new one.
        row = (await db.execute(_FOR_SESSION, parameters)).one_or_none()
    if row is None:
        return None
    return AgentForSession(row.agent_id, row.name, row.enabled, row.version, row.deadline_seconds)
