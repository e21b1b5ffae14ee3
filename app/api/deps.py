"""FastAPI dependencies, exposed as `Annotated` aliases that read as nouns.

All are `async def`: FastAPI runs a plain `def` dependency in a thread pool, which costs
more than the check itself.

The transaction boundary is here: every route is a `TransactionalRoute`, which commits the
request's session once when the route returns (before the response is sent) and rolls back
on any error, so a failed request leaves nothing half-written. `DbSession` hands that session
to whoever asks; a request that never asks, or asks and touches nothing, costs no commit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.routing import APIRoute
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


async def get_settings(request: Request) -> Settings:
    return _context_of(request).settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


_DB_KEY = "agent_platform.db"


class _RequestSession:
    """The request's session, made on first use."""

    def __init__(self, context: AppContext) -> None:
        self.context = context
        self.db: AsyncSession | None = None

    def get(self) -> AsyncSession:
        if self.db is None:
            self.db = self.context.session_factory()
        return self.db

    async def finish(self, failed: bool) -> None:
        db = self.db
        if db is None:
            return
        if db.in_transaction():
            try:
                await (db.rollback() if failed else db.commit())
            finally:
                await db.close()
        elif db.identity_map:  # the route committed on its own: let go of what it loaded
            await db.close()
        # (a session never used holds nothing: its commit and close would cost two greenlet
        # switches each, for nothing)
        if not failed:
            for callback in db.info.pop("after_commit", []):
                callback()


class TransactionalRoute(APIRoute):
    """A route whose request's session (`DbSession`) commits once when the route returns —
    before the response is sent: a client never gets a 2xx for a row that is not committed
    yet — and rolls back on any error. (A generator dependency would do the same at about
    a tenth of a create's CPU: FastAPI runs its exit in an exit stack under a shielded
    cancel scope.)"""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def in_transaction(request: Request) -> Response:
            session = request.scope[_DB_KEY] = _RequestSession(_context_of(request))
            try:
                response = await handler(request)
            except BaseException:
                await session.finish(failed=True)
                raise
            await session.finish(failed=False)
            return response

        return in_transaction


def api_router(**options: Any) -> APIRouter:
    """An `APIRouter` of `TransactionalRoute`s (every router of the API is one)."""
    return APIRouter(route_class=TransactionalRoute, **options)


# Every dependency here is a leaf (it takes only the request and the response): FastAPI walks
# every sub-dependency of every dependency on each request, cached or not, at a cost that
# was a third of a create's CPU with the nested graph. What one dependency needs of another
# (the session, the caller) it reads from the request, where the first to need it left it.
def _request_session(request: Request) -> _RequestSession:
    session: _RequestSession | None = request.scope.get(_DB_KEY)
    if session is None:  # a route not made by `api_router`: its writes would never commit
        raise RuntimeError(f"{request.url.path}: DbSession needs a TransactionalRoute")
    return session


async def get_db(request: Request) -> AsyncSession:
    return _request_session(request).get()


DbSession = Annotated[AsyncSession, Depends(get_db)]


def _bearer_token(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise Unauthorized("missing Authorization header (expected `Bearer <JWT>`)")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization header must be `Bearer <JWT>`")
    return token.strip()


_PRINCIPAL_KEY = "agent_platform.principal"


async def get_principal(request: Request, response: Response) -> Principal:
    """The authenticated caller: token verified, rate limits counted, tenant ensured — once
    per request, however many dependencies ask."""
    principal: Principal | None = request.scope.get(_PRINCIPAL_KEY)
    if principal is not None:
        return principal
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
    tenant = principal.tenant
    if not context.tenants.knows(tenant):
        db = _request_session(request).get()
        await context.tenants.ensure(db, tenant)
        db.info.setdefault("after_commit", []).append(lambda: context.tenants.remember(tenant))
    request.scope[_PRINCIPAL_KEY] = principal
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


def require_role(role: Role) -> Callable[[Request, Response], Awaitable[Principal]]:
    async def check(request: Request, response: Response) -> Principal:
        principal = await get_principal(request, response)
        # An admin may do anything a client or reviewer may.
        if not (principal.has_role(role) or principal.has_role(Role.ADMIN)):
            raise Forbidden(f"this action needs the `{role.value}` role")
        return principal

    return check


ClientPrincipal = Annotated[Principal, Depends(require_role(Role.CLIENT))]
ReviewerPrincipal = Annotated[Principal, Depends(require_role(Role.REVIEWER))]
AdminPrincipal = Annotated[Principal, Depends(require_role(Role.ADMIN))]


async def get_tenant_scope(request: Request, response: Response) -> TenantScope:
    principal = await get_principal(request, response)
    # The session is made when the scope is first queried: a create that goes through the
    # batch never is (making one was ~3 % of a create's CPU).
    return TenantScope(_request_session(request).get, principal.tenant)


Scope = Annotated[TenantScope, Depends(get_tenant_scope)]
