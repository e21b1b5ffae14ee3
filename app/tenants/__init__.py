"""Tenants: the isolation boundary. Owns the tenants table, creation on first use with
default limits, and the scoping every repository query goes through. Knows nothing of
HTTP or JWTs."""
