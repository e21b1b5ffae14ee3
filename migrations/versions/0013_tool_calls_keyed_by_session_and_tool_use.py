"""The tool-call ledger is keyed by (session_id, tool_use_id), which identified a call
already (it was a unique constraint): the generated `tool_call_row_id` and the
(session_id, turn) index go. Each recorded call writes one index entry instead of three and
its row is 31 bytes shorter; the ledger's listing reads a session's calls by the key's prefix
and sorts them (a session has a few).

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-25 23:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_tool_calls_session_id_turn", table_name="tool_calls")
    op.drop_constraint("pk_tool_calls", "tool_calls", type_="primary")
    op.drop_constraint("uq_tool_calls_session_id_tool_use_id", "tool_calls", type_="unique")
    op.create_primary_key("pk_tool_calls", "tool_calls", ["session_id", "tool_use_id"])
    op.drop_column("tool_calls", "tool_call_row_id")


def downgrade() -> None:
    op.add_column("tool_calls", sa.Column("tool_call_row_id", sa.String(length=40), nullable=True))
    op.execute(
        "UPDATE tool_calls SET tool_call_row_id = 'tc_' || replace(gen_random_uuid()::text, '-', '')"
    )
    op.alter_column("tool_calls", "tool_call_row_id", nullable=False)
    op.drop_constraint("pk_tool_calls", "tool_calls", type_="primary")
    op.create_primary_key("pk_tool_calls", "tool_calls", ["tool_call_row_id"])
    op.create_unique_constraint(
        "uq_tool_calls_session_id_tool_use_id", "tool_calls", ["session_id", "tool_use_id"]
    )
    op.create_index(
        "ix_tool_calls_session_id_turn", "tool_calls", ["session_id", "turn"], unique=False
    )
