"""HTTP tools (being written)."""

from __future__ import annotations

from app.tools.models import ToolDefinition
from app.tools.spec import ToolSpec


def spec_from_definition(row: ToolDefinition) -> ToolSpec:
    raise RuntimeError("HTTP tools are not wired yet")
