"""Audit chains: one hash chain per session and one per tenant, appended by one function.

`audit_log.chain_seq` numbers the entries of a chain (a chain is the tenant's entries with
one `session_id`, or with none); a unique index on (tenant_id, session_id, chain_seq) makes a
fork impossible and serves the head lookup, the chain walk of verification and the
session filter (it replaces `ix_audit_log_session_id`). `audit_append()` appends a batch in
one round trip: it takes each chain's advisory lock, then reads the head and inserts, in
statements of its own so each sees every append committed before its lock was granted.
`audit_entry_hash()` is the entry hash of docs/audit.md (verification recomputes it in
Python). Payload rows may be deleted (erasure) but never changed or truncated.

Nothing wrote `audit_log` before this revision, so the new NOT NULL column needs no backfill
(and could not have one: the table refuses UPDATE).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Netstrings (`<byte length>:<utf-8 bytes>,`) of the fields, in this order, hashed with
# SHA-256: app/observability/audit.py `entry_hash` is the same definition in Python.
# STABLE like their bodies (convert_to, to_char), so the planner inlines them: declared
# IMMUTABLE they ran as function calls, 2.5 times slower.
_NETSTRING = """
CREATE FUNCTION audit_netstring(field text) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT octet_length(convert_to(field, 'UTF8'))::text || ':' || field || ','
$$
"""

_ENTRY_HASH = """
CREATE FUNCTION audit_entry_hash(
    tenant_id text, session_id text, chain_seq bigint, actor text, action text,
    created_at timestamptz, payload_hash text, prev_hash text
) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT encode(sha256(convert_to(
        audit_netstring('audit/v1') || audit_netstring(tenant_id)
        || audit_netstring(coalesce(session_id, '')) || audit_netstring(chain_seq::text)
        || audit_netstring(actor) || audit_netstring(action)
        || audit_netstring(to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
        || audit_netstring(payload_hash) || audit_netstring(prev_hash),
        'UTF8')), 'hex')
$$
"""

_APPEND = """
CREATE FUNCTION audit_append(
    tenant_ids text[], session_ids text[], actors text[], actions text[],
    payload_hashes text[], payloads text[]
) RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
    chain record;
    recorded_at timestamptz;
    head_seq bigint;
    head_hash text;
    new_id bigint;
    ids bigint[] := '{}';
BEGIN
    -- Every chain the batch touches is locked until commit, in key order (so two batches
    -- cannot deadlock on each other). The head is read after the lock by a statement of
    -- its own: in READ COMMITTED it then sees every append committed before the lock was
    -- granted. (One statement that locked and read would read with its start snapshot and
    -- fork the chain.)
    FOR chain IN
        SELECT DISTINCT t, s FROM unnest(tenant_ids, session_ids) AS u(t, s) ORDER BY t, s
    LOOP
        PERFORM pg_advisory_xact_lock(
            hashtextextended('audit:' || chain.t || ':' || coalesce(chain.s, ''), 0));
    END LOOP;
    recorded_at := clock_timestamp();
    FOR i IN 1 .. coalesce(array_length(tenant_ids, 1), 0) LOOP
        IF session_ids[i] IS NULL THEN
            SELECT chain_seq, entry_hash INTO head_seq, head_hash FROM audit_log
            WHERE tenant_id = tenant_ids[i] AND session_id IS NULL
            ORDER BY chain_seq DESC LIMIT 1;
        ELSE
            SELECT chain_seq, entry_hash INTO head_seq, head_hash FROM audit_log
            WHERE tenant_id = tenant_ids[i] AND session_id = session_ids[i]
            ORDER BY chain_seq DESC LIMIT 1;
        END IF;
        head_seq := coalesce(head_seq, 0) + 1;
        head_hash := coalesce(head_hash, repeat('0', 64));
        INSERT INTO audit_log (tenant_id, session_id, chain_seq, actor, action, payload_hash,
                               prev_hash, entry_hash, created_at)
        VALUES (tenant_ids[i], session_ids[i], head_seq, actors[i], actions[i],
                payload_hashes[i], head_hash,
                audit_entry_hash(tenant_ids[i], session_ids[i], head_seq, actors[i], actions[i],
                                 recorded_at, payload_hashes[i], head_hash),
                recorded_at)
        RETURNING audit_id INTO new_id;
        INSERT INTO audit_payloads (audit_id, payload) VALUES (new_id, payloads[i]::jsonb);
        ids := ids || new_id;
    END LOOP;
    RETURN ids;
END
$$
"""

_PAYLOADS_REFUSE_CHANGE = """
CREATE FUNCTION audit_payloads_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_payloads rows are erased (DELETE), never changed: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$
"""


def upgrade() -> None:
    op.add_column("audit_log", sa.Column("chain_seq", sa.BigInteger(), nullable=False))
    op.drop_index("ix_audit_log_session_id", table_name="audit_log")
    op.create_index(
        "uq_audit_log_tenant_id_session_id_chain_seq",
        "audit_log",
        ["tenant_id", "session_id", "chain_seq"],
        unique=True,
        postgresql_nulls_not_distinct=True,
    )
    op.execute(_NETSTRING)
    op.execute(_ENTRY_HASH)
    op.execute(_APPEND)
    op.execute(_PAYLOADS_REFUSE_CHANGE)
    op.execute(
        """
        CREATE TRIGGER audit_payloads_no_update
        BEFORE UPDATE ON audit_payloads
        FOR EACH ROW EXECUTE FUNCTION audit_payloads_refuse_change()
        """
    )
    op.execute(
        """
        CREATE TRIGGER audit_payloads_no_truncate
        BEFORE TRUNCATE ON audit_payloads
        FOR EACH STATEMENT EXECUTE FUNCTION audit_payloads_refuse_change()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS audit_payloads_no_truncate ON audit_payloads")
    op.execute("DROP TRIGGER IF EXISTS audit_payloads_no_update ON audit_payloads")
    op.execute("DROP FUNCTION IF EXISTS audit_payloads_refuse_change()")
    op.execute(
        "DROP FUNCTION IF EXISTS audit_append(text[], text[], text[], text[], text[], text[])"
    )
    op.execute(
        "DROP FUNCTION IF EXISTS audit_entry_hash(text, text, bigint, text, text, timestamptz, text, text)"
    )
    op.execute("DROP FUNCTION IF EXISTS audit_netstring(text)")
    op.drop_index(
        "uq_audit_log_tenant_id_session_id_chain_seq",
        table_name="audit_log",
        postgresql_nulls_not_distinct=True,
    )
    op.create_index("ix_audit_log_session_id", "audit_log", ["session_id"], unique=False)
    op.drop_column("audit_log", "chain_seq")
