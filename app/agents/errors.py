from __future__ import annotations

from app.errors import Conflict, NotFound, PlatformError


class AgentNotFound(NotFound):
    code = "agent-not-found"


class AgentVersionConflict(Conflict):
    code = "agent-version-conflict"
    title = "Agent changed since the version you read"


class AgentDisabled(PlatformError):
    status_code, code, title = 409, "agent-disabled", "Agent disabled"
