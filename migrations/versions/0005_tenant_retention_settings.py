"""Per-tenant retention of finished sessions (NULL: the defaults in settings).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 17:00:05.333893
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("tenants", sa.Column("retention_days", sa.Float(), nullable=True))
    op.add_column("tenants", sa.Column("retention_keep_last", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("tenants", "retention_keep_last")
    op.drop_column("tenants", "retention_days")
