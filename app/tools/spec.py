"""What a tool is: name, description, input schema, executor, and how it may be run."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Any

import jsonschema
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker


class SideEffect(StrEnum):
    READ = "read"
    WRITE = "write"
    DESTRUCTIVE = "destructive"


@dataclass(frozen=True)
class ToolContext:
    """What an executor may use. Credentials are injected here, never shown to the model."""

    tenant_id: str
    session_id: str
    tool_use_id: str
    session_factory: async_sessionmaker[AsyncSession]
    idempotency_key: str
    secrets: dict[str, str] = field(default_factory=dict)


Executor = Callable[[dict[str, Any], ToolContext], Awaitable[Any]]


@dataclass(frozen=True)
class RetryPolicy:
    """Retries for transient errors — applied only to idempotent tools."""

    max_attempts: int = 3
    base_delay_seconds: float = 0.2
    max_delay_seconds: float = 5.0


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    input_schema: dict[str, Any]
    executor: Executor
    input_model: type[BaseModel] | None = None
    timeout_seconds: float = 30.0
    idempotent: bool = False
    side_effect: SideEffect = SideEffect.READ
    retry: RetryPolicy = RetryPolicy()
    max_output_bytes: int = 16_384
    trusted: bool = False
    # Calls carry the calling agent's stored credential for this tool, if it has one
    # (`context.secrets["credential"]`; HTTP tools send it as a bearer token).
    accepts_credential: bool = False
    compensation: str | None = None
    builtin: bool = True

    @cached_property
    def input_validator(self) -> Any:
        """`input_schema` compiled once (`jsonschema.validate` re-checks a schema against its
        meta-schema on every call, which cost more than the rest of a turn)."""
        return jsonschema.validators.validator_for(self.input_schema)(self.input_schema)

    def model_view(self) -> dict[str, Any]:
        """The tool as the model sees it (Anthropic `tools` entry)."""
        return {
            "name": self.name,
            "description": self.description,
            "input_schema": self.input_schema,
        }

    def public_view(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "input_schema": self.input_schema,
            "timeout_seconds": self.timeout_seconds,
            "idempotent": self.idempotent,
            "side_effect": self.side_effect.value,
            "compensation": self.compensation,
            "trusted": self.trusted,
            "builtin": self.builtin,
        }


class TransientToolError(Exception):
    """Raised by an executor for a failure worth retrying (idempotent tools only)."""


class ToolOutcomeUnknown(TransientToolError):
    """The request may have reached its target before failing (e.g. the connection dropped
    after it was sent): a non-idempotent tool's outcome is then unknown, not failed."""


class ToolInputError(Exception):
    """The model's arguments do not fit the tool's schema; the message goes back to it."""
