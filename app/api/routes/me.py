from __future__ import annotations

from pydantic import BaseModel

from app.api.auth import Role
from app.api.deps import CurrentPrincipal, api_router

router = api_router(prefix="/v1", tags=["caller"])


class MeResponse(BaseModel):
    sub: str
    tenant: str
    roles: list[Role]


@router.get("/me", summary="The caller's principal, from its token")
async def me(principal: CurrentPrincipal) -> MeResponse:
    return MeResponse(sub=principal.sub, tenant=principal.tenant, roles=sorted(principal.roles))
