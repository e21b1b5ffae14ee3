"""A tenant's running count without a hot row: claims count up on the tenant's row
(`claimed_sessions`, renamed from `running_sessions`), sessions leaving `running` count up
one of 16 stripes of `tenant_released_sessions` (by the session id's hash). Running =
claimed - released.

Before, every session that finished decremented `tenants.running_sessions` inside its own
final statement, so all of a tenant's finishing sessions queued on that one row lock, each
holding it through its commit: 500 sessions finishing together waited ~0.5 s each. Claims
(batched: one per wake-up, up to a worker's free slots) still go through the tenant's row;
finishing sessions now spread over the stripes. The claim reads the released stripes without
locking them: one it does not see yet only makes the count higher (a slot freed a moment
later), never lower, so the cap holds.

The existing count carries over: claimed = the old running count, released = 0.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-25 23:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.alter_column(
        "tenants",
        "running_sessions",
        new_column_name="claimed_sessions",
        type_=sa.BigInteger(),
        existing_type=sa.Integer(),
        existing_nullable=False,
        existing_server_default="0",
    )
    op.create_table(
        "tenant_released_sessions",
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("stripe", sa.SmallInteger(), nullable=False),
        sa.Column("released", sa.BigInteger(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.tenant_id"],
            name=op.f("fk_tenant_released_sessions_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "stripe", name=op.f("pk_tenant_released_sessions")),
    )


def downgrade() -> None:
    op.execute(
        """
        UPDATE tenants t SET claimed_sessions = GREATEST(t.claimed_sessions - r.released, 0)
        FROM (SELECT tenant_id, sum(released) AS released FROM tenant_released_sessions
              GROUP BY tenant_id) r
        WHERE r.tenant_id = t.tenant_id
        """
    )
    op.drop_table("tenant_released_sessions")
    op.alter_column(
        "tenants",
        "claimed_sessions",
        new_column_name="running_sessions",
        type_=sa.Integer(),
        existing_type=sa.BigInteger(),
        existing_nullable=False,
        existing_server_default="0",
    )
