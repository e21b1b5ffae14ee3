"""Approvals: who started the session (no self-approval), one request per tool call, and
the domain of `on_timeout` and `reviewers_required` checked by the database.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("approvals", sa.Column("session_created_by", sa.Text(), nullable=True))
    op.create_unique_constraint(
        op.f("uq_approvals_session_id_tool_use_id"), "approvals", ["session_id", "tool_use_id"]
    )
    op.create_check_constraint(
        op.f("ck_approvals_on_timeout_valid"), "approvals", "on_timeout IN ('approve', 'reject')"
    )
    op.create_check_constraint(
        op.f("ck_approvals_reviewers_required_positive"), "approvals", "reviewers_required >= 1"
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_approvals_reviewers_required_positive"), "approvals", type_="check")
    op.drop_constraint(op.f("ck_approvals_on_timeout_valid"), "approvals", type_="check")
    op.drop_constraint(op.f("uq_approvals_session_id_tool_use_id"), "approvals", type_="unique")
    op.drop_column("approvals", "session_created_by")
