"""The tool registry: built-in tools from code plus the HTTP tools a tenant registered."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.tools.builtins import BUILTIN_TOOLS
from app.tools.models import ToolDefinition
from app.tools.sandbox import sandbox_tools
from app.tools.spec import ToolSpec


class ToolRegistry:
    def __init__(self, builtins: tuple[ToolSpec, ...] | None = None) -> None:
        if builtins is None:
            # run_python only where its OS sandbox works (else its reason is logged once).
            builtins = BUILTIN_TOOLS + tuple(sandbox_tools())
        self._builtins = {spec.name: spec for spec in builtins}

    @property
    def builtin_names(self) -> frozenset[str]:
        return frozenset(self._builtins)

    def builtin(self, name: str) -> ToolSpec | None:
        return self._builtins.get(name)

    def register(self, spec: ToolSpec) -> None:
        """Add a Python tool (plugins, tests). Names are unique."""
        if spec.name in self._builtins:
            raise ValueError(f"tool {spec.name} is already registered")
        self._builtins[spec.name] = spec

    def builtins_of(self, names: list[str]) -> dict[str, ToolSpec] | None:
        """The specs of `names` if all are built-in (no database read needed), else None."""
        if all(name in self._builtins for name in names):
            return {name: self._builtins[name] for name in names}
        return None

    async def for_tenant(
        self, db: AsyncSession, tenant_id: str, names: list[str]
    ) -> dict[str, ToolSpec]:
        """The specs of `names` visible to `tenant_id` (built-ins win over HTTP tools)."""
        from app.tools.http import spec_from_definition

        found = {name: self._builtins[name] for name in names if name in self._builtins}
        wanted = [name for name in names if name not in found]
        if wanted:
            rows = await db.execute(
                select(ToolDefinition).where(
                    ToolDefinition.tenant_id == tenant_id, ToolDefinition.name.in_(wanted)
                )
            )
            for row in rows.scalars():
                found[row.name] = spec_from_definition(row)
        return found

    async def unknown_names(
        self, db: AsyncSession, tenant_id: str | None, names: list[str]
    ) -> list[str]:
        """Which of `names` no tool answers to (for a platform agent: built-ins only)."""
        unknown = [name for name in names if name not in self._builtins]
        if not unknown or tenant_id is None:
            return unknown
        rows = await db.execute(
            select(ToolDefinition.name).where(
                ToolDefinition.tenant_id == tenant_id, ToolDefinition.name.in_(unknown)
            )
        )
        registered = set(rows.scalars())
        return [name for name in unknown if name not in registered]
