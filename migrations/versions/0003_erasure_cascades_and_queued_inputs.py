"""Erasure cascades and queued inputs.

Erasing a session removes its webhook deliveries too (ON DELETE CASCADE instead of SET
NULL); `sessions.pending_inputs` holds input sent with `if_busy: queue` during a run.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 16:51:48.822143
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "sessions",
        sa.Column(
            "pending_inputs",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
    )
    op.drop_constraint(
        op.f("fk_webhook_outbox_session_id_sessions"), "webhook_outbox", type_="foreignkey"
    )
    op.create_foreign_key(
        op.f("fk_webhook_outbox_session_id_sessions"),
        "webhook_outbox",
        "sessions",
        ["session_id"],
        ["session_id"],
        ondelete="CASCADE",
    )


def downgrade() -> None:
    op.drop_constraint(
        op.f("fk_webhook_outbox_session_id_sessions"), "webhook_outbox", type_="foreignkey"
    )
    op.create_foreign_key(
        op.f("fk_webhook_outbox_session_id_sessions"),
        "webhook_outbox",
        "sessions",
        ["session_id"],
        ["session_id"],
        ondelete="SET NULL",
    )
    op.drop_column("sessions", "pending_inputs")
