"""Observability: Prometheus metrics (all declared in metrics.py), logging, tracing, and
the append-only, hash-chained audit log."""
