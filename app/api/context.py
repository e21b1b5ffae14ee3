"""Everything the API process wires once at start-up and routes reach through `deps`."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.api.auth import TokenVerifier
from app.api.rate_limit import RateLimiter
from app.credentials.service import CredentialCipher
from app.llm.providers import ModelResolver
from app.sessions.creation import SessionCreator
from app.sessions.feed import SessionFeedHub
from app.settings import Settings
from app.tenants.service import TenantRegistry
from app.tools.registry import ToolRegistry


@dataclass
class AppContext:
    settings: Settings
    database_url: str
    redis_url: str
    engine: AsyncEngine
    session_factory: async_sessionmaker[AsyncSession]
    redis: Redis
    rate_limiter: RateLimiter
    token_verifier: TokenVerifier
    tenants: TenantRegistry
    tools: ToolRegistry
    models: ModelResolver
    feed: SessionFeedHub
    session_creator: SessionCreator
    credential_cipher: CredentialCipher
