"""Runtime counters and the demo support tables.

`sessions.event_seq` (event numbering inside the fenced write), `tenants.running_sessions`
(per-tenant running caps), and the demo orders (seeded) and refunds of the built-in support
tools.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 15:59:34.355427
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


DEMO_ORDERS = [
    {
        "order_id": "ord_1001",
        "customer": "Ada Lovelace",
        "item": "Mechanical keyboard",
        "amount_usd": 149.00,
        "status": "delivered",
    },
    {
        "order_id": "ord_1002",
        "customer": "Alan Turing",
        "item": "Noise-cancelling headphones",
        "amount_usd": 299.00,
        "status": "delivered",
    },
    {
        "order_id": "ord_1003",
        "customer": "Grace Hopper",
        "item": "USB-C dock",
        "amount_usd": 89.50,
        "status": "shipped",
    },
    {
        "order_id": "ord_1004",
        "customer": "Edsger Dijkstra",
        "item": "Standing desk",
        "amount_usd": 549.00,
        "status": "delivered",
    },
    {
        "order_id": "ord_1005",
        "customer": "Barbara Liskov",
        "item": "Monitor arm",
        "amount_usd": 64.99,
        "status": "processing",
    },
    {
        "order_id": "ord_1006",
        "customer": "Donald Knuth",
        "item": "Fountain pen",
        "amount_usd": 42.00,
        "status": "delivered",
    },
    {
        "order_id": "ord_1007",
        "customer": "Margaret Hamilton",
        "item": "Webcam",
        "amount_usd": 79.00,
        "status": "returned",
    },
    {
        "order_id": "ord_1008",
        "customer": "Ken Thompson",
        "item": "Chess set",
        "amount_usd": 120.00,
        "status": "delivered",
    },
]


def upgrade() -> None:
    op.create_table(
        "demo_orders",
        sa.Column("order_id", sa.String(length=32), nullable=False),
        sa.Column("customer", sa.Text(), nullable=False),
        sa.Column("item", sa.Text(), nullable=False),
        sa.Column("amount_usd", sa.Numeric(precision=10, scale=2), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("order_id", name=op.f("pk_demo_orders")),
    )
    op.create_table(
        "demo_refunds",
        sa.Column("refund_id", sa.String(length=40), nullable=False),
        sa.Column("order_id", sa.String(length=32), nullable=False),
        sa.Column("amount_usd", sa.Numeric(precision=10, scale=2), nullable=False),
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("session_id", sa.String(length=40), nullable=False),
        sa.Column("tool_use_id", sa.String(length=128), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["order_id"],
            ["demo_orders.order_id"],
            name=op.f("fk_demo_refunds_order_id_demo_orders"),
        ),
        sa.PrimaryKeyConstraint("refund_id", name=op.f("pk_demo_refunds")),
    )
    op.add_column(
        "sessions", sa.Column("event_seq", sa.Integer(), server_default="0", nullable=False)
    )
    op.add_column(
        "tenants", sa.Column("running_sessions", sa.Integer(), server_default="0", nullable=False)
    )
    op.create_index("ix_demo_refunds_session_id", "demo_refunds", ["session_id"], unique=False)
    demo_orders = sa.table(
        "demo_orders",
        sa.column("order_id", sa.String),
        sa.column("customer", sa.Text),
        sa.column("item", sa.Text),
        sa.column("amount_usd", sa.Numeric),
        sa.column("status", sa.String),
    )
    op.bulk_insert(demo_orders, DEMO_ORDERS)


def downgrade() -> None:
    op.drop_column("tenants", "running_sessions")
    op.drop_column("sessions", "event_seq")
    op.drop_index("ix_demo_refunds_session_id", table_name="demo_refunds")
    op.drop_table("demo_refunds")
    op.drop_table("demo_orders")
