"""An agent definition as API callers and YAML files write it (API.md "Agents")."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.hitl.schemas import Gate
from app.policy.rules import PolicySpec

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_turns: int = Field(default=25, ge=1, le=500, description="Model turns per run")
    max_tokens: int = Field(default=4096, ge=1, le=128_000, description="max_tokens per model call")
    max_tokens_total: int | None = Field(default=None, ge=1, description="Token budget per session")
    max_cost_usd: float | None = Field(default=None, gt=0, description="Cost budget per session")
    deadline_seconds: float = Field(
        default=900, gt=0, le=7 * 24 * 3600, description="Wall clock per session"
    )
    max_output_retries: int = Field(
        default=2, ge=0, le=10, description="Re-asks when the final answer fails output_schema"
    )


class OfflineTurn(BaseModel):
    """One scripted model turn of the `offline` model."""

    model_config = ConfigDict(extra="forbid")

    tool_use: list[dict[str, Any]] = Field(default_factory=list)
    text: str | None = None
    confidence: float | None = Field(default=None, ge=0, le=1)
    delay_ms: int = Field(default=0, ge=0, le=600_000)

    @field_validator("tool_use")
    @classmethod
    def _calls_have_name_and_input(cls, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for index, call in enumerate(calls):
            if not isinstance(call.get("name"), str):
                raise ValueError(f"tool_use[{index}] needs a `name`")
            if not isinstance(call.get("input", {}), dict):
                raise ValueError(f"tool_use[{index}].input must be an object")
        return calls


class OfflineScript(BaseModel):
    model_config = ConfigDict(extra="forbid")

    script: list[OfflineTurn] = Field(default_factory=list, max_length=1000)


class UntrustedContent(StrEnum):
    FLAG = "flag"
    REQUIRE_APPROVAL_WHEN_FLAGGED = "require_approval_when_flagged"
    REQUIRE_APPROVAL = "require_approval"


class AgentDefinition(BaseModel):
    """Everything that defines an agent. Every change of it is a new immutable version."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    description: str = Field(default="", max_length=4000)
    model: str = Field(default="offline", min_length=1, max_length=128)
    fallback_models: list[str] = Field(default_factory=list, max_length=5)
    cache_responses: bool = Field(
        default=False,
        description="Answer an identical request from the response cache (opt in when the "
        "agent's requests are deterministic: same request, same acceptable answer)",
    )
    prompt_caching: bool = Field(
        default=False, description="Mark the system prompt and tools with cache_control"
    )
    system_prompt: str = Field(default="You are a helpful agent.", max_length=100_000)
    tools: list[str] = Field(default_factory=list, max_length=128)
    limits: Limits = Field(default_factory=Limits)
    output_schema: dict[str, Any] | None = None
    policy: PolicySpec = Field(
        default_factory=PolicySpec,
        description="Ordered rules, limits, read-only mode; deny by default (API.md policy)",
    )
    gates: dict[str, Gate] = Field(default_factory=dict, description="Human gates per tool")
    untrusted_content: UntrustedContent = UntrustedContent.FLAG
    memory: dict[str, Any] = Field(default_factory=dict)
    variants: list[dict[str, Any]] = Field(default_factory=list)
    enabled: bool = True
    offline: OfflineScript | None = None

    @field_validator("tools")
    @classmethod
    def _unique_tools(cls, tools: list[str]) -> list[str]:
        duplicates = sorted({name for name in tools if tools.count(name) > 1})
        if duplicates:
            raise ValueError(f"listed more than once: {', '.join(duplicates)}")
        return tools

    @field_validator("output_schema")
    @classmethod
    def _valid_json_schema(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is not None:
            try:
                jsonschema.Draft202012Validator.check_schema(schema)
            except jsonschema.SchemaError as exc:
                raise ValueError(f"not a valid JSON Schema: {exc.message}") from exc
        return schema

    @model_validator(mode="after")
    def _offline_needs_script(self) -> AgentDefinition:
        if self.model != "offline" and self.offline is not None:
            raise ValueError("`offline` (a script) is only for model `offline`")
        return self


class AgentWrite(AgentDefinition):
    """POST /v1/agents body: a definition, plus `expected_version` for safe updates."""

    expected_version: int | None = Field(
        default=None, ge=1, description="Refuse (409) unless the agent is at this version"
    )

    def definition(self) -> AgentDefinition:
        return AgentDefinition.model_validate(self.model_dump(exclude={"expected_version"}))


class AgentView(BaseModel):
    name: str
    version: int
    scope: Literal["tenant", "platform"]
    enabled: bool
    definition: AgentDefinition
    created_at: datetime
    updated_at: datetime
