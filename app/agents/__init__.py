"""Agents: definitions and their immutable versions (API and YAML). Owns validation of a
definition and optimistic concurrency on updates; does not run anything."""
