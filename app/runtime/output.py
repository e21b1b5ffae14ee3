"""Checking an agent's final answer against its `output_schema`."""

from __future__ import annotations

import json
from typing import Any

import jsonschema


def check_final_answer(text: str, schema: dict[str, Any] | None) -> tuple[Any, str | None]:
    """(result, None) if the answer is acceptable — the parsed JSON when a schema applies,
    else the text — or (None, what is wrong) for the model to be told."""
    if schema is None:
        return text, None
    try:
        result = json.loads(_strip_code_fence(text))
        jsonschema.validate(result, schema)
    except json.JSONDecodeError as exc:
        return None, f"your answer is not valid JSON ({exc.msg} at position {exc.pos})"
    except jsonschema.ValidationError as exc:
        path = ".".join(str(p) for p in exc.absolute_path) or "(root)"
        return None, f"your answer does not match the required schema at {path}: {exc.message}"
    return result, None


def _strip_code_fence(text: str) -> str:
    stripped = text.strip()
    if stripped.startswith("```") and stripped.endswith("```"):
        stripped = stripped.split("\n", 1)[1] if "\n" in stripped else ""
        stripped = stripped.rsplit("```", 1)[0]
    return stripped.strip()
