"""From a scripted Reply to the API's Message JSON, and that message as its stream events."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from jiter import from_json  # the SDK's own partial-JSON parser (a dependency of `anthropic`)

from app.llm.fake_anthropic.script import Block, Reply, Text, ToolUse
from app.llm.fake_anthropic.usage import InputUsage, estimate_tokens
from app.llm.fake_anthropic.wire import new_message_id, new_tool_use_id

_USAGE_FIELDS = (
    "input_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "output_tokens",
)
_PIECES = re.compile(r"\s*\S+\s*|\s+")


@dataclass(frozen=True)
class Rendered:
    message: dict[str, Any]
    tool_json: dict[int, str]  # content index → the input JSON text a stream sends for it


def render(reply: Reply, request: Mapping[str, Any], input_usage: InputUsage) -> Rendered:
    blocks = [_normalise(block) for block in reply.content]
    stop_reason = reply.stop_reason
    if stop_reason is None:
        blocks, cut = _fit(blocks, budget_chars=int(request["max_tokens"]) * 4)
        cut = cut or any(
            isinstance(block, ToolUse) and block.cut_off_json is not None for block in blocks
        )
        if cut or request["max_tokens"] == 0:
            stop_reason = "max_tokens"
        elif any(isinstance(block, ToolUse) for block in blocks):
            stop_reason = "tool_use"
        else:
            stop_reason = "end_turn"
    content: list[dict[str, Any]] = []
    tool_json: dict[int, str] = {}
    output_chars = 0
    for index, block in enumerate(blocks):
        if isinstance(block, Text):
            content.append({"type": "text", "text": block.text})
            output_chars += len(block.text)
            continue
        raw = block.cut_off_json
        if raw is None:
            raw = json.dumps(block.input, ensure_ascii=False)
            tool_input: Any = dict(block.input)
        else:
            tool_input = from_json(raw.encode(), partial_mode=True) if raw else {}
        tool_json[index] = raw
        output_chars += len(raw)
        content.append(
            {"type": "tool_use", "id": block.id, "name": block.name, "input": tool_input}
        )
    stop_sequence = None
    if stop_reason == "stop_sequence":
        requested = request.get("stop_sequences") or [None]
        stop_sequence = reply.stop_sequence or requested[0]
    output_tokens = 0 if request["max_tokens"] == 0 else max(1, estimate_tokens(output_chars))
    usage: dict[str, Any] = {
        "input_tokens": input_usage.input_tokens,
        "cache_creation_input_tokens": input_usage.cache_creation_input_tokens,
        "cache_read_input_tokens": input_usage.cache_read_input_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": 0,
            "ephemeral_1h_input_tokens": 0,
            f"ephemeral_{input_usage.cache_ttl}_input_tokens": (
                input_usage.cache_creation_input_tokens
            ),
        },
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }
    usage.update({name: value for name, value in (reply.usage or {}).items()})
    message = {
        "id": new_message_id(),
        "type": "message",
        "role": "assistant",
        "model": request["model"],
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "stop_details": (
            {"type": "refusal", "category": None, "explanation": None}
            if stop_reason == "refusal"
            else None
        ),
        "usage": usage,
    }
    return Rendered(message, tool_json)


def stream_events(rendered: Rendered, chunk_chars: int) -> list[tuple[str, dict[str, Any]]]:
    """The message as the API streams it: message_start, then per block
    content_block_start / deltas / content_block_stop (a ping after the first start),
    message_delta with the stop reason and final usage, message_stop."""
    message = rendered.message
    usage = message["usage"]
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "stop_details": None,
        "usage": {**usage, "output_tokens": min(1, usage["output_tokens"])},
    }
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": start})
    ]
    if not message["content"]:
        events.append(("ping", {"type": "ping"}))
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            opening: dict[str, Any] = {"type": "text", "text": ""}
            deltas = [
                {"type": "text_delta", "text": piece}
                for piece in _text_pieces(block["text"], chunk_chars)
            ]
        else:
            opening = {**block, "input": {}}
            raw = rendered.tool_json[index]
            deltas = [
                {"type": "input_json_delta", "partial_json": raw[at : at + chunk_chars]}
                for at in range(0, len(raw), chunk_chars)
            ]
            deltas.insert(0, {"type": "input_json_delta", "partial_json": ""})
        events.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": opening},
            )
        )
        if index == 0:
            events.append(("ping", {"type": "ping"}))
        events.extend(
            ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
            for delta in deltas
        )
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    delta = {
        "stop_reason": message["stop_reason"],
        "stop_sequence": message["stop_sequence"],
        "stop_details": message["stop_details"],
    }
    final_usage = {name: usage[name] for name in _USAGE_FIELDS if name in usage}
    events.append(
        ("message_delta", {"type": "message_delta", "delta": delta, "usage": final_usage})
    )
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def _normalise(block: Block) -> Text | ToolUse:
    if isinstance(block, str):
        return Text(block)
    if isinstance(block, ToolUse) and block.id is None:
        return replace(block, id=new_tool_use_id())
    return block


def _fit(blocks: Sequence[Text | ToolUse], budget_chars: int) -> tuple[list[Text | ToolUse], bool]:
    """The content a `max_tokens` budget lets through, and whether anything was cut."""
    kept: list[Text | ToolUse] = []
    left = budget_chars
    for block in blocks:
        if isinstance(block, Text):
            size = len(block.text)
            if size > left:
                if left > 0:
                    kept.append(Text(block.text[:left]))
                return kept, True
        else:
            raw = block.cut_off_json
            if raw is None:
                raw = json.dumps(block.input, ensure_ascii=False)
            size = len(raw)
            if size > left:
                if left > 0:
                    kept.append(replace(block, cut_off_json=raw[:left]))
                return kept, True
        kept.append(block)
        left -= size
    return kept, False


def _text_pieces(text: str, chunk_chars: int) -> list[str]:
    """Word-aligned pieces of about `chunk_chars` characters that join back to `text`."""
    pieces: list[str] = []
    current = ""
    for word in _PIECES.findall(text):
        current += word
        if len(current) >= chunk_chars:
            pieces.append(current)
            current = ""
    if current:
        pieces.append(current)
    return pieces
