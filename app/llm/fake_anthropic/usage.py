"""Deterministic token counts and prompt-cache accounting.

A token is ~4 characters: each prompt segment (a tool definition, a system block, a message
block) counts ceil(len(its compact JSON) / 4). The prompt is read in the API's order (tools,
system, messages); a `cache_control` marker ends a cacheable prefix (a top-level
`cache_control` marks the last segment). The first request with a prefix reports its tokens
as `cache_creation_input_tokens`; later requests with the same model and an identical prefix
report them as `cache_read_input_tokens`. Prefixes never expire (until `clear`).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any


def estimate_tokens(chars: int) -> int:
    return (chars + 3) // 4


@dataclass(frozen=True)
class InputUsage:
    input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_ttl: str = "5m"  # of the written prefix: "5m" | "1h"

    @property
    def total(self) -> int:
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens


@dataclass(frozen=True)
class _Breakpoint:
    tokens: int  # of the whole prefix up to and including the marked segment
    key: str
    ttl: str


class PromptCache:
    """Which prompt prefixes have been cached. `min_tokens`: shorter prefixes are never
    cached (the API's minimum is 1024+ tokens; the fake defaults to 0 so tests stay small)."""

    def __init__(self, min_tokens: int = 0) -> None:
        self.min_tokens = min_tokens
        self._prefixes: set[str] = set()
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._prefixes.clear()

    def account(self, request: Mapping[str, Any], *, write: bool = True) -> InputUsage:
        """Split the request's input tokens into uncached, cache-written and cache-read;
        with `write` the request's prefixes are remembered for the next requests."""
        model = str(request.get("model"))
        digest = hashlib.blake2b(model.encode(), digest_size=16)
        total = 0
        breakpoints: list[_Breakpoint] = []
        segments = list(_segments(request))
        top_level = request.get("cache_control")
        for number, (value, marker) in enumerate(segments):
            if number == len(segments) - 1 and marker is None and isinstance(top_level, dict):
                marker = top_level
            text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
            total += estimate_tokens(len(text))
            digest.update(text.encode())
            digest.update(b"\x00")
            if isinstance(marker, dict) and total >= self.min_tokens:
                ttl = str(marker.get("ttl", "5m"))
                breakpoints.append(_Breakpoint(total, digest.hexdigest(), ttl))
        if not breakpoints:
            return InputUsage(input_tokens=total)
        with self._lock:
            read = max(
                (point.tokens for point in breakpoints if point.key in self._prefixes), default=0
            )
            last = breakpoints[-1]
            created = last.tokens - read
            if write:
                self._prefixes.update(point.key for point in breakpoints)
        return InputUsage(total - read - created, created, read, last.ttl)


def _segments(request: Mapping[str, Any]) -> Iterator[tuple[Any, Any]]:
    """(what identifies the segment, its cache_control marker or None), in prompt order;
    markers are left out of the identity so moving a breakpoint keeps the prefix."""
    for tool in request.get("tools") or []:
        yield _unmarked(tool), tool.get("cache_control")
    system = request.get("system")
    if isinstance(system, str):
        yield ["system", system], None
    for block in system if isinstance(system, list) else []:
        yield ["system", _unmarked(block)], block.get("cache_control")
    for message in request.get("messages") or []:
        content = message["content"]
        if isinstance(content, str):
            yield [message["role"], content], None
            continue
        for block in content:
            yield [message["role"], _unmarked(block)], block.get("cache_control")


def _unmarked(block: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in block.items() if key != "cache_control"}
