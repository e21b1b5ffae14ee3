"""Session API models (API.md "Sessions")."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import to_json

from app.agents.schemas import NAME_PATTERN
from app.sessions.states import SessionStatus

MAX_INPUT_BYTES = 256 * 1024


def text_or_object(value: Any) -> Any:
    """One error naming `input`, rather than one per union member (`input.str`, ...)."""
    if not isinstance(value, str | dict):
        raise ValueError("input must be text or a JSON object")
    return value


def json_size(value: Any) -> int:
    """Bytes of `value` as compact UTF-8 JSON (pydantic's encoder: an eighth of `json.dumps`'s
    time on a request's small objects)."""
    return len(to_json(value))


def input_within_limits(value: str | dict[str, Any]) -> str | dict[str, Any]:
    size = len(value.encode()) if isinstance(value, str) else json_size(value)
    if size > MAX_INPUT_BYTES:
        raise ValueError(f"input is {size} bytes; the limit is {MAX_INPUT_BYTES}")
    if isinstance(value, str) and not value.strip():
        raise ValueError("input must not be empty")
    return value


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent: str = Field(pattern=NAME_PATTERN, description="Agent name")
    version: int | None = Field(default=None, ge=1, description="Agent version; default latest")
    input: str | dict[str, Any] = Field(description="Text, or an object the agent's script reads")
    metadata: dict[str, Any] = Field(default_factory=dict)
    priority: int = Field(default=0, ge=-100, le=100, description="Higher runs first")
    webhook_url: str | None = Field(default=None, max_length=2048)
    subject: str | None = Field(default=None, max_length=256, description="For experiments")

    _input_is_text_or_object = field_validator("input", mode="before")(text_or_object)
    _input_fits = field_validator("input")(input_within_limits)

    @field_validator("metadata")
    @classmethod
    def _metadata_size(cls, value: dict[str, Any]) -> dict[str, Any]:
        if json_size(value) > 16 * 1024:
            raise ValueError("metadata is limited to 16 KiB")
        return value


class SessionError(BaseModel):
    code: str
    message: str


class Usage(BaseModel):
    input_tokens: int
    output_tokens: int
    cost_usd: float


class SessionView(BaseModel):
    id: str
    agent: str | None
    agent_version: int | None
    status: SessionStatus
    input: Any
    result: Any
    error: SessionError | None
    turns: int
    usage: Usage
    priority: int
    metadata: dict[str, Any]
    parent_id: str | None
    trace_id: str | None
    cancel_requested: bool
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


class SessionList(BaseModel):
    items: list[SessionView]
    next_cursor: str | None


class EventView(BaseModel):
    id: int
    seq: int
    type: str
    data: dict[str, Any]
    created_at: datetime


class EventList(BaseModel):
    items: list[EventView]
    next_cursor: str | None


ToolCallStatus = Literal[
    "started", "succeeded", "failed", "unknown", "denied", "awaiting_approval", "cancelled"
]


class ToolCallView(BaseModel):
    tool_call_id: str
    turn: int
    tool: str
    arguments: dict[str, Any]
    status: ToolCallStatus
    attempts: int
    idempotent: bool
    result_preview: str | None
    error: str | None
    started_at: datetime
    finished_at: datetime | None


class ToolCallList(BaseModel):
    items: list[ToolCallView]


class SessionMessage(BaseModel):
    """POST /v1/sessions/{id}/messages: new user input for a finished or waiting session."""

    model_config = ConfigDict(extra="forbid")

    input: str | dict[str, Any] = Field(description="Text, or an object the agent's script reads")
    if_busy: Literal["reject", "queue"] = Field(
        default="reject",
        description="While a run is queued or in progress: 409 (`reject`), or run it after (`queue`)",
    )

    _input_is_text_or_object = field_validator("input", mode="before")(text_or_object)
    _input_fits = field_validator("input")(input_within_limits)
