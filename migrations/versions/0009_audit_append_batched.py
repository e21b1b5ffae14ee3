"""audit_append: within a batch, an entry on the same chain as the one before it links to
it without reading the head again; the payloads go in with one INSERT.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-25 19:05:00
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_APPEND = """
CREATE OR REPLACE FUNCTION audit_append(
    tenant_ids text[], session_ids text[], actors text[], actions text[],
    payload_hashes text[], payloads text[]
) RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
    chain record;
    recorded_at timestamptz;
    head_seq bigint;
    head_hash text;
    new_hash text;
    new_id bigint;
    ids bigint[] := '{}';
    previous_tenant text;
    previous_session text;
    have_head boolean := false;
BEGIN
    -- Every chain the batch touches is locked until commit, in key order (so two batches
    -- cannot deadlock on each other). The head is read after the lock by a statement of
    -- its own: in READ COMMITTED it then sees every append committed before the lock was
    -- granted. (One statement that locked and read would read with its start snapshot and
    -- fork the chain.) An entry on the same chain as the entry before it links to that one.
    FOR chain IN
        SELECT DISTINCT t, s FROM unnest(tenant_ids, session_ids) AS u(t, s) ORDER BY t, s
    LOOP
        PERFORM pg_advisory_xact_lock(
            hashtextextended('audit:' || chain.t || ':' || coalesce(chain.s, ''), 0));
    END LOOP;
    recorded_at := clock_timestamp();
    FOR i IN 1 .. coalesce(array_length(tenant_ids, 1), 0) LOOP
        IF NOT (have_head AND tenant_ids[i] = previous_tenant
                AND session_ids[i] IS NOT DISTINCT FROM previous_session) THEN
            head_seq := NULL;
            head_hash := NULL;
            IF session_ids[i] IS NULL THEN
                SELECT chain_seq, entry_hash INTO head_seq, head_hash FROM audit_log
                WHERE tenant_id = tenant_ids[i] AND session_id IS NULL
                ORDER BY chain_seq DESC LIMIT 1;
            ELSE
                SELECT chain_seq, entry_hash INTO head_seq, head_hash FROM audit_log
                WHERE tenant_id = tenant_ids[i] AND session_id = session_ids[i]
                ORDER BY chain_seq DESC LIMIT 1;
            END IF;
            head_seq := coalesce(head_seq, 0);
            head_hash := coalesce(head_hash, repeat('0', 64));
        END IF;
        head_seq := head_seq + 1;
        new_hash := audit_entry_hash(tenant_ids[i], session_ids[i], head_seq, actors[i],
                                     actions[i], recorded_at, payload_hashes[i], head_hash);
        INSERT INTO audit_log (tenant_id, session_id, chain_seq, actor, action, payload_hash,
                               prev_hash, entry_hash, created_at)
        VALUES (tenant_ids[i], session_ids[i], head_seq, actors[i], actions[i],
                payload_hashes[i], head_hash, new_hash, recorded_at)
        RETURNING audit_id INTO new_id;
        ids := ids || new_id;
        head_hash := new_hash;
        previous_tenant := tenant_ids[i];
        previous_session := session_ids[i];
        have_head := true;
    END LOOP;
    INSERT INTO audit_payloads (audit_id, payload)
    SELECT id, payload::jsonb FROM unnest(ids, payloads) AS p(id, payload);
    RETURN ids;
END
$$
"""


def upgrade() -> None:
    op.execute(_APPEND)


def downgrade() -> None:
    # Back to 0006's version (one head read and one payload INSERT per entry).
    path = Path(__file__).with_name("0006_audit_chain.py")
    spec = importlib.util.spec_from_file_location("audit_chain_0006", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    op.execute(module._APPEND.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
