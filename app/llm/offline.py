"""The `offline` model: deterministic, scripted by the agent definition (API.md).

Each script entry is one model turn: `tool_use` (one or more calls), optional `text`,
optional `confidence`, optional `delay_ms`. The entry used is the number of assistant
turns already in the conversation, so a resumed or continued session goes on from its next
unused entry. `{{input.x}}` is filled from the session input — a placeholder that is the
whole string keeps the value's JSON type; inside a longer string it is written as text;
a missing value is null (whole string) or empty (inside text). When the script runs out,
the model ends its turn with a text summarising the tool results it saw.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from app.agents.schemas import OfflineScript
from app.db.payloads import compact_json
from app.llm.model import ModelRequest, ModelResponse, TokenUsage

_PLACEHOLDER = re.compile(r"\{\{\s*(input(?:\.[A-Za-z0-9_-]+)*)\s*\}\}")
_MISSING = object()


def _lookup(path: str, session_input: Any) -> Any:
    value: Any = session_input
    for part in path.split(".")[1:]:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def fill(template: Any, session_input: Any) -> Any:
    """Replace `{{input...}}` placeholders in strings, recursively through lists and dicts."""
    if isinstance(template, dict):
        return {key: fill(value, session_input) for key, value in template.items()}
    if isinstance(template, list):
        return [fill(value, session_input) for value in template]
    if not isinstance(template, str):
        return template
    whole = _PLACEHOLDER.fullmatch(template.strip())
    if whole:
        value = _lookup(whole.group(1), session_input)
        return None if value is _MISSING else value

    def text_of(match: re.Match[str]) -> str:
        value = _lookup(match.group(1), session_input)
        if value is _MISSING or value is None:
            return ""
        return value if isinstance(value, str) else json.dumps(value)

    return _PLACEHOLDER.sub(text_of, template)


def _estimate_tokens(value: Any) -> int:
    return max(1, len(compact_json(value)) // 4)


def _summary(request: ModelRequest) -> str:
    results = []
    for message in request.messages:
        if message["role"] != "user" or not isinstance(message["content"], list):
            continue
        for block in message["content"]:
            if block.get("type") == "tool_result":
                content = block.get("content")
                text = content if isinstance(content, str) else json.dumps(content)
                status = "error" if block.get("is_error") else "ok"
                results.append(f"- {block['tool_use_id']} ({status}): {text[:200]}")
    if not results:
        return "Done."
    return "Done. Tool results:\n" + "\n".join(results)


class OfflineModel:
    def __init__(self, script: OfflineScript | None) -> None:
        self.script = script.script if script else []

    async def complete(self, request: ModelRequest) -> ModelResponse:
        index = request.assistant_turns
        if index >= len(self.script):
            text = _summary(request)
            return ModelResponse(
                content=[{"type": "text", "text": text}],
                stop_reason="end_turn",
                usage=TokenUsage(_estimate_tokens(request.messages), _estimate_tokens(text)),
                model="offline",
            )
        entry = self.script[index]
        if entry.delay_ms:
            await asyncio.sleep(entry.delay_ms / 1000)
        content: list[dict[str, Any]] = []
        if entry.text is not None:
            content.append({"type": "text", "text": fill(entry.text, request.session_input)})
        for position, call in enumerate(entry.tool_use):
            content.append(
                {
                    "type": "tool_use",
                    "id": f"toolu_offline_{index:03d}_{position:02d}",
                    "name": call["name"],
                    "input": fill(call.get("input", {}), request.session_input),
                }
            )
        return ModelResponse(
            content=content,
            stop_reason="tool_use" if entry.tool_use else "end_turn",
            usage=TokenUsage(_estimate_tokens(request.messages), _estimate_tokens(content)),
            model="offline",
            confidence=entry.confidence,
        )
