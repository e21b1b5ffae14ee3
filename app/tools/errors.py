from __future__ import annotations

from app.errors import ValidationFailed


class UnknownTools(ValidationFailed):
    code = "unknown-tool"
    title = "Unknown tool"
