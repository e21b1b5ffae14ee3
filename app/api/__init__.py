"""The HTTP layer: auth, rate limits, problem+json, idempotency keys and thin routes. Routes
validate, call one service function and return; rules live in the services."""
