"""The answer when nothing is scripted: an `end_turn` text that echoes the last user turn,
or (demo mode) a call of the first client tool with an input made from its schema."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.llm.fake_anthropic.script import Reply, ToolUse

_ECHO_CHARS = 200


def default_reply(request: Mapping[str, Any], *, call_tools: bool) -> Reply:
    turns = [message for message in request["messages"] if message["role"] != "system"]
    last = turns[-1]
    content = last["content"]
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
    results = [block for block in blocks if block.get("type") == "tool_result"]
    said = " ".join(block["text"] for block in blocks if block.get("type") == "text").strip()
    if call_tools and last["role"] == "user" and not results:
        tools = [tool for tool in request.get("tools") or [] if "input_schema" in tool]
        if tools:
            return Reply([ToolUse(tools[0]["name"], sample_input(tools[0]["input_schema"]))])
    if results:
        return Reply([f"Fake answer: received {len(results)} tool result(s)."])
    if last["role"] == "user" and said:
        clipped = said if len(said) <= _ECHO_CHARS else said[:_ECHO_CHARS] + "…"
        return Reply([f"Fake answer to: {clipped}"])
    return Reply(["Fake answer."])


def sample_input(schema: Mapping[str, Any]) -> dict[str, Any]:
    """An input that fills the schema's required properties with plain placeholder values."""
    properties = schema.get("properties") or {}
    return {name: _sample(properties.get(name) or {}) for name in schema.get("required") or []}


def _sample(schema: Mapping[str, Any]) -> Any:
    if schema.get("enum"):
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((item for item in kind if item != "null"), "null")
    if kind == "object":
        return sample_input(schema)
    placeholders: dict[str, Any] = {
        "string": "example",
        "integer": 1,
        "number": 1,
        "boolean": False,
        "array": [],
        "null": None,
    }
    return placeholders.get(str(kind), "example")
