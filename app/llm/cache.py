"""The opt-in response cache (Redis): identical deterministic requests answered once.

Only an agent with `cache_responses: true` uses it: its owner declares its requests
deterministic (the pinned API version, 2026-10-21, has no sampling temperature to pin to 0).
The key is a SHA-256 of the canonical JSON of the whole request — model, fallbacks, system
prompt, tools, messages, max_tokens, prompt caching — prefixed by the tenant, so two
tenants or two different prompts never share an entry. A hit costs nothing: its usage is
zero and the response is marked `cached`. Redis trouble is a miss, never an error.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging

from redis.asyncio import Redis

from app.llm.model import ModelRequest, ModelResponse, TokenUsage
from app.observability import metrics

logger = logging.getLogger(__name__)
PREFIX = "agent:llm-cache"
CACHEABLE_STOPS = frozenset({"end_turn", "tool_use", "stop_sequence"})


def cache_key(request: ModelRequest) -> str:
    body = {
        "model": request.model,
        "fallback_models": list(request.fallback_models),
        "system": request.system,
        "tools": request.tools,
        "messages": request.messages,
        "max_tokens": request.max_tokens,
        "prompt_caching": request.prompt_caching,
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return f"{PREFIX}:{request.tenant_id}:{digest}"


class ResponseCache:
    def __init__(self, redis: Redis, ttl_seconds: int, timeout_seconds: float = 0.25) -> None:
        self.redis = redis
        self.ttl_seconds = ttl_seconds
        self.timeout_seconds = timeout_seconds

    @staticmethod
    def applies(request: ModelRequest) -> bool:
        return request.cache_responses

    async def get(self, request: ModelRequest) -> ModelResponse | None:
        try:
            async with asyncio.timeout(self.timeout_seconds):
                raw = await self.redis.get(cache_key(request))
        except Exception as exc:
            metrics.REDIS_FALLBACKS.labels(feature="llm_cache").inc()
            logger.debug("response cache unavailable (a miss): %r", exc)
            return None
        if raw is None:
            return None
        data = json.loads(raw)
        return ModelResponse(
            content=data["content"],
            stop_reason=data["stop_reason"],
            usage=TokenUsage(),
            model=data["model"],
            cached=True,
        )

    async def put(self, request: ModelRequest, response: ModelResponse) -> None:
        if response.stop_reason not in CACHEABLE_STOPS:
            return
        value = json.dumps(
            {
                "content": response.content,
                "stop_reason": response.stop_reason,
                "model": response.model,
            }
        )
        try:
            async with asyncio.timeout(self.timeout_seconds):
                await self.redis.set(cache_key(request), value, ex=self.ttl_seconds)
        except Exception as exc:
            metrics.REDIS_FALLBACKS.labels(feature="llm_cache").inc()
            logger.debug("could not store a cached response: %r", exc)
