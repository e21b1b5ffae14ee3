"""Tool credentials per agent and tool (admin): store or rotate, list (never the value),
revoke — each for one agent only."""

from __future__ import annotations

from fastapi import Response, status
from pydantic import BaseModel, ConfigDict, Field

from app.agents import service as agents_service
from app.api.deps import AdminPrincipal, Context, DbSession, api_router
from app.credentials import service as credentials
from app.errors import NotFound, ValidationFailed

router = api_router(prefix="/v1/agents/{name}/credentials", tags=["agents"])


class CredentialWrite(BaseModel):
    model_config = ConfigDict(extra="forbid")
    secret: str = Field(min_length=1, max_length=8192, description="Never returned or logged")


class CredentialList(BaseModel):
    items: list[credentials.CredentialView]


@router.put(
    "/{tool}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Store or rotate the agent's credential for a tool (takes effect at its next call)",
)
async def put_credential(
    name: str,
    tool: str,
    body: CredentialWrite,
    principal: AdminPrincipal,
    db: DbSession,
    context: Context,
) -> Response:
    _agent, version = await agents_service.get_visible(db, principal.tenant, name)
    if tool not in version.definition.get("tools", []):
        raise ValidationFailed(f"agent {name} does not use tool `{tool}`")
    await context.tenants.ensure(db, principal.tenant)
    await credentials.put(
        db, context.credential_cipher, tenant_id=principal.tenant, agent=name, tool=tool,
        secret=body.secret, actor=f"user:{principal.sub}",
    )  # fmt: skip
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("", summary="Which tools the agent holds a credential for (never the values)")
async def list_credentials(name: str, principal: AdminPrincipal, db: DbSession) -> CredentialList:
    await agents_service.get_visible(db, principal.tenant, name)
    items = await credentials.list_for_agent(db, tenant_id=principal.tenant, agent=name)
    return CredentialList(items=items)


@router.delete(
    "/{tool}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Revoke the agent's credential for a tool (other agents keep theirs)",
)
async def revoke_credential(
    name: str, tool: str, principal: AdminPrincipal, db: DbSession
) -> Response:
    revoked = await credentials.revoke(
        db, tenant_id=principal.tenant, agent=name, tool=tool, actor=f"user:{principal.sub}"
    )
    if not revoked:
        raise NotFound(f"agent {name} holds no credential for `{tool}`")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
