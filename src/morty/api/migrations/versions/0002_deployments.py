"""Deployments: each version's key in the orchestrator, and the instances Morty runs.

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
        sa.Column("start_path", sa.String(16), nullable=False),
        sa.Column("provision_ms", sa.Float, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_active_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("instances")
    with op.batch_alter_table("versions") as batch:
        batch.drop_constraint("uq_versions_deployment_key", type_="unique")
        batch.drop_column("deployment_key")
