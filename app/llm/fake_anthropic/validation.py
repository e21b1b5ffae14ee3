"""Request validation: what the Messages API rejects with 400 `invalid_request_error`.

Field paths and wording follow the API's (`messages.1.content.0: ...`). The rules are the
ones a client can break: required fields and their types, message and block shapes, tool
definitions, and tool_use / tool_result pairing between consecutive turns. Consecutive
messages of one role are merged into one turn, as the API does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from app.llm.fake_anthropic.wire import invalid

_COMMON_FIELDS = frozenset(
    {
        "model",
        "messages",
        "system",
        "tools",
        "tool_choice",
        "thinking",
        "output_config",
        "cache_control",
        "speed",
        "user_profile_id",
        "workspace_id",
        "mcp_servers",
        "context_management",
    }
)
CREATE_FIELDS = _COMMON_FIELDS | {
    "max_tokens",
    "stream",
    "stop_sequences",
    "metadata",
    "service_tier",
    "inference_geo",
    "container",
    "diagnostics",
    "temperature",
    "top_p",
    "top_k",
}
_ROLES = ("user", "assistant", "system")
_BLOCK_TYPES = frozenset(
    {
        "text",
        "image",
        "document",
        "search_result",
        "thinking",
        "redacted_thinking",
        "tool_use",
        "tool_result",
        "server_tool_use",
        "web_search_tool_result",
        "web_fetch_tool_result",
        "code_execution_tool_result",
        "bash_code_execution_tool_result",
        "text_editor_code_execution_tool_result",
        "tool_search_tool_result",
        "container_upload",
    }
)
_TOOL_USE_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")


@dataclass
class _Turn:
    index: int  # of the turn's first message
    role: str
    blocks: list[tuple[int, int, dict[str, Any]]] = field(default_factory=list)  # (msg, pos, block)


def validate_create(body: Any) -> dict[str, Any]:
    """The request body of `POST /v1/messages`, checked; raises ApiError(400)."""
    request = _common(body, CREATE_FIELDS)
    max_tokens = request.get("max_tokens")
    if max_tokens is None:
        raise invalid("max_tokens: Field required")
    if not _is_int(max_tokens):
        raise invalid("max_tokens: Input should be a valid integer")
    if max_tokens < 0:  # 0 is allowed: it pre-warms the prompt cache without generating
        raise invalid("max_tokens: Input should be greater than or equal to 0")
    if "stream" in request and not isinstance(request["stream"], bool):
        raise invalid("stream: Input should be a valid boolean")
    stop_sequences = request.get("stop_sequences", [])
    if not isinstance(stop_sequences, list) or not all(
        isinstance(item, str) for item in stop_sequences
    ):
        raise invalid("stop_sequences: Input should be a valid list of strings")
    for name, high in (("temperature", 1.0), ("top_p", 1.0)):
        value = request.get(name)
        if value is not None and (not _is_number(value) or not 0 <= value <= high):
            raise invalid(f"{name}: Input should be a number between 0 and {high:g}")
    return request


def validate_count_tokens(body: Any) -> dict[str, Any]:
    """The request body of `POST /v1/messages/count_tokens`, checked; raises ApiError(400)."""
    return _common(body, _COMMON_FIELDS)


def _common(body: Any, allowed: frozenset[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise invalid("Input should be a valid dictionary")
    for name in body:
        if name not in allowed:
            raise invalid(f"{name}: Extra inputs are not permitted")
    model = body.get("model")
    if model is None:
        raise invalid("model: Field required")
    if not isinstance(model, str) or not model:
        raise invalid("model: Input should be a non-empty string")
    _system(body.get("system"))
    tool_names = _tools(body.get("tools"))
    _tool_choice(body.get("tool_choice"), tool_names)
    _cache_control("cache_control", body.get("cache_control"))
    _messages(body.get("messages"))
    return body


def _system(system: Any) -> None:
    if system is None or isinstance(system, str):
        return
    if not isinstance(system, list):
        raise invalid("system: Input should be a valid string or a list of text blocks")
    for position, block in enumerate(system):
        where = f"system.{position}"
        if not isinstance(block, dict) or block.get("type") != "text":
            raise invalid(f"{where}: Input should be a text block")
        _text(where, block)


def _tools(tools: Any) -> set[str]:
    if tools is None:
        return set()
    if not isinstance(tools, list):
        raise invalid("tools: Input should be a valid list")
    names: set[str] = set()
    for position, tool in enumerate(tools):
        where = f"tools.{position}"
        if not isinstance(tool, dict):
            raise invalid(f"{where}: Input should be a valid dictionary")
        name = tool.get("name")
        if name is None:
            raise invalid(f"{where}.name: Field required")
        if not isinstance(name, str) or not _TOOL_NAME.match(name):
            raise invalid(f"{where}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'")
        if tool.get("type") in (None, "custom"):  # a client tool; server tools are typed
            schema = tool.get("input_schema")
            if schema is None:
                raise invalid(f"{where}.custom.input_schema: Field required")
            if not isinstance(schema, dict) or schema.get("type") != "object":
                raise invalid(f"{where}.custom.input_schema.type: Input should be 'object'")
        _cache_control(f"{where}.cache_control", tool.get("cache_control"))
        if name in names:
            raise invalid("tools: Tool names must be unique.")
        names.add(name)
    return names


def _tool_choice(choice: Any, tool_names: set[str]) -> None:
    if choice is None:
        return
    if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
        raise invalid("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'")
    if choice["type"] in ("any", "tool") and not tool_names:
        raise invalid("tool_choice: `tool_choice` may only be specified while providing tools")
    if choice["type"] == "tool" and choice.get("name") not in tool_names:
        raise invalid(f"tool_choice.name: no tool named {choice.get('name')!r} in `tools`")


def _messages(messages: Any) -> None:
    if messages is None:
        raise invalid("messages: Field required")
    if not isinstance(messages, list):
        raise invalid("messages: Input should be a valid list")
    if not messages:
        raise invalid("messages: at least one message is required")
    turns: list[_Turn] = []
    last = len(messages) - 1
    for index, message in enumerate(messages):
        where = f"messages.{index}"
        if not isinstance(message, dict):
            raise invalid(f"{where}: Input should be a valid dictionary")
        for name in message:
            if name not in ("role", "content"):
                raise invalid(f"{where}.{name}: Extra inputs are not permitted")
        role = message.get("role")
        if role not in _ROLES:
            raise invalid(f"{where}.role: Input should be 'user', 'assistant' or 'system'")
        content = message.get("content")
        if content is None:
            raise invalid(f"{where}.content: Field required")
        if isinstance(content, str):
            blocks: list[Any] = [{"type": "text", "text": content}]
        elif isinstance(content, list):
            blocks = content
        else:
            raise invalid(f"{where}.content: Input should be a valid string or list")
        final_assistant = index == last and role == "assistant"
        if not blocks and not final_assistant:
            raise invalid(
                f"{where}: all messages must have non-empty content except for the "
                "optional final assistant message"
            )
        for position, block in enumerate(blocks):
            _block(f"{where}.content.{position}", block, role, final_assistant)
        if role == "system":
            continue  # system messages carry instructions; they take no part in turns
        if not turns or turns[-1].role != role:
            turns.append(_Turn(index, role))
        turns[-1].blocks.extend((index, position, block) for position, block in enumerate(blocks))
    if turns and turns[0].role != "user":
        raise invalid('messages: first message must use the "user" role')
    if turns and turns[-1].role == "assistant" and turns[-1].blocks:
        final = turns[-1].blocks[-1][2]
        if final.get("type") == "text" and final["text"] != final["text"].rstrip():
            raise invalid("messages: final assistant content cannot end with trailing whitespace")
    _pair_tool_calls(turns)


def _block(where: str, block: Any, role: str, final_assistant: bool) -> None:
    if not isinstance(block, dict):
        raise invalid(f"{where}: Input should be a valid dictionary")
    kind = block.get("type")
    if kind not in _BLOCK_TYPES:
        raise invalid(
            f"{where}: Input tag {kind!r} found using 'type' does not match any of the "
            f"expected tags: {', '.join(sorted(_BLOCK_TYPES))}"
        )
    if role == "system" and kind != "text":
        raise invalid(f"{where}: system messages may only contain text blocks")
    _cache_control(f"{where}.cache_control", block.get("cache_control"))
    if kind == "text":
        _text(where, block, allow_empty=final_assistant)
    elif kind == "tool_use":
        if role != "assistant":
            raise invalid(f"{where}: `tool_use` blocks may only appear in assistant messages")
        if not isinstance(block.get("id"), str) or not _TOOL_USE_ID.match(block["id"]):
            raise invalid(f"{where}.id: String should match pattern '^[a-zA-Z0-9_-]+$'")
        if not isinstance(block.get("name"), str):
            raise invalid(f"{where}.name: Field required")
        if not isinstance(block.get("input"), dict):
            raise invalid(f"{where}.input: Input should be a valid dictionary")
    elif kind == "tool_result":
        if role != "user":
            raise invalid(f"{where}: `tool_result` blocks may only appear in user messages")
        if not isinstance(block.get("tool_use_id"), str):
            raise invalid(f"{where}.tool_use_id: Field required")
        content = block.get("content", "")
        if not isinstance(content, str | list):
            raise invalid(f"{where}.content: Input should be a valid string or list")
        if "is_error" in block and not isinstance(block["is_error"], bool):
            raise invalid(f"{where}.is_error: Input should be a valid boolean")


def _text(where: str, block: Mapping[str, Any], allow_empty: bool = False) -> None:
    text = block.get("text")
    if not isinstance(text, str):
        raise invalid(f"{where}.text: Input should be a valid string")
    if not allow_empty and not text:
        raise invalid("messages: text content blocks must be non-empty")
    if not allow_empty and not text.strip():
        raise invalid("messages: text content blocks must contain non-whitespace text")


def _cache_control(where: str, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or value.get("type") != "ephemeral":
        raise invalid(f"{where}.type: Input should be 'ephemeral'")
    if value.get("ttl", "5m") not in ("5m", "1h"):
        raise invalid(f"{where}.ttl: Input should be '5m' or '1h'")


def _pair_tool_calls(turns: list[_Turn]) -> None:
    """Every tool_result answers a tool_use of the turn just before (and comes before other
    content in its turn); every tool_use is answered in the turn just after. Results are
    checked first: an unexpected id is the more precise complaint."""
    calls_by_turn = [
        [block["id"] for _, _, block in turn.blocks if block["type"] == "tool_use"]
        for turn in turns
    ]
    seen: set[str] = set()
    for number, turn in enumerate(turns):
        for index, position, block in turn.blocks:
            if block["type"] == "tool_use":
                if block["id"] in seen:
                    raise invalid(
                        f"messages.{index}.content.{position}: `tool_use` ids must be unique"
                    )
                seen.add(block["id"])
        if turn.role == "user":
            expected = set(calls_by_turn[number - 1]) if number > 0 else set()
            _check_results(turn, expected)
    for number, turn in enumerate(turns):
        after = turns[number + 1].blocks if number + 1 < len(turns) else []
        answered = {block["tool_use_id"] for _, _, block in after if block["type"] == "tool_result"}
        missing = [call for call in calls_by_turn[number] if call not in answered]
        if missing:
            raise invalid(
                f"messages.{turn.index}: `tool_use` ids were found without `tool_result` "
                f"blocks immediately after: {', '.join(missing)}. Each `tool_use` block "
                "must have a corresponding `tool_result` block in the next message."
            )


def _check_results(turn: _Turn, expected: set[str]) -> None:
    other_content = False
    for index, position, block in turn.blocks:
        if block["type"] != "tool_result":
            other_content = True
            continue
        if block["tool_use_id"] not in expected:
            raise invalid(
                f"messages.{index}.content.{position}: unexpected `tool_use_id` found in "
                f"`tool_result` blocks: {block['tool_use_id']}. Each `tool_result` block "
                "must have a corresponding `tool_use` block in the previous message."
            )
        if other_content:
            raise invalid(
                f"messages.{index}.content.{position}: `tool_result` blocks must come "
                "first in the content of a user message, before any other content"
            )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
