"""API models of tools: what an admin sends to register an HTTP tool, and what callers read.

A secret reference is accepted on the way in and never shown on the way out: views carry
`has_secret` only.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from jsonschema import Draft202012Validator, SchemaError
from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.tools.spec import SideEffect, ToolSpec

TOOL_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
SECRET_REF_PATTERN = r"^(env|file):.+$"

ToolName = Annotated[str, Field(pattern=TOOL_NAME_PATTERN, examples=["create_ticket"])]


class ToolCreate(BaseModel):
    """Register (or re-register, which replaces) an HTTP tool of the caller's tenant."""

    model_config = ConfigDict(extra="forbid")

    name: ToolName = Field(description="Unique in the tenant; may not shadow a built-in tool")
    description: str = Field(min_length=1, max_length=1024, description="Shown to the model")
    input_schema: dict[str, Any] = Field(
        description="JSON Schema (draft 2020-12) of the arguments; `type` must be `object`",
        examples=[{"type": "object", "properties": {"title": {"type": "string"}}}],
    )
    url: str = Field(
        min_length=1,
        max_length=2048,
        description="http(s) URL the platform POSTs the arguments to; private, loopback and "
        "link-local addresses are refused unless allow-listed",
    )
    timeout_seconds: float = Field(default=30.0, gt=0, le=120)
    idempotent: bool = Field(
        default=False, description="Safe to retry: transient failures are retried only if true"
    )
    side_effect: SideEffect = SideEffect.WRITE
    compensation: ToolName | None = Field(
        default=None, description="The tool that undoes this one, for workflow compensation"
    )
    secret_ref: str | None = Field(
        default=None,
        max_length=1024,
        pattern=SECRET_REF_PATTERN,
        description="Where the signing secret lives: `env:NAME` or `file:/path`; never echoed",
    )
    trusted: bool = Field(
        default=False, description="False: the output is wrapped as untrusted data for the model"
    )

    @field_validator("input_schema")
    @classmethod
    def _check_input_schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            where = "/".join(str(part) for part in exc.absolute_path) or "(root)"
            raise ValueError(f"not a valid JSON Schema at {where}: {exc.message}") from None
        if schema.get("type") != "object":
            raise ValueError('must describe an object: `"type": "object"` at the root')
        return schema


class ToolView(BaseModel):
    """A tool as callers see it: built-in (`builtin: true`, no URL) or a registered HTTP tool."""

    name: str
    description: str
    input_schema: dict[str, Any]
    timeout_seconds: float
    idempotent: bool
    side_effect: SideEffect
    compensation: str | None
    trusted: bool
    builtin: bool
    url: str | None = None
    has_secret: bool = False
    tool_id: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @classmethod
    def of(cls, spec: ToolSpec, **extra: Any) -> ToolView:
        """The view of `spec`; `extra` adds what only a registered tool has (url, ids...)."""
        return cls.model_validate({**spec.public_view(), **extra})


class ToolList(BaseModel):
    items: list[ToolView]
    next_cursor: str | None = None
