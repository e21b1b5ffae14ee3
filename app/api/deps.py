"""FastAPI dependencies, exposed as `Annotated` aliases that read as nouns.

All are `async def`: FastAPI runs a plain `def` dependency in a thread pool, which costs
more than the check itself.

The transaction boundary is here: `DbSession` commits once when the route returns and rolls
back on any error, so a failed request leaves nothing half-written.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.auth import Principal, Role
from app.api.context import AppContext
from app.errors import Forbidden, Unauthorized
from app.settings import Settings
from app.tenants.scoping import TenantScope


def _context_of(request: Request) -> AppContext:
    context: AppContext = request.app.state.context
    return context


async def get_context(request: Request) -> AppContext:
    return _context_of(request)


Context = Annotated[AppContext, Depends(get_context)]


async def get_settings(context: Context) -> Settings:
    return context.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


# `get_db` and `get_principal` read the context from the request rather than through the
# `Context` dependency: FastAPI walks every sub-dependency of every dependency on each
# request, cached or not, and these two sit under every route.
async def get_db(request: Request) -> AsyncIterator[AsyncSession]:
    db = _context_of(request).session_factory()
    try:
        yield db
    except BaseException:
        try:
            await db.rollback()
        finally:
            await db.close()
        raise
    # Commit and close cost two greenlet switches each: a request that did not touch the
    # database (a create that went through the batch, say) skips them.
    if db.in_transaction():
        try:
            await db.commit()
        finally:
            await db.close()
    elif db.identity_map:  # the route committed on its own: let go of what it loaded
        await db.close()
    for callback in db.info.pop("after_commit", []):
        callback()


# scope="function": commit when the route returns, before the response is sent — a client
# never gets a 2xx for a row that is not committed yet.
DbSession = Annotated[AsyncSession, Depends(get_db, scope="function")]


def _bearer_token(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise Unauthorized("missing Authorization header (expected `Bearer <JWT>`)")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization header must be `Bearer <JWT>`")
    return token.strip()


async def get_principal(request: Request, response: Response, db: DbSession) -> Principal:
    """The authenticated caller: token verified, rate limits counted, tenant ensured."""
    context = _context_of(request)
    token = _bearer_token(request)
    if context.token_verifier.needs_network:
        from anyio import to_thread

        principal = await to_thread.run_sync(context.token_verifier.verify, token)
    else:
        principal = context.token_verifier.verify(token)
    if context.rate_limiter.enabled:
        state = await context.rate_limiter.check(principal.tenant, principal.sub)
        response.headers.update(state.headers())
    await context.tenants.ensure(db, principal.tenant)
    db.info.setdefault("after_commit", []).append(
        lambda: context.tenants.remember(principal.tenant)
    )
    request.state.principal = principal
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


def require_role(role: Role) -> Callable[[Principal], Awaitable[Principal]]:
    async def check(principal: CurrentPrincipal) -> Principal:
        # An admin may do anything a client or reviewer may.
        if not (principal.has_role(role) or principal.has_role(Role.ADMIN)):
            raise Forbidden(f"this action needs the `{role.value}` role")
        return principal

    return check


ClientPrincipal = Annotated[Principal, Depends(require_role(Role.CLIENT))]
ReviewerPrincipal = Annotated[Principal, Depends(require_role(Role.REVIEWER))]
AdminPrincipal = Annotated[Principal, Depends(require_role(Role.ADMIN))]


async def get_tenant_scope(principal: CurrentPrincipal, db: DbSession) -> TenantScope:
    return TenantScope(db, principal.tenant)


Scope = Annotated[TenantScope, Depends(get_tenant_scope)]
