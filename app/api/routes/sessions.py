"""Sessions: clients create and cancel; any role of the tenant reads."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Header, Query, Request, Response, status
from fastapi.responses import JSONResponse, StreamingResponse

from app.api import idempotency
from app.api.deps import (
    AdminPrincipal,
    ClientPrincipal,
    Context,
    CurrentPrincipal,
    Scope,
    api_router,
)
from app.errors import ValidationFailed
from app.sessions import service as sessions_service
from app.sessions.schemas import (
    SessionCreate,
    SessionList,
    SessionMessage,
    SessionView,
    ToolCallList,
)
from app.sessions.states import SessionStatus
from app.sessions.streaming import stream_events, wait_for_settled

router = api_router(prefix="/v1/sessions", tags=["sessions"])
CREATE_SCOPE = "POST /v1/sessions"
IDEMPOTENCY_KEY_PARAMETER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "The same key and body return the first answer; another body: 409",
}


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    # Declared because the route returns a JSONResponse (so a replay can answer verbatim).
    response_model=SessionView,
    summary="Start a session (queued; a worker runs it)",
    responses={409: {"description": "Idempotency-Key reused with another body, or agent disabled"}},
    openapi_extra={"parameters": [IDEMPOTENCY_KEY_PARAMETER]},
)
async def create_session(
    body: SessionCreate,
    principal: ClientPrincipal,
    scope: Scope,
    context: Context,
    request: Request,
) -> Response:
    # Read here rather than as a `Header()` parameter, which FastAPI resolves through a
    # pydantic field on every request (~6 % of a create's CPU); documented by openapi_extra.
    idempotency_key = request.headers.get("idempotency-key")
    if idempotency_key is not None:
        stored = await idempotency.claim_key(
            scope.db, principal.tenant, CREATE_SCOPE, idempotency_key, body.model_dump(mode="json")
        )
        if stored is not None:
            return JSONResponse(
                stored.body, status_code=stored.status_code, headers={"Idempotent-Replayed": "true"}
            )
    session = await sessions_service.create(
        scope,
        principal,
        body,
        allowlist=context.settings.outbound_allowlist,
        creator=context.session_creator,
    )
    if idempotency_key is None:  # straight to JSON text (no dict, no json.dumps)
        return Response(
            session.model_dump_json(),
            status_code=status.HTTP_202_ACCEPTED,
            media_type="application/json",
        )
    content = session.model_dump(mode="json")
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


@router.get("/{session_id}", summary="A session's status, result, usage (optionally long-polled)")
async def get_session(
    session_id: str,
    principal: CurrentPrincipal,
    scope: Scope,
    context: Context,
    wait_seconds: Annotated[
        float,
        Query(
            ge=0,
            le=60,
            description="Answer when the session finishes or waits on a reviewer or input, or after this long",
        ),
    ] = 0,
) -> SessionView:
    session = await sessions_service.get(scope, session_id)
    if wait_seconds <= 0 or session.status.is_terminal or session.status.is_waiting:
        return session

    async def settled() -> bool:
        scope.db.expire_all()
        current = await sessions_service.get(scope, session_id)
        return current.status.is_terminal or current.status.is_waiting

    await wait_for_settled(context.feed, session_id, wait_seconds, settled)
    scope.db.expire_all()
    return await sessions_service.get(scope, session_id)


@router.post(
    "/{session_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Cancel at the next safe point",
)
async def cancel_session(
    session_id: str, principal: ClientPrincipal, scope: Scope, context: Context
) -> SessionView:
    session = await sessions_service.cancel(scope, session_id)
    scope.db.info.setdefault("after_commit", []).append(lambda: context.feed.announce(session_id))
    return session


@router.post(
    "/{session_id}/messages",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Continue the conversation with new input (runs again with its full history)",
    responses={409: {"description": "A run is queued or in progress (and if_busy is reject)"}},
)
async def continue_session(
    session_id: str,
    body: SessionMessage,
    principal: ClientPrincipal,
    scope: Scope,
    context: Context,
) -> SessionView:
    session = await sessions_service.continue_session(scope, session_id, body)
    scope.db.info.setdefault("after_commit", []).append(lambda: context.feed.announce(session_id))
    return session


@router.delete(
    "/{session_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Erase a finished session and everything stored about it (admin)",
    responses={409: {"description": "The session is still running or waiting"}},
)
async def erase_session(session_id: str, principal: AdminPrincipal, scope: Scope) -> Response:
    await sessions_service.erase(scope, session_id, actor=f"user:{principal.sub}")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{session_id}/events",
    summary="The ordered event history; with `Accept: text/event-stream`, a live stream",
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def session_events(
    session_id: str,
    principal: CurrentPrincipal,
    scope: Scope,
    context: Context,
    request: Request,
    after: Annotated[int, Query(ge=0, description="Events after this id")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> Any:
    if "text/event-stream" not in request.headers.get("accept", ""):
        return await sessions_service.events(scope, session_id, after_id=after, limit=limit)
    session = await sessions_service.get(scope, session_id)  # 404 for another tenant's
    resume_after = after
    if last_event_id is not None:
        if not last_event_id.isdigit():
            raise ValidationFailed("Last-Event-ID must be an event id (a number)")
        resume_after = int(last_event_id)
    # The stream outlives this request's database session: release it now.
    await scope.db.commit()
    return StreamingResponse(
        stream_events(
            context.feed,
            session_id,
            after_seq=resume_after,
            session_finished=session.status.is_terminal,
            heartbeat_seconds=context.settings.api.sse_heartbeat_seconds,
        ),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/{session_id}/tool-calls", summary="The durable tool-call ledger")
async def session_tool_calls(
    session_id: str, principal: CurrentPrincipal, scope: Scope
) -> ToolCallList:
    return await sessions_service.tool_calls(scope, session_id)
