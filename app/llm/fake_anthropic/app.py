"""The fake Anthropic API as a plain ASGI app: authentication, recording, validation, and
answers from the script (or the default answer), as JSON or as server-sent events."""

from __future__ import annotations

import asyncio
import hmac
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from starlette.types import Receive, Scope, Send

from app.llm.fake_anthropic.defaults import default_reply
from app.llm.fake_anthropic.records import RecordedRequest
from app.llm.fake_anthropic.render import Rendered, render, stream_events
from app.llm.fake_anthropic.script import (
    Disconnect,
    Entry,
    Fail,
    Outcome,
    Reply,
    Script,
    outcome_from_json,
)
from app.llm.fake_anthropic.usage import PromptCache
from app.llm.fake_anthropic.validation import validate_count_tokens, validate_create
from app.llm.fake_anthropic.wire import (
    ERROR_MESSAGES,
    ApiError,
    dumps,
    error_body,
    error_type_for,
    invalid,
    new_request_id,
    sse,
)

DEFAULT_API_KEY = "sk-ant-fake-key"
CONTROL_PREFIX = "/_fake/"
_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class ConnectionDropped(Exception):
    """Raised after a response has started so that the server cuts the connection (a
    scripted disconnect); `server.QuietDrops` keeps it out of the server's error log."""


