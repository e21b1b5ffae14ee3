"""Session event types are the enum `session_event_type`: a closed set the database checks,
stored in 4 bytes rather than as text (`model.response` took 15). A new event type adds
its value here first (`ALTER TYPE session_event_type ADD VALUE ...` in a migration).

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-26 02:45:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As of this revision (app.sessions.events.stored_event_types()).
_TYPES = (
    "session.queued",
    "session.running",
    "session.awaiting_approval",
    "session.awaiting_input",
    "session.completed",
    "session.failed",
    "session.cancelled",
    "session.timed_out",
    "model.response",
    "tool.result",
    "platform.note",
    "user.message",
)


def upgrade() -> None:
    values = ", ".join(f"'{value}'" for value in _TYPES)
    op.execute(f"CREATE TYPE session_event_type AS ENUM ({values})")
    op.execute(
        "ALTER TABLE session_events ALTER COLUMN type TYPE session_event_type"
        " USING type::session_event_type"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE session_events ALTER COLUMN type TYPE varchar(64) USING type::text")
    op.execute("DROP TYPE session_event_type")
