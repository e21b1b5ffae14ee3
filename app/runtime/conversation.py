"""Rebuilding a session's conversation (Anthropic-shaped messages) from the database.

The stored log is: the session input, each model response (`model.response` events, in
order), each tool call's ledger row (by `tool_use_id`), and what the platform told the
model (`platform.note`). From these the messages are rebuilt exactly, so a session resumed
on another worker continues where it was without calling the model again for a response
already persisted and without re-running a finished tool.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from app.db.payloads import compact_json
from app.llm.model import ContentBlock, Message
from app.policy.injection import wrap_untrusted
from app.runtime.store import ToolCallRecord
from app.tools.executor import render_for_model
from app.tools.spec import ToolSpec

SETTLED = frozenset({"succeeded", "failed", "unknown", "denied", "cancelled"})


def input_message(session_input: Any) -> Message:
    text = session_input if isinstance(session_input, str) else json.dumps(session_input)
    return {"role": "user", "content": [{"type": "text", "text": text}]}


def tool_result_block(record: ToolCallRecord, tools: dict[str, ToolSpec]) -> ContentBlock:
    """The `tool_result` block the model sees for a settled ledger row."""
    if record.status == "succeeded":
        spec = tools.get(record.tool)
        if spec is not None:
            content, _ = render_for_model(spec, record.result)
        else:
            content = wrap_untrusted(compact_json(record.result), f"tool:{record.tool}")
        return {"type": "tool_result", "tool_use_id": record.tool_use_id, "content": content}
    message = record.error or f"{record.tool} {record.status}"
    return {
        "type": "tool_result",
        "tool_use_id": record.tool_use_id,
        "content": message,
        "is_error": True,
    }


@dataclass
class Conversation:
    messages: list[Message]
    assistant_turns: int = 0
    # Tool calls of the last response that have no settled ledger row yet (a crash cut
    # them off, or they are about to run).
    unsettled: list[ToolCallRecord] = field(default_factory=list)
    # The last model response, unless user input came after it: a final answer here whose
    # completion did not commit (a crash) is completed on resume without a new model call.
    last_response: dict[str, Any] | None = None
    calls_in_order: list[ToolCallRecord] = field(default_factory=list)

    def add_user_input(self, session_input: Any) -> None:
        """New input of a continued conversation: the next user turn."""
        block = input_message(session_input)["content"][0]
        if self.messages and self.messages[-1]["role"] == "user":
            self.messages[-1]["content"].append(block)
        else:
            self.messages.append({"role": "user", "content": [block]})

    def compact(self, summary: str) -> None:
        """Everything before the last exchange (assistant turn + its answer) becomes one
        user message holding the summary; the exchange stays, so tool_use/tool_result
        pairs remain intact."""
        kept = self.messages[-2:] if len(self.messages) >= 3 else self.messages[1:]
        block = {"type": "text", "text": f"Summary of the conversation so far:\n{summary}"}
        self.messages = [{"role": "user", "content": [block]}, *kept]

    def add_note(self, text: str) -> None:
        block = {"type": "text", "text": text}
        if self.messages and self.messages[-1]["role"] == "user":
            self.messages[-1]["content"].append(block)
        else:
            self.messages.append({"role": "user", "content": [block]})


def rebuild(
    session_input: Any,
    events: list[tuple[str, dict[str, Any]]],
    ledger: dict[str, ToolCallRecord],
    tools: dict[str, ToolSpec],
) -> Conversation:
    conversation = Conversation(messages=[input_message(session_input)])
    for event_type, data in events:
        if event_type == "platform.note":
            if data.get("kind") == "compaction":
                conversation.compact(data["summary"])
            elif "text" in data:  # notes for the model (loop warnings, output re-asks)
                conversation.add_note(data["text"])
                conversation.last_response = None  # the model was asked again
            continue
        if event_type == "user.message":
            conversation.add_user_input(data["input"])
            conversation.last_response = None  # answered turns lie behind the new input
            continue
        content = data["content"]
        conversation.messages.append({"role": "assistant", "content": content})
        conversation.assistant_turns += 1
        conversation.last_response = data
        uses = [block for block in content if block.get("type") == "tool_use"]
        if not uses or data.get("stop_reason") != "tool_use":
            conversation.unsettled = []
            continue
        results: list[ContentBlock] = []
        unsettled: list[ToolCallRecord] = []
        for block in uses:
            record = ledger.get(block["id"])
            if record is None:
                continue  # not recorded: the response itself was the last durable step
            conversation.calls_in_order.append(record)
            if record.status in SETTLED:
                results.append(tool_result_block(record, tools))
            else:
                unsettled.append(record)
        conversation.unsettled = unsettled
        # Always the user turn that answers the tool calls; the runner adds the results of
        # the unsettled calls to it once it has settled them.
        conversation.messages.append({"role": "user", "content": results})
    return conversation
