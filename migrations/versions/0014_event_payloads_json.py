"""Session event payloads and the tool-call ledger's arguments and results are stored as
`json` (the text as written) rather than `jsonb`: they are written once, read whole and
never searched inside, so the binary form bought nothing and cost space and parsing on
every step. A durable step's model-response event is about a quarter smaller (its keys and
entries carried jsonb's per-value headers) and PostgreSQL no longer converts each payload.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-26 02:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = (("session_events", "data"), ("tool_calls", "arguments"), ("tool_calls", "result"))


def upgrade() -> None:
    for table, column in _COLUMNS:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE json USING {column}::json")


def downgrade() -> None:
    for table, column in _COLUMNS:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE jsonb USING {column}::jsonb")
