"""JSON as the platform writes it: into `json` columns (event payloads, the tool-call
ledger) and into the text a model or a scanner reads (tool results). Compact text, since
`json` keeps exactly what it is given; UTF-8 characters as they are (not `\\uXXXX`); values
the encoder does not know as their strings.

pydantic-core's encoder writes it (a fifth of `json.dumps`' time on the agent loop's
payloads); text it cannot carry (a lone surrogate: not UTF-8) falls back to `json.dumps`,
which escapes it, so nothing the loop is given fails to encode.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic_core import PydanticSerializationError, to_json


def compact_json(value: Any) -> str:
    try:
        return to_json(value, fallback=str).decode()
    except PydanticSerializationError:
        return json.dumps(value, default=str, separators=(",", ":"))
