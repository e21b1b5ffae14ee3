"""Database plumbing: the async engine, the declarative base with its naming convention,
and shared column types. Owns no tables and no business rules."""
