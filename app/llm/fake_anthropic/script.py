"""What the fake answers: scripted replies, errors and disconnects, queued per model.

A test queues entries; each valid `POST /v1/messages` takes one. For a model, what is
scripted for it wins: its queue, then its `always` entry, then the shared queue, then the
shared `always` entry. A callable entry is called with the request and returns the outcome.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal, TypeAlias, TypeVar, get_args

from app.llm.fake_anthropic.records import RecordedRequest

StopReason = Literal[
    "end_turn",
    "tool_use",
    "max_tokens",
    "stop_sequence",
    "pause_turn",
    "refusal",
    "model_context_window_exceeded",
]
STOP_REASONS: frozenset[str] = frozenset(get_args(StopReason))
_T = TypeVar("_T")


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class ToolUse:
    """A `tool_use` block. `id` is generated (`toolu_…`) when None. `cut_off_json` is the
    raw, incomplete input JSON of a call the token limit cut short: it is what the stream
    sends, and the block's `input` is what can be parsed from it (as the SDK does)."""

    name: str
    input: Mapping[str, Any] = field(default_factory=dict)
    id: str | None = None
    cut_off_json: str | None = None


Block: TypeAlias = str | Text | ToolUse  # a plain str is a text block


@dataclass(frozen=True)
class Reply:
    """A successful answer. With `stop_reason` None the fake decides as the API would:
    content over the request's `max_tokens` is cut (`max_tokens`), else `tool_use` when a
    tool is called, else `end_turn`. An explicit `stop_reason` is sent as scripted.

    Streaming only: `event_delay_seconds` between events; `error_after_deltas` sends an
    `error` event after that many `content_block_delta` events and ends the stream;
    `drop_after_events` cuts the connection after that many events."""

    content: Sequence[Block] = ()
    stop_reason: StopReason | None = None
    stop_sequence: str | None = None
    usage: Mapping[str, int] | None = None  # overrides computed usage fields
    delay_seconds: float = 0.0  # before the response starts
    event_delay_seconds: float = 0.0
    error_after_deltas: int | None = None
    stream_error_type: str = "overloaded_error"
    stream_error_message: str = "Overloaded"
    drop_after_events: int | None = None


@dataclass(frozen=True)
class Fail:
    """An HTTP error answer. `error_type` and `message` default from the status, as the
    API names them; `retry_after` (seconds) and `retry_after_ms` become headers."""

    status: int
    error_type: str | None = None
    message: str | None = None
    retry_after: float | None = None
    retry_after_ms: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_seconds: float = 0.0


@dataclass(frozen=True)
class Disconnect:
    """Start a 200 response, then cut the connection before any body arrives."""

    delay_seconds: float = 0.0


Outcome: TypeAlias = Reply | Fail | Disconnect
Responder: TypeAlias = Callable[[RecordedRequest], Outcome]
Entry: TypeAlias = Outcome | Responder


class Script:
    """Queues of entries per model (key None: any model). Thread-safe: tests script from
    their thread while the server answers from its own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queued: dict[str | None, deque[Entry]] = {}
        self._always: dict[str | None, Entry] = {}

    def queue(self, entries: Sequence[Entry], model: str | None = None) -> None:
        with self._lock:
            self._queued.setdefault(model, deque()).extend(entries)

    def always(self, entry: Entry | None, model: str | None = None) -> None:
        with self._lock:
            if entry is None:
                self._always.pop(model, None)
            else:
                self._always[model] = entry

    def take(self, model: str) -> Entry | None:
        """The next entry for `model`, or None when nothing is scripted for it."""
        with self._lock:
            for key in (model, None):  # what is scripted for the model wins over the shared
                queue = self._queued.get(key)
                if queue:
                    return queue.popleft()
                if key in self._always:
                    return self._always[key]
        return None

    def pending(self, model: str | None = None) -> int:
        with self._lock:
            return len(self._queued.get(model, ()))

    def clear(self) -> None:
        with self._lock:
            self._queued.clear()
            self._always.clear()


def outcome_from_json(data: Mapping[str, Any]) -> Outcome:
    """Build an outcome from its JSON form (the control endpoint's script):
    `{"kind": "reply" | "error" | "disconnect", ...the fields of Reply / Fail / Disconnect}`
    with reply content as API blocks (`{"type": "text", ...}` / `{"type": "tool_use", ...}`).
    Raises ValueError on anything else."""
    values = {key: value for key, value in data.items() if key != "kind"}
    kind = data.get("kind", "reply")
    if kind == "reply":
        values["content"] = [_block_from_json(block) for block in values.get("content", [])]
        if values.get("stop_reason") not in {None, *STOP_REASONS}:
            raise ValueError(f"unknown stop_reason {values['stop_reason']!r}")
        return _build(Reply, values)
    if kind == "error":
        return _build(Fail, values)
    if kind == "disconnect":
        return _build(Disconnect, values)
    raise ValueError(f"unknown kind {kind!r}: expected reply, error or disconnect")


def _block_from_json(block: Any) -> Block:
    if isinstance(block, str):
        return block
    if isinstance(block, dict) and block.get("type") == "text":
        return Text(str(block.get("text", "")))
    if isinstance(block, dict) and block.get("type") == "tool_use":
        return _build(ToolUse, {key: value for key, value in block.items() if key != "type"})
    raise ValueError(f"unsupported content block {block!r}")


def _build(cls: type[_T], values: Mapping[str, Any]) -> _T:
    names = {item.name for item in fields(cls)}  # type: ignore[arg-type]
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown fields for {cls.__name__}: {sorted(unknown)}")
    try:
        return cls(**values)
    except TypeError as exc:
        raise ValueError(str(exc)) from exc
