"""Tool registration and look-up for the API: built-in tools plus a tenant's HTTP tools.

Rules: an HTTP tool may not take a built-in tool's name (409); registering a name the
tenant already has replaces that tool (same `tool_id`); a URL the outbound guard refuses
is a 422 on `url`; another tenant's tool does not exist (404). Flushes, never commits.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import func
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.ids import new_id
from app.errors import Conflict
from app.tenants.scoping import TenantScope
from app.tools import outbound
from app.tools.http import spec_from_definition
from app.tools.models import ToolDefinition
from app.tools.registry import ToolRegistry
from app.tools.schemas import ToolCreate, ToolView

_DEFAULT_REGISTRY = ToolRegistry()


def _view_of_row(row: ToolDefinition) -> ToolView:
    return ToolView.of(
        spec_from_definition(row),
        url=row.definition["url"],
        has_secret=row.secret_ref is not None,
        tool_id=row.tool_id,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


async def register_http_tool(
    db: AsyncSession,
    tenant_id: str,
    body: ToolCreate,
    allowlist: Iterable[str],
    *,
    registry: ToolRegistry = _DEFAULT_REGISTRY,
) -> ToolView:
    """Create or replace the tenant's HTTP tool `body.name`, after checking its URL."""
    if body.name in registry.builtin_names:
        raise Conflict(f"tool {body.name} is a built-in tool; choose another name")
    try:
        await outbound.resolve_and_check(body.url, allowlist)
    except outbound.OutboundAddressRefused as exc:
        raise type(exc)(
            exc.detail,
            errors=[{"field": "url", "location": "body", "message": exc.detail, "type": exc.code}],
        ) from exc
    definition = body.model_dump(mode="json", exclude={"name", "secret_ref"})
    statement = (
        insert(ToolDefinition)
        .values(
            tool_id=new_id("tool"),
            tenant_id=tenant_id,
            name=body.name,
            definition=definition,
            secret_ref=body.secret_ref,
        )
        .on_conflict_do_update(
            index_elements=[ToolDefinition.tenant_id, ToolDefinition.name],
            set_={
                "definition": definition,
                "secret_ref": body.secret_ref,
                "updated_at": func.now(),
            },
        )
        .returning(ToolDefinition)
        .execution_options(populate_existing=True)
    )
    row = (await db.execute(statement)).scalar_one()
    return _view_of_row(row)


async def list_tools(db: AsyncSession, tenant_id: str, registry: ToolRegistry) -> list[ToolView]:
    """Built-in tools by name, then the tenant's HTTP tools by name (one a built-in shadows
    — a plugin added after registration — is left out, as the registry would not run it)."""
    builtins = sorted(registry.builtin_names)
    views = [ToolView.of(spec) for name in builtins if (spec := registry.builtin(name))]
    rows = await db.execute(
        TenantScope(db, tenant_id).select(ToolDefinition).order_by(ToolDefinition.name)
    )
    views.extend(
        _view_of_row(row) for row in rows.scalars() if row.name not in registry.builtin_names
    )
    return views


async def get_tool(db: AsyncSession, tenant_id: str, name: str, registry: ToolRegistry) -> ToolView:
    """The built-in tool or the tenant's HTTP tool called `name`, or NotFound."""
    spec = registry.builtin(name)
    if spec is not None:
        return ToolView.of(spec)
    row = await TenantScope(db, tenant_id).get(
        ToolDefinition, ToolDefinition.name, name, what="tool"
    )
    return _view_of_row(row)
