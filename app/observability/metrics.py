"""Every Prometheus metric the platform exports, declared once, with bounded labels
(route templates, tool and agent names, statuses — never a session, user or tenant id)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

HTTP_REQUESTS = Counter(
    "agent_http_requests_total",
    "HTTP requests by route template, method and status code",
    ["route", "method", "status"],
)
HTTP_REQUEST_SECONDS = Histogram(
    "agent_http_request_seconds",
    "HTTP request latency by route template",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RATE_LIMITED = Counter(
    "agent_rate_limited_requests_total",
    "Requests refused with 429, by which limit refused them",
    ["limit"],
)
REDIS_FALLBACKS = Counter(
    "agent_redis_fallback_total",
    "Times a Redis-backed feature used its declared fallback because Redis failed or stalled",
    ["feature"],
)
GROUP_COMMIT_WRITES = Histogram(
    "agent_group_commit_writes",
    "Writes per statement of a group commit (`app.db.batching`: 1 = written alone), by kind",
    ["kind"],
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
DEPENDENCY_UP = Gauge(
    "agent_dependency_up",
    "1 if the last readiness check reached the dependency, else 0",
    ["dependency"],
)
LLM_CALLS = Counter(
    "agent_llm_calls_total",
    "Model calls by provider, model and outcome (ok|error|cache_hit|circuit_open)",
    ["provider", "model", "outcome"],
)
LLM_CALL_SECONDS = Histogram(
    "agent_llm_call_seconds",
    "Model call latency (one attempt) by provider and model",
    ["provider", "model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128),
)
LLM_TTFT_SECONDS = Histogram(
    "agent_llm_time_to_first_token_seconds",
    "Time from sending a streamed model call to its first content delta",
    ["provider", "model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16),
)
LLM_RETRIES = Counter(
    "agent_llm_retries_total", "Model call retries by model and HTTP status", ["model", "status"]
)
LLM_FALLBACKS = Counter(
    "agent_llm_fallbacks_total", "Fell over from one model to the next", ["from_model", "to_model"]
)
LLM_TOKENS = Counter(
    "agent_llm_tokens_total",
    "Tokens by model and kind (input|output|cache_write|cache_read)",
    ["model", "kind"],
)
LLM_COST_USD = Counter("agent_llm_cost_usd_total", "Model spend in USD by model", ["model"])
POLICY_DECISIONS = Counter(
    "agent_policy_decisions_total",
    "Rulings on tool calls by tool and outcome (started|denied|awaiting_approval)",
    ["tool", "outcome"],
)
INJECTION_FLAGS = Counter(
    "agent_injection_flags_total",
    "Tool outputs flagged by an injection pattern, by pattern",
    ["pattern"],
)
