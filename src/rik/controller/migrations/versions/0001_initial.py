"""Initial schema: workloads, instances, nodes, the change feed, counters and leases.

Revision ID: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels = None
depends_on = None


def _timestamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "workloads",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("uid", sa.String(36), nullable=False, unique=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("resource_version", sa.BigInteger, nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("updated_at", _timestamp(), nullable=False),
    )
    op.create_table(
        "instances",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("workload", sa.String(64), nullable=False, index=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("cpu", sa.Integer, nullable=False),
        sa.Column("memory", sa.Integer, nullable=False),
        sa.Column("node", sa.String(64), nullable=True, index=True),
        sa.Column("phase", sa.String(16), nullable=False, index=True),
        sa.Column("desired_state", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(256), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("address", sa.String(64), nullable=True),
        sa.Column("ports", sa.JSON, nullable=False),
        sa.Column("resource_version", sa.BigInteger, nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("updated_at", _timestamp(), nullable=False),
    )
    op.create_table(
        "nodes",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("address", sa.String(255), nullable=False),
        sa.Column("riklet_url", sa.String(1024), nullable=False),
        sa.Column("cpu", sa.Integer, nullable=False),
        sa.Column("memory", sa.Integer, nullable=False),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("runtimes", sa.JSON, nullable=False),
        sa.Column("subnet", sa.String(64), nullable=False, unique=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("last_heartbeat", _timestamp(), nullable=False),
        sa.Column("resource_version", sa.BigInteger, nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
    )
    op.create_table(
        "events",
        sa.Column("resource_version", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("resource", sa.String(16), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("node", sa.String(64), nullable=True),
        sa.Column("prev_node", sa.String(64), nullable=True),
        sa.Column("object", sa.JSON, nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
    )
    op.create_table(
        "counters",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(
        sa.table("counters", sa.column("name", sa.String), sa.column("value", sa.BigInteger)),
        [{"name": "resource_version", "value": 0}],
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for table in ("leases", "counters", "events", "nodes", "instances", "workloads"):
        op.drop_table(table)
