"""Agents: admins write (every change a new immutable version); any role reads."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, Request, status
from pydantic import BaseModel

from app.agents import service as agents_service
from app.agents.schemas import AgentView, AgentWrite
from app.api.deps import AdminPrincipal, CurrentPrincipal, DbSession, api_router
from app.sessions import service as sessions_service

router = api_router(prefix="/v1/agents", tags=["agents"])


class AgentList(BaseModel):
    items: list[AgentView]
    next_cursor: str | None


@router.post(
    "", status_code=status.HTTP_201_CREATED, summary="Create or update an agent (new version)"
)
async def save_agent(
    body: AgentWrite, principal: AdminPrincipal, db: DbSession, request: Request
) -> AgentView:
    registry = request.app.state.context.tools
    agent_view, _ = await agents_service.save(
        db, registry, tenant_id=principal.tenant, body=body, created_by=principal.sub
    )
    if not agent_view.enabled:
        await sessions_service.cancel_for_disabled_agent(db, principal.tenant, agent_view.name)
    return agent_view


@router.get("", summary="Agents visible to the caller (its own and platform-wide)")
async def list_agents(
    principal: CurrentPrincipal,
    db: DbSession,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> AgentList:
    items, next_cursor = await agents_service.list_visible(
        db, principal.tenant, cursor=cursor, limit=limit
    )
    return AgentList(items=items, next_cursor=next_cursor)


@router.get("/{name}", summary="An agent's current version")
async def get_agent(name: str, principal: CurrentPrincipal, db: DbSession) -> AgentView:
    agent, version = await agents_service.get_visible(db, principal.tenant, name)
    return agents_service.view(agent, version)


@router.get("/{name}/versions/{version}", summary="One immutable version of an agent")
async def get_agent_version(
    name: str, version: int, principal: CurrentPrincipal, db: DbSession
) -> AgentView:
    return await agents_service.get_version(db, principal.tenant, name, version)
