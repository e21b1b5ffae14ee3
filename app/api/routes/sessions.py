"""Sessions: clients create and cancel; any role of the tenant reads."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, status
from fastapi.responses import JSONResponse

from app.api import idempotency
from app.api.deps import ClientPrincipal, CurrentPrincipal, Scope
from app.sessions import service as sessions_service
from app.sessions.schemas import EventList, SessionCreate, SessionList, SessionView, ToolCallList
from app.sessions.states import SessionStatus

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])
CREATE_SCOPE = "POST /v1/sessions"


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    # Declared because the route returns a JSONResponse (so a replay can answer verbatim).
    response_model=SessionView,
    summary="Start a session (queued; a worker runs it)",
    responses={409: {"description": "Idempotency-Key reused with another body, or agent disabled"}},
)
async def create_session(
    body: SessionCreate,
    principal: ClientPrincipal,
    scope: Scope,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JSONResponse:
    if idempotency_key is not None:
        stored = await idempotency.claim_key(
            scope.db, principal.tenant, CREATE_SCOPE, idempotency_key, body.model_dump(mode="json")
        )
        if stored is not None:
            return JSONResponse(
                stored.body, status_code=stored.status_code, headers={"Idempotent-Replayed": "true"}
            )
    session = await sessions_service.create(scope, principal, body)
    content = session.model_dump(mode="json")
    if idempotency_key is not None:
        await idempotency.store(
            scope.db, principal.tenant, CREATE_SCOPE, idempotency_key, 202, content, session.id
        )
    return JSONResponse(content, status_code=status.HTTP_202_ACCEPTED)


@router.get("", summary="The tenant's sessions, newest first")
async def list_sessions(
    principal: CurrentPrincipal,
    scope: Scope,
    status_filter: Annotated[SessionStatus | None, Query(alias="status")] = None,
    agent: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> SessionList:
    return await sessions_service.list_sessions(
        scope, status=status_filter, agent=agent, cursor=cursor, limit=limit
    )


@router.get("/{session_id}", summary="A session's status, result, usage")
async def get_session(session_id: str, principal: CurrentPrincipal, scope: Scope) -> SessionView:
    return await sessions_service.get(scope, session_id)


@router.post(
    "/{session_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Cancel at the next safe point",
)
async def cancel_session(session_id: str, principal: ClientPrincipal, scope: Scope) -> SessionView:
    return await sessions_service.cancel(scope, session_id)


@router.get("/{session_id}/events", summary="The ordered event history")
async def session_events(
    session_id: str,
    principal: CurrentPrincipal,
    scope: Scope,
    after: Annotated[int, Query(ge=0, description="Events after this id")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
) -> EventList:
    return await sessions_service.events(scope, session_id, after_id=after, limit=limit)


@router.get("/{session_id}/tool-calls", summary="The durable tool-call ledger")
async def session_tool_calls(
    session_id: str, principal: CurrentPrincipal, scope: Scope
) -> ToolCallList:
    return await sessions_service.tool_calls(scope, session_id)
