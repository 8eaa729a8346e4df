"""Deployments: each version's key in the orchestrator, the instances Morty runs, and their logs.

Revision ID: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("versions") as batch:
        batch.add_column(sa.Column("deployment_key", sa.String(63), nullable=True))
        batch.create_unique_constraint("uq_versions_deployment_key", ["deployment_key"])
    op.create_table(
        "instances",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column(
            "function_id", sa.String(32), sa.ForeignKey("functions.id", ondelete="CASCADE"), nullable=False, index=True
        ),
        sa.Column(
            "version_id", sa.String(32), sa.ForeignKey("versions.id", ondelete="CASCADE"), nullable=False, index=True
        ),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("port", sa.Integer, nullable=False),
        sa.Column("control_host", sa.String(255), nullable=True),
        sa.Column("control_port", sa.Integer, nullable=True),
        sa.Column("logs_seq", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("start_path", sa.String(16), nullable=False),
        sa.Column("provision_ms", sa.Float, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_active_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "invocation_logs",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("function_id", sa.String(32), sa.ForeignKey("functions.id", ondelete="CASCADE"), nullable=False),
        sa.Column("instance", sa.String(128), nullable=False),
        sa.Column("invocation", sa.String(128), nullable=True, index=True),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stream", sa.String(16), nullable=False),
        sa.Column("line", sa.Text, nullable=False),
    )
    op.create_index("ix_invocation_logs_function_ts", "invocation_logs", ["function_id", "ts", "seq"])


def downgrade() -> None:
    op.drop_index("ix_invocation_logs_function_ts", table_name="invocation_logs")
    op.drop_table("invocation_logs")
    op.drop_table("instances")
    with op.batch_alter_table("versions") as batch:
        batch.drop_constraint("uq_versions_deployment_key", type_="unique")
        batch.drop_column("deployment_key")
