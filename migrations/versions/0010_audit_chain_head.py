"""audit_chain_head(): the head of a session's audit chain as `<chain_seq>:<entry_hash>`, read afresh.

A worker holding a session's lease links that session's audit entries itself (the hashes
computed in Python, the rows written by plain INSERTs in the statement of the step they
record; app/observability/audit.py `ChainHead`), so it needs the chain's head once: the claim
returns it, computed after the claim's own `audit_append()`. `after` is only there to order
the call after that append (arguments are evaluated first); a VOLATILE function reads with a
snapshot of its own, so it sees the rows the append wrote in the same statement.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-25 22:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_HEAD = """
CREATE FUNCTION audit_chain_head(tenant_id text, session_id text, after anyelement)
RETURNS text LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    head text;
BEGIN
    SELECT a.chain_seq::text || ':' || a.entry_hash INTO head FROM audit_log a
    WHERE a.tenant_id = audit_chain_head.tenant_id
      AND a.session_id = audit_chain_head.session_id
    ORDER BY a.chain_seq DESC LIMIT 1;
    RETURN coalesce(head, '0:' || repeat('0', 64));
END
$$
"""


def upgrade() -> None:
    op.execute(_HEAD)


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS audit_chain_head(text, text, anyelement)")
