"""The claim walks queued sessions tenant by tenant: index (tenant_id, priority DESC,
run_after, created_at) over queued rows replaces the one without tenant_id.

Before, the claim sorted every queued session (its order mixes in the tenant's running count,
which no index can serve): O(queue) per claim, 1 ms at 1,000 queued. Now it takes, for each
tenant under its cap, the first few queued sessions straight from this index, and sorts only
those.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-25 23:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_sessions_claimable", table_name="sessions")
    op.create_index(
        "ix_sessions_claimable",
        "sessions",
        ["tenant_id", sa.literal_column("priority DESC"), "run_after", "created_at"],
        unique=False,
        postgresql_where=sa.text("status = 'queued'"),
    )


def downgrade() -> None:
    op.drop_index("ix_sessions_claimable", table_name="sessions")
    op.create_index(
        "ix_sessions_claimable",
        "sessions",
        [sa.literal_column("priority DESC"), "run_after", "created_at"],
        unique=False,
        postgresql_where=sa.text("status = 'queued'"),
    )
