"""Which model answers an agent: resolves a definition's `model` to a `Model`.

- `offline` → the agent's scripted model (in process: no network, no cost);
- a name registered in code (tests register FunctionModel twins) → that model;
- anything else → the LLM gateway (`ProviderGateway` over the Anthropic provider), when an
  API key is configured (`ANTHROPIC_API_KEY`); without one → `model_unavailable`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from redis.asyncio import Redis

from app.agents.schemas import AgentDefinition
from app.llm.model import Model, ModelUnavailable
from app.llm.offline import OfflineModel
from app.redis_client import create_redis
from app.settings import Settings

if TYPE_CHECKING:
    from app.llm.gateway import ProviderGateway


class ModelResolver:
    def __init__(self, gateway: ProviderGateway | None = None) -> None:
        self._models: dict[str, Model] = {}
        self.gateway = gateway
        self._redis: Redis | None = None

    def register(self, name: str, model: Model) -> None:
        self._models[name] = model

    def resolve(self, definition: AgentDefinition) -> Model:
        if definition.model == "offline":
            return OfflineModel(definition.offline)
        model = self._models.get(definition.model)
        if model is not None:
            return model
        if self.gateway is not None:
            return self.gateway
        raise ModelUnavailable(
            f"no provider for model `{definition.model}` is configured on this worker "
            "(set ANTHROPIC_API_KEY to enable the anthropic provider)"
        )

    @classmethod
    def from_settings(cls, settings: Settings, redis_url: str) -> ModelResolver:
        """The resolver of a process: with the gateway when an Anthropic key is set."""
        has_key = settings.anthropic.api_key is not None or bool(
            os.environ.get("ANTHROPIC_API_KEY")
        )
        if not has_key:
            return cls()
        redis = create_redis(settings.redis, redis_url)
        resolver = cls(build_gateway(settings, redis))
        resolver._redis = redis
        return resolver

    async def aclose(self) -> None:
        if self.gateway is not None:
            await self.gateway.aclose()
        if self._redis is not None:
            await self._redis.aclose()


def build_gateway(settings: Settings, redis: Redis) -> ProviderGateway:
    # Imported here: the anthropic SDK takes ~2 s to import, which a process without an
    # API key (offline models only) should not pay at start-up.
    from app.llm.anthropic_provider import AnthropicModel, make_client
    from app.llm.breaker import BreakerConfig, CircuitBreaker, CircuitOpen
    from app.llm.budget import TenantBudgets
    from app.llm.cache import ResponseCache
    from app.llm.gateway import ProviderGateway, RetryPolicy
    from app.llm.pricing import PriceTable

    llm = settings.llm
    breaker = CircuitBreaker(
        redis,
        BreakerConfig(
            failure_threshold=llm.breaker_failure_threshold,
            failure_rate_threshold=llm.breaker_failure_rate,
            window_seconds=llm.breaker_window_seconds,
            minimum_calls=llm.breaker_minimum_calls,
            cooldown_seconds=llm.breaker_cooldown_seconds,
            success_threshold=llm.breaker_success_threshold,
            probe_timeout_seconds=max(150.0, settings.anthropic.timeout_seconds + 30),
            closed_cache_seconds=llm.breaker_closed_cache_seconds,
        ),
        redis_timeout_seconds=settings.redis.socket_timeout_seconds,
    )
    return ProviderGateway(
        AnthropicModel(make_client(settings.anthropic)),
        breaker=breaker,
        circuit_open=CircuitOpen,
        cache=ResponseCache(redis, llm.cache_ttl_seconds, settings.redis.socket_timeout_seconds),
        budgets=TenantBudgets(
            redis,
            daily_tokens=llm.tenant_daily_token_budget,
            daily_cost_usd=llm.tenant_daily_cost_budget_usd,
            timeout_seconds=max(settings.redis.socket_timeout_seconds, 0.5),
        ),
        prices=PriceTable(llm.prices),
        retry=RetryPolicy(llm.max_retries, llm.retry_base_seconds, llm.retry_max_seconds),
        cheap_model=llm.cheap_model,
    )