class FakeAnthropic:
    """An ASGI app that speaks the Messages API (`POST /v1/messages`,
    `POST /v1/messages/count_tokens`) to clients holding `api_key`, answering from its
    script, and recording every request in `requests`."""

    def __init__(
        self,
        api_key: str = DEFAULT_API_KEY,
        *,
        call_tools_by_default: bool = False,
        stream_chunk_chars: int = 16,
        cache_min_tokens: int = 0,
    ) -> None:
        self.api_key = api_key
        self.call_tools_by_default = call_tools_by_default
        self.stream_chunk_chars = stream_chunk_chars
        self.requests: list[RecordedRequest] = []
        self.cache = PromptCache(cache_min_tokens)
        self._script = Script()

    def script(self, *entries: Entry, model: str | None = None) -> None:
        """Queue answers for the next requests (to `model` only, when given)."""
        self._script.queue(entries, model)

    def script_always(self, entry: Entry | None, *, model: str | None = None) -> None:
        """Answer with `entry` whenever the queues are empty (None: back to the default)."""
        self._script.always(entry, model)

    def pending(self, model: str | None = None) -> int:
        """How many queued answers are still unused."""
        return self._script.pending(model)

    def reset(self) -> None:
        """Forget the script, the recorded requests and the cached prompt prefixes."""
        self._script.clear()
        self.requests.clear()
        self.cache.clear()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        raw = await _read_body(receive)
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in scope["headers"]
        }
        record = RecordedRequest(
            scope["method"], scope["path"], headers, _parse(raw), new_request_id()
        )
        if not record.path.startswith(CONTROL_PREFIX):
            self.requests.append(record)
        try:
            await self._handle(record, send)
        except ApiError as error:
            record.status = error.status
            payload = error_body(error.error_type, error.message, record.request_id)
            headers_out = [(name.encode(), value.encode()) for name, value in error.headers.items()]
            await _send_json(send, error.status, payload, record.request_id, headers_out)

    async def _handle(self, record: RecordedRequest, send: Send) -> None:
        self._authenticate(record.headers)
        routes = {
            "/v1/messages": self._create,
            "/v1/messages/count_tokens": self._count_tokens,
            CONTROL_PREFIX + "script": self._control_script,
            CONTROL_PREFIX + "requests": self._control_requests,
            CONTROL_PREFIX + "reset": self._control_reset,
        }
        handler = routes.get(record.path)
        if handler is None:
            raise ApiError(404, f"Not found: {record.path}", "not_found_error")
        wanted = "GET" if record.path == CONTROL_PREFIX + "requests" else "POST"
        if record.method != wanted:
            raise ApiError(405, f"Method {record.method} not allowed", "invalid_request_error")
        if not record.path.startswith(CONTROL_PREFIX):
            _check_version(record.headers)
        await handler(record, send)

    def _authenticate(self, headers: Mapping[str, str]) -> None:
        """`x-api-key: KEY` (older SDKs) or `Authorization: Bearer KEY` (SDK 2.x)."""
        key = headers.get("x-api-key")
        if key is None:
            scheme, _, token = headers.get("authorization", "").partition(" ")
            key = token.strip() if scheme.lower() == "bearer" else None
        if not key:
            raise ApiError(401, "x-api-key header is required", "authentication_error")
        if not hmac.compare_digest(key.encode(), self.api_key.encode()):
            raise ApiError(401, "invalid x-api-key", "authentication_error")

    async def _create(self, record: RecordedRequest, send: Send) -> None:
        request = validate_create(_json_body(record))
        entry = self._script.take(request["model"])
        outcome = self._resolve(entry, record, request)
        if outcome.delay_seconds:
            await asyncio.sleep(outcome.delay_seconds)
        if isinstance(outcome, Fail):
            raise _api_error(outcome)
        if isinstance(outcome, Disconnect):
            record.status = 200
            await send({"type": "http.response.start", "status": 200, "headers": []})
            raise ConnectionDropped(record.request_id)
        rendered = render(outcome, request, self.cache.account(request))
        if request.get("stream"):
            await self._stream(record, outcome, rendered, send)
        else:
            record.status = 200
            await _send_json(send, 200, rendered.message, record.request_id)

    def _resolve(
        self, entry: Entry | None, record: RecordedRequest, request: Mapping[str, Any]
    ) -> Outcome:
        if entry is None:
            return default_reply(request, call_tools=self.call_tools_by_default)
        if isinstance(entry, Reply | Fail | Disconnect):
            return entry
        return entry(record)

    async def _stream(
        self, record: RecordedRequest, reply: Reply, rendered: Rendered, send: Send
    ) -> None:
        record.status = 200
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    (b"request-id", record.request_id.encode()),
                ],
            }
        )
        deltas = 0
        for sent, (name, data) in enumerate(stream_events(rendered, self.stream_chunk_chars)):
            if reply.drop_after_events is not None and sent >= reply.drop_after_events:
                raise ConnectionDropped(record.request_id)
            if sent and reply.event_delay_seconds:
                await asyncio.sleep(reply.event_delay_seconds)
            if name == "content_block_delta":
                if reply.error_after_deltas is not None and deltas >= reply.error_after_deltas:
                    error = error_body(
                        reply.stream_error_type, reply.stream_error_message, record.request_id
                    )
                    await send({"type": "http.response.body", "body": sse("error", error)})
                    return
                deltas += 1
            await send({"type": "http.response.body", "body": sse(name, data), "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def _count_tokens(self, record: RecordedRequest, send: Send) -> None:
        request = validate_count_tokens(_json_body(record))
        usage = self.cache.account(request, write=False)
        record.status = 200
        await _send_json(send, 200, {"input_tokens": usage.total}, record.request_id)

    async def _control_script(self, record: RecordedRequest, send: Send) -> None:
        """`{"entries": [outcome, ...], "model": null | str, "always": false}`; with
        `always`, one entry (or none, to clear) answers whenever the queues are empty."""
        body = _json_body(record)
        if not isinstance(body, dict) or not isinstance(body.get("entries", []), list):
            raise invalid("entries: Input should be a valid list")
        model = body.get("model")
        try:
            outcomes = [outcome_from_json(entry) for entry in body.get("entries", [])]
        except (ValueError, AttributeError) as exc:
            raise invalid(f"entries: {exc}") from exc
        if body.get("always"):
            self.script_always(outcomes[0] if outcomes else None, model=model)
        else:
            self.script(*outcomes, model=model)
        await _send_json(send, 200, {"pending": self.pending(model)}, record.request_id)

    async def _control_requests(self, record: RecordedRequest, send: Send) -> None:
        payload = {"requests": [request.to_json() for request in self.requests]}
        await _send_json(send, 200, payload, record.request_id)

    async def _control_reset(self, record: RecordedRequest, send: Send) -> None:
        self.reset()
        await _send_json(send, 200, {"reset": True}, record.request_id)


def _check_version(headers: Mapping[str, str]) -> None:
    version = headers.get("anthropic-version")
    if version is None:
        raise invalid("anthropic-version: header is required")
    if not _VERSION.match(version):
        raise invalid(f"anthropic-version: invalid version {version!r}")


def _api_error(fail: Fail) -> ApiError:
    error_type = fail.error_type or error_type_for(fail.status)
    headers = dict(fail.headers)
    if fail.retry_after is not None:
        seconds = fail.retry_after
        headers["retry-after"] = str(int(seconds)) if seconds == int(seconds) else str(seconds)
    if fail.retry_after_ms is not None:
        headers["retry-after-ms"] = str(fail.retry_after_ms)
    message = fail.message or ERROR_MESSAGES.get(error_type, "Error")
    return ApiError(fail.status, message, error_type, headers)


def _parse(raw: bytes) -> Any:
    """The JSON body, or None when there is none or it is not JSON."""
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _json_body(record: RecordedRequest) -> Any:
    if record.body is None:
        raise invalid("There was an error parsing the body of your request as JSON.")
    return record.body


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send_json(
    send: Send,
    status: int,
    payload: Any,
    request_id: str,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    body = dumps(payload)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"request-id", request_id.encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
