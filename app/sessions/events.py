"""Event types of a session's append-only log (GET /v1/sessions/{id}/events and its SSE
stream). The database knows them as the enum `session_event_type` (migration 0016): a new
type needs a migration adding its value."""

from __future__ import annotations

from enum import StrEnum

from app.sessions.states import SessionStatus


class EventType(StrEnum):
    MODEL_RESPONSE = "model.response"
    TOOL_RESULT = "tool.result"
    PLATFORM_NOTE = "platform.note"  # what the platform told the model (loop warning, re-ask)
    USER_MESSAGE = "user.message"  # input that continues the conversation


def state_event(status: SessionStatus) -> str:
    """State changes are logged as `session.<status>`."""
    return f"session.{status.value}"


def stored_event_types() -> list[str]:
    """Every type a stored event may have (the values of `session_event_type`)."""
    return [state_event(status) for status in SessionStatus] + [t.value for t in EventType]


NOTIFY_CHANNEL = "agent_sessions"
