"""Agent definitions: create, update (new immutable version, optimistic concurrency),
read, list, the kill switch, and loading the YAML folder at start-up."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.agents import repository
from app.agents.errors import AgentNotFound, AgentVersionConflict
from app.agents.models import Agent, AgentVersion
from app.agents.schemas import AgentDefinition, AgentView, AgentWrite
from app.errors import ValidationFailed
from app.observability import audit
from app.observability.audit import AuditAction, AuditRecord
from app.tools.errors import UnknownTools
from app.tools.registry import ToolRegistry

logger = logging.getLogger(__name__)


def view(agent: Agent, version: AgentVersion) -> AgentView:
    return AgentView(
        name=agent.name,
        version=version.version,
        scope="platform" if agent.tenant_id is None else "tenant",
        enabled=agent.enabled,
        definition=AgentDefinition.model_validate(version.definition),
        created_at=version.created_at,
        updated_at=agent.updated_at,
    )


async def _check_tools(
    db: AsyncSession, registry: ToolRegistry, tenant_id: str | None, tools: list[str]
) -> None:
    unknown = await registry.unknown_names(db, tenant_id, tools)
    if unknown:
        raise UnknownTools(
            f"unknown tools: {', '.join(unknown)}",
            errors=[
                {
                    "field": f"tools.{tools.index(name)}",
                    "location": "body",
                    "message": f"unknown tool `{name}`",
                    "type": "unknown_tool",
                }
                for name in unknown
            ],
        )


async def save(
    db: AsyncSession,
    registry: ToolRegistry,
    *,
    tenant_id: str | None,
    body: AgentWrite,
    created_by: str | None,
) -> tuple[AgentView, bool]:
    """Create the agent or add a version to it. Returns the view and whether it changed.

    A definition identical to the current version adds no version (so re-loading YAML or
    retrying a request is harmless). `expected_version` that is not current → 409.
    """
    definition = body.definition()
    await _check_tools(db, registry, tenant_id, definition.tools)
    document = definition.model_dump(mode="json")
    await repository.lock_name(db, tenant_id, definition.name)
    agent = await repository.find_owned(db, tenant_id, definition.name)
    if agent is None:
        if body.expected_version not in (None, 0):
            raise AgentVersionConflict(
                f"agent {definition.name} does not exist yet (expected_version must be omitted)"
            )
        agent = await repository.insert_agent(db, tenant_id, definition.name, definition.enabled)
    else:
        if body.expected_version is not None and body.expected_version != agent.latest_version:
            raise AgentVersionConflict(
                f"agent {definition.name} is at version {agent.latest_version}, not {body.expected_version}"
            )
        current = await repository.get_version(db, agent.agent_id, agent.latest_version)
        if current is not None and current.definition == document:
            return view(agent, current), False
    if not await repository.bump_version(
        db, agent, expected=body.expected_version, enabled=definition.enabled
    ):
        raise AgentVersionConflict(
            f"agent {definition.name} changed concurrently; read it and retry"
        )
    version = await repository.insert_version(db, agent, document, created_by)
    # Every change is audited; disabling (the kill switch) under its own action.
    action = AuditAction.AGENT_CHANGED if definition.enabled else AuditAction.AGENT_DISABLED
    await audit.append(
        db,
        [
            AuditRecord(
                tenant_id or PLATFORM_AUDIT_TENANT,
                None,
                f"user:{created_by}" if created_by else "platform",
                action,
                {
                    "agent": definition.name,
                    "version": version.version,
                    "enabled": definition.enabled,
                },
            )
        ],
    )
    return view(agent, version), True


PLATFORM_AUDIT_TENANT = "_platform"  # the chain of platform-wide (YAML) agents


async def get_visible(
    db: AsyncSession, tenant_id: str, name: str, *, share_lock: bool = False
) -> tuple[Agent, AgentVersion]:
    """The agent's current version; `share_lock` holds its row against changes until commit."""
    agent = await repository.find_visible(db, tenant_id, name, share_lock=share_lock)
    if agent is None:
        raise AgentNotFound(f"agent {name} not found")
    version = await repository.get_version(db, agent.agent_id, agent.latest_version)
    assert version is not None
    return agent, version


async def get_version(
    db: AsyncSession, tenant_id: str, name: str, version_number: int
) -> AgentView:
    agent = await repository.find_visible(db, tenant_id, name)
    version = (
        None if agent is None else await repository.get_version(db, agent.agent_id, version_number)
    )
    if agent is None or version is None:
        raise AgentNotFound(f"agent {name} version {version_number} not found")
    return view(agent, version)


async def list_visible(
    db: AsyncSession, tenant_id: str, *, cursor: str | None, limit: int
) -> tuple[list[AgentView], str | None]:
    agents = await repository.list_visible(db, tenant_id, after_name=cursor, limit=limit)
    next_cursor = agents[limit - 1].name if len(agents) > limit else None
    views = []
    for agent in agents[:limit]:
        version = await repository.get_version(db, agent.agent_id, agent.latest_version)
        assert version is not None
        views.append(view(agent, version))
    return views, next_cursor


def read_yaml_folder(folder: Path) -> list[AgentWrite]:
    """Parse and validate every `*.yaml`/`*.yml` in `folder`; raise naming the bad file."""
    bodies: list[AgentWrite] = []
    if not folder.is_dir():
        return bodies
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        try:
            document: Any = yaml.safe_load(path.read_text())
            bodies.append(AgentWrite.model_validate(document))
        except (yaml.YAMLError, ValidationError) as exc:
            raise ValidationFailed(f"agent file {path}: {exc}") from exc
    return bodies


async def load_yaml_agents(db: AsyncSession, registry: ToolRegistry, folder: Path) -> list[str]:
    """Create or update the platform-wide agents of the YAML folder; returns changed names.
    Processes starting together (`serve --processes N`) take turns: the first saves, the
    others find nothing changed."""
    changed = []
    await db.execute(text("SELECT pg_advisory_xact_lock(hashtext('agent-platform:yaml-agents'))"))
    for body in read_yaml_folder(folder):
        agent_view, did_change = await save(
            db, registry, tenant_id=None, body=body, created_by="yaml"
        )
        if did_change:
            changed.append(f"{agent_view.name} v{agent_view.version}")
    if changed:
        logger.info("loaded agents from %s: %s", folder, ", ".join(changed))
    return changed
