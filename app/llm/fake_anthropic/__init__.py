"""A fake Anthropic Messages API server for tests, benchmarks and demos: the real SDK
(`anthropic.AsyncAnthropic(base_url=..., api_key=...)`) talks to it over HTTP and cannot
tell the difference. It owns the wire protocol only; it must never call the real API.

Speaks `POST /v1/messages` (JSON or SSE streaming) and `POST /v1/messages/count_tokens`,
authenticated by `x-api-key: KEY` or `Authorization: Bearer KEY` (one accepted key) and an
`anthropic-version: YYYY-MM-DD` header. Requests are validated as the API does (400
`invalid_request_error`, including tool_use / tool_result pairing); errors have the API's
shape and a `request-id` header. Usage is a deterministic estimate (~4 characters a token)
with prompt-cache creation / reads for `cache_control` prefixes (see `usage`).

Answers come from a script (`Reply`, `Fail`, `Disconnect`, or a callable of the request),
queued per test and optionally per model. With nothing scripted it answers `end_turn` with
a text echoing the last user turn ("Fake answer to: ..."). In demo mode
(`call_tools_by_default=True`, the default of `python -m app.llm.fake_anthropic`), a user
turn that is not tool results, with client tools offered, gets a call of the first tool,
its required properties filled with placeholders ("example", 1, false, [], {}); the next
turn (the results) gets a text answer.

Test-only control endpoints (same key): `POST /_fake/script`, `GET /_fake/requests`,
`POST /_fake/reset`, so a fake running as its own process can be scripted too.
"""

from app.llm.fake_anthropic.app import DEFAULT_API_KEY, ConnectionDropped, FakeAnthropic
from app.llm.fake_anthropic.records import RecordedRequest
from app.llm.fake_anthropic.script import (
    Disconnect,
    Entry,
    Fail,
    Reply,
    StopReason,
    Text,
    ToolUse,
)
from app.llm.fake_anthropic.server import FakeAnthropicServer

__all__ = [
    "DEFAULT_API_KEY",
    "ConnectionDropped",
    "Disconnect",
    "Entry",
    "Fail",
    "FakeAnthropic",
    "FakeAnthropicServer",
    "RecordedRequest",
    "Reply",
    "StopReason",
    "Text",
    "ToolUse",
]
