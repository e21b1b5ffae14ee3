"""LLM gateway: the model interface every model call of the runtime goes through, and its
providers — `offline` (a deterministic model scripted by the agent definition) now; the
Anthropic SDK provider, routing, retries, breakers and cost come with the gateway issue."""
