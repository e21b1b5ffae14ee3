"""`agent-platform sessions follow ID`: a session's live event stream as readable progress."""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

import httpx


def describe(event: dict[str, Any]) -> str:
    """One readable line per event."""
    kind, data = event["type"], event.get("data", {})
    if kind.startswith("session."):
        status = kind.removeprefix("session.")
        extra = data.get("reason") or (data.get("error") or {}).get("message") or ""
        return f"[{status}]" + (f" {extra}" if extra else "")
    if kind == "model.response":
        parts = []
        for block in data.get("content", []):
            if block.get("type") == "text" and block.get("text"):
                parts.append(f"model: {block['text']}")
            elif block.get("type") == "tool_use":
                parts.append(f"→ {block['name']}({json.dumps(block.get('input', {}))})")
        return "\n".join(parts) or f"model: ({data.get('stop_reason')})"
    if kind == "tool.result":
        return f"← {data.get('tool')} {data.get('status')}: {data.get('preview', '')}"
    if kind == "platform.note":
        return f"platform: {data.get('text', '')}"
    return f"{kind}: {json.dumps(data)}"


def follow(base_url: str, token: str, session_id: str, *, out: TextIO = sys.stdout) -> int:
    """Print the stream until the session ends (reconnecting from the last event id if the
    connection drops). Exit status 0 if it completed, 1 otherwise."""
    last_event_id: str | None = None
    final = "unknown"
    headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
    with httpx.Client(base_url=base_url, timeout=httpx.Timeout(10.0, read=None)) as client:
        for _attempt in range(20):
            if last_event_id is not None:
                headers["Last-Event-ID"] = last_event_id
            try:
                with client.stream(
                    "GET", f"/v1/sessions/{session_id}/events", headers=headers
                ) as response:
                    if response.status_code != 200:
                        response.read()
                        print(f"error {response.status_code}: {response.text}", file=out)
                        return 2
                    frame: dict[str, str] = {}
                    for line in response.iter_lines():
                        if line == "":
                            if "data" in frame:
                                event = json.loads(frame["data"])
                                last_event_id = frame.get("id", last_event_id)
                                print(describe(event), file=out, flush=True)
                                if event["type"] in (
                                    "session.completed",
                                    "session.failed",
                                    "session.cancelled",
                                    "session.timed_out",
                                ):
                                    final = event["type"].removeprefix("session.")
                            frame = {}
                        elif not line.startswith(":"):
                            key, _, value = line.partition(": ")
                            frame[key] = value
                return 0 if final == "completed" else 1
            except httpx.TransportError as exc:
                print(f"(connection lost: {exc}; resuming)", file=out)
    return 1
