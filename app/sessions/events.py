"""Event types of a session's append-only log (GET /v1/sessions/{id}/events, SSE later)."""

from __future__ import annotations

from enum import StrEnum

from app.sessions.states import SessionStatus


class EventType(StrEnum):
    MODEL_RESPONSE = "model.response"
    TOOL_RESULT = "tool.result"
    PLATFORM_NOTE = "platform.note"  # what the platform told the model (loop warning, re-ask)


def state_event(status: SessionStatus) -> str:
    """State changes are logged as `session.<status>`."""
    return f"session.{status.value}"


NOTIFY_CHANNEL = "agent_sessions"
