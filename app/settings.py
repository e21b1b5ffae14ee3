"""Typed settings, nested by capability.

Each group is its own ``BaseSettings`` with an environment prefix, so the variables read
naturally (``DATABASE_URL``, ``REDIS_SOCKET_TIMEOUT_SECONDS``, ``AUTH_JWT_SECRET``) while code
reads ``settings.redis.socket_timeout_seconds``. Every field is bounded and described; every
one is listed in ``.env.example``.
"""

from __future__ import annotations

import ipaddress
import json
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Values that are only acceptable on a developer's machine. A secret equal to one of
# these (or shorter than 32 characters) is refused outside development.
PLACEHOLDER_SECRETS = frozenset(
    {"", "change-me", "changeme", "secret", "dev-secret-change-me-in-production", "password"}
)
DEV_JWT_SECRET = "dev-secret-change-me-in-production"
DEV_CREDENTIALS_KEY = "Sz5P4SwOZ0DMxrSE1xNnGLgdH2GJAROHrNfKSPxNdxc="  # development only


class Environment(StrEnum):
    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


def _group(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(
        env_prefix=prefix, env_file=".env", extra="ignore", validate_default=True
    )


class DatabaseSettings(BaseSettings):
    model_config = _group("DATABASE_")

    url: str | None = Field(
        default=None,
        description="postgresql+asyncpg:// URL; unset → the embedded PostgreSQL under ./.data/pg",
    )
    pool_size: int = Field(default=10, ge=1, le=200, description="Connections kept per process")
    max_overflow: int = Field(default=20, ge=0, le=400, description="Extra connections at peak")
    pool_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    statement_timeout_ms: int = Field(
        default=30_000, ge=100, le=600_000, description="Server-side cap on any one statement"
    )


class RedisSettings(BaseSettings):
    model_config = _group("REDIS_")

    url: str | None = Field(
        default=None, description="redis:// URL; unset → the embedded Valkey under ./.data/redis"
    )
    socket_timeout_seconds: float = Field(
        default=0.25, gt=0, le=10, description="Per-call timeout; a stalled Redis never hangs"
    )
    connect_timeout_seconds: float = Field(default=0.25, gt=0, le=10)
    retry_after_failure_seconds: float = Field(
        default=2.0,
        ge=0,
        le=60,
        description="After a Redis failure, callers use their fallback this long before retrying",
    )


class EmbeddedSettings(BaseSettings):
    model_config = _group("EMBEDDED_")

    data_dir: Path = Field(
        default=Path(".data"), description="Where the embedded servers keep data, logs, pid files"
    )
    start_timeout_seconds: float = Field(default=30.0, gt=0, le=300)
    postgres_max_connections: int = Field(default=300, ge=20, le=5000)


class AuthSettings(BaseSettings):
    model_config = _group("AUTH_")

    jwt_algorithm: Literal["HS256", "RS256"] = "HS256"
    jwt_secret: SecretStr = Field(
        default=SecretStr(DEV_JWT_SECRET), description="HS256 key (≥32 chars outside development)"
    )
    jwt_public_key: str | None = Field(default=None, description="RS256 PEM public key")
    jwt_private_key: SecretStr | None = Field(
        default=None, description="RS256 PEM private key; only `agent-platform token` uses it"
    )
    jwks_url: str | None = Field(default=None, description="RS256 keys from a JWKS endpoint")
    issuer: str | None = Field(default=None, description="Required `iss` when set")
    audience: str | None = Field(default=None, description="Required `aud` when set")
    leeway_seconds: int = Field(default=30, ge=0, le=300, description="Clock skew allowed")
    max_token_bytes: int = Field(default=8192, ge=256, le=65536)
    dev_token_ttl_seconds: int = Field(default=3600, ge=60, le=31 * 24 * 3600)


class RateLimitSettings(BaseSettings):
    model_config = _group("RATE_LIMIT_")

    enabled: bool = True
    per_tenant: str = Field(
        default="3000/minute", description="Moving-window limit per tenant (limits syntax)"
    )
    per_subject: str = Field(
        default="1200/minute", description="Moving-window limit per caller (`sub`) in a tenant"
    )


class ApiSettings(BaseSettings):
    model_config = _group("API_")

    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    sse_heartbeat_seconds: float = Field(
        default=15.0, gt=0, le=300, description="Idle event streams get a comment this often"
    )
    metrics_token: SecretStr | None = Field(
        default=None, description="If set, /metrics requires `Authorization: Bearer <token>`"
    )


class TenantDefaults(BaseSettings):
    model_config = _group("TENANT_DEFAULT_")

    max_running_sessions: int = Field(
        default=50, ge=0, le=10_000, description="Running-session cap for a new tenant (0: paused)"
    )


class RuntimeSettings(BaseSettings):
    model_config = _group("RUNTIME_")

    lease_ttl_seconds: float = Field(
        default=15.0,
        ge=1,
        le=300,
        description="A crashed worker's session is taken over after this",
    )
    heartbeat_interval_seconds: float = Field(default=5.0, gt=0, le=100)
    reaper_interval_seconds: float = Field(default=5.0, gt=0, le=300)
    poll_interval_seconds: float = Field(
        default=2.0, gt=0, le=60, description="Safety-net poll; wake-ups are pushed (LISTEN/NOTIFY)"
    )
    shutdown_grace_seconds: float = Field(
        default=20.0, ge=0, le=600, description="On SIGTERM, time for in-flight steps to finish"
    )
    crash_at: str | None = Field(
        default=None,
        description="Fault injection for crash tests: kill the worker at this point "
        "(before_tool|after_tool_effect|after_tool_record[:tool]); refused in production",
    )
    crash_once_file: Path | None = Field(
        default=None, description="With crash_at: fire only if this file does not exist yet"
    )


class AnthropicSettings(BaseSettings):
    """The SDK's own variables: `ANTHROPIC_API_KEY`, `ANTHROPIC_BASE_URL` (any
    Anthropic-compatible endpoint or proxy). Without a key only `offline` agents run."""

    model_config = _group("ANTHROPIC_")

    api_key: SecretStr | None = Field(default=None, description="Enables the anthropic provider")
    base_url: str | None = Field(default=None, description="Default: the SDK's (api.anthropic.com)")
    timeout_seconds: float = Field(default=120.0, gt=0, le=3600, description="Per model call")
    connect_timeout_seconds: float = Field(default=5.0, gt=0, le=120)


class LlmSettings(BaseSettings):
    """The LLM gateway: retries, circuit breakers, response cache, prices, tenant budgets."""

    model_config = _group("LLM_")

    max_retries: int = Field(default=3, ge=0, le=10, description="Per model, then fallback")
    retry_base_seconds: float = Field(default=1.0, ge=0, le=60, description="Doubles per retry")
    retry_max_seconds: float = Field(default=30.0, ge=0, le=600, description="Back-off cap")
    breaker_failure_threshold: int = Field(
        default=5, ge=1, le=1000, description="Consecutive failures that open a circuit"
    )
    breaker_failure_rate: float = Field(
        default=0.5, gt=0, le=1, description="Failure rate over the window that opens it"
    )
    breaker_window_seconds: float = Field(default=60.0, gt=0, le=3600)
    breaker_minimum_calls: int = Field(
        default=20, ge=1, le=100_000, description="Calls in the window before the rate counts"
    )
    breaker_cooldown_seconds: float = Field(
        default=60.0, gt=0, le=3600, description="Open → one half-open probe after this"
    )
    breaker_success_threshold: int = Field(
        default=2, ge=1, le=100, description="Probe successes that close a circuit"
    )
    breaker_closed_cache_seconds: float = Field(
        default=0.25,
        ge=0,
        le=10,
        description="A worker trusts a closed circuit this long without asking Redis (other "
        "workers' trips reach it that much later); 0: ask on every call",
    )
    cache_ttl_seconds: int = Field(
        default=300, ge=1, le=7 * 86_400, description="Response cache entry lifetime"
    )
    cheap_model: str = Field(
        default="claude-haiku-4-5", description="The tier for summaries and compaction"
    )
    prices: Annotated[dict[str, dict[str, float]], NoDecode] = Field(
        default_factory=dict,
        description='USD per million tokens overriding the table, JSON: {"model": {"input": 3, '
        '"output": 15, "cache_write": 3.75, "cache_read": 0.3}}',
    )
    tenant_daily_token_budget: int | None = Field(
        default=None, ge=1, description="Per tenant per UTC day; unset = unlimited"
    )
    tenant_daily_cost_budget_usd: float | None = Field(
        default=None, gt=0, description="Per tenant per UTC day; unset = unlimited"
    )

    @field_validator("prices", mode="before")
    @classmethod
    def _parse_prices(cls, value: object) -> object:
        if isinstance(value, str):
            return json.loads(value) if value.strip() else {}
        return value


class CredentialSettings(BaseSettings):
    """Tool credentials stored per agent and tool, encrypted at rest (Fernet)."""

    model_config = _group("CREDENTIALS_")

    encryption_key: SecretStr = Field(
        default=SecretStr(DEV_CREDENTIALS_KEY),
        description="Fernet key (urlsafe base64, 32 bytes); the development default is refused "
        "in production. Generate: python -c 'from cryptography.fernet import Fernet; "
        "print(Fernet.generate_key().decode())'",
    )


class WebhookSettings(BaseSettings):
    model_config = _group("WEBHOOK_")

    max_attempts: int = Field(default=8, ge=1, le=50, description="Then the delivery is dead")
    backoff_base_seconds: float = Field(
        default=2.0, gt=0, le=3600, description="Doubles per attempt"
    )
    backoff_max_seconds: float = Field(default=600.0, gt=0, le=86_400)
    timeout_seconds: float = Field(default=10.0, gt=0, le=120, description="Per delivery attempt")
    dispatch_interval_seconds: float = Field(default=1.0, gt=0, le=60)


class RetentionSettings(BaseSettings):
    model_config = _group("RETENTION_")

    finished_days: float | None = Field(
        default=None, gt=0, description="Erase finished sessions older than this (unset: keep)"
    )
    keep_last: int | None = Field(
        default=None, ge=1, description="Per tenant, keep only this many finished sessions"
    )
    interval_seconds: float = Field(default=60.0, gt=0, le=86_400, description="Purge cadence")
    batch_size: int = Field(default=500, ge=1, le=100_000, description="Sessions per purge pass")


class Settings(BaseSettings):
    """The root of all settings. Build once per process with :func:`get_settings`."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", validate_default=True)

    environment: Environment = Environment.DEVELOPMENT
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = Field(default=True, description="JSON lines on stderr; false → plain text")
    outbound_allowlist: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Hosts, IPs or CIDRs that outbound calls may reach even if private",
    )
    migrations_dir: Path = Field(default=PROJECT_ROOT / "migrations")
    agents_dir: Path = Field(
        default=PROJECT_ROOT / "agents", description="YAML agent definitions loaded at start-up"
    )

    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    embedded: EmbeddedSettings = Field(default_factory=EmbeddedSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    rate_limit: RateLimitSettings = Field(default_factory=RateLimitSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    tenant_defaults: TenantDefaults = Field(default_factory=TenantDefaults)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    anthropic: AnthropicSettings = Field(default_factory=AnthropicSettings)
    llm: LlmSettings = Field(default_factory=LlmSettings)
    credentials: CredentialSettings = Field(default_factory=CredentialSettings)

    @field_validator("outbound_allowlist", mode="before")
    @classmethod
    def _split_allowlist(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("outbound_allowlist")
    @classmethod
    def _check_allowlist(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            if "/" in entry:
                ipaddress.ip_network(entry, strict=False)  # raises ValueError naming the entry
        return entries

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> Settings:
        if self.runtime.crash_at and self.environment is Environment.PRODUCTION:
            raise ValueError("RUNTIME_CRASH_AT is fault injection for tests; refused in production")
        if self.environment is Environment.DEVELOPMENT:
            return self
        if self.auth.jwt_algorithm == "HS256":
            secret = self.auth.jwt_secret.get_secret_value()
            if secret.lower() in PLACEHOLDER_SECRETS or len(secret) < 32:
                raise ValueError(
                    f"AUTH_JWT_SECRET must be a real secret of at least 32 characters when "
                    f"ENVIRONMENT={self.environment.value} (placeholders are for development only)"
                )
        elif not (self.auth.jwt_public_key or self.auth.jwks_url):
            raise ValueError("AUTH_JWT_ALGORITHM=RS256 needs AUTH_JWT_PUBLIC_KEY or AUTH_JWKS_URL")
        if (
            self.environment is Environment.PRODUCTION
            and self.credentials.encryption_key.get_secret_value() == DEV_CREDENTIALS_KEY
        ):
            raise ValueError(
                "CREDENTIALS_ENCRYPTION_KEY is the development key; set a key of your own"
            )
        return self

    @property
    def uses_embedded_postgres(self) -> bool:
        return self.database.url is None

    @property
    def uses_embedded_redis(self) -> bool:
        return self.redis.url is None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
