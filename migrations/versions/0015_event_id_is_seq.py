"""A session event's id is its `seq`: the number the session row's lock gives it, gapless
and in commit order within the session, which is all the events endpoint and the SSE
stream (`Last-Event-ID`) need. The global `event_id` goes, with its index: every event is
8 bytes and one index entry lighter. (session_id, seq), unique already, is the key.

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-26 02:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_constraint("pk_session_events", "session_events", type_="primary")
    op.drop_constraint("uq_session_events_session_id_seq", "session_events", type_="unique")
    op.drop_column("session_events", "event_id")
    op.create_primary_key("pk_session_events", "session_events", ["session_id", "seq"])


def downgrade() -> None:
    op.drop_constraint("pk_session_events", "session_events", type_="primary")
    op.add_column(
        "session_events",
        sa.Column("event_id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
    )
    op.create_primary_key("pk_session_events", "session_events", ["event_id"])
    op.create_unique_constraint(
        "uq_session_events_session_id_seq", "session_events", ["session_id", "seq"]
    )
