"""Usage (admin): tokens and cost per agent and for the tenant over a time range."""

from __future__ import annotations

from datetime import datetime

from app.api.deps import AdminPrincipal, Scope, api_router
from app.errors import ValidationFailed
from app.sessions import usage

router = api_router(prefix="/v1/usage", tags=["usage"])


@router.get("", summary="Tokens and cost of sessions created in [since, until), per agent")
async def get_usage(
    _principal: AdminPrincipal,
    scope: Scope,
    since: datetime | None = None,
    until: datetime | None = None,
) -> usage.UsageReport:
    if since is not None and until is not None and since >= until:
        raise ValidationFailed("`since` must be before `until`")
    return await usage.report(scope, since=since, until=until)
