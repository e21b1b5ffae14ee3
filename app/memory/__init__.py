"""Memory: working-memory budgets and compaction, and long-term memory in pgvector
(episodic, semantic, procedural), scoped by tenant. The agent runs on without it if the
vector store is down."""
