"""Guardrails on tool calls: the policy schema (`rules`), its pure evaluation (`engine`),
blast-radius limits kept in Redis (`limits`) and the prompt-injection detector (`injection`).

`rules`, `decision`, `engine` and `injection` are pure: no I/O, no clock, no database.
Only `limits` talks to Redis, and it fails closed. Callers audit what they are handed back.
"""
