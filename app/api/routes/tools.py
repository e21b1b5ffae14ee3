"""Tool routes: admins register HTTP tools; any role lists and reads tools of its tenant."""

from __future__ import annotations

from fastapi import status

from app.api.deps import AdminPrincipal, CurrentPrincipal, DbSession, SettingsDep, api_router
from app.tools import service as tools_service
from app.tools.registry import ToolRegistry
from app.tools.schemas import ToolCreate, ToolList, ToolView

router = api_router(prefix="/v1", tags=["tools"])

# The built-in tools are fixed at import time, so one registry serves every request.
registry = ToolRegistry()


@router.post(
    "/tools",
    status_code=status.HTTP_201_CREATED,
    summary="Register (or replace) an HTTP tool",
    responses={
        403: {"description": "The caller lacks the `admin` role"},
        409: {"description": "The name is a built-in tool's"},
        422: {"description": "Invalid body, input schema, or a URL the outbound guard refuses"},
    },
)
async def register_tool(
    body: ToolCreate, principal: AdminPrincipal, db: DbSession, settings: SettingsDep
) -> ToolView:
    return await tools_service.register_http_tool(
        db, principal.tenant, body, settings.outbound_allowlist, registry=registry
    )


@router.get("/tools", summary="Built-in tools and the tenant's HTTP tools")
async def list_tools(principal: CurrentPrincipal, db: DbSession) -> ToolList:
    return ToolList(items=await tools_service.list_tools(db, principal.tenant, registry))


@router.get(
    "/tools/{name}",
    summary="One tool, built-in or registered",
    responses={404: {"description": "No such tool in the caller's tenant"}},
)
async def get_tool(name: str, principal: CurrentPrincipal, db: DbSession) -> ToolView:
    return await tools_service.get_tool(db, principal.tenant, name, registry)
