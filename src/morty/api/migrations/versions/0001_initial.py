"""Initial schema: functions, secrets, versions, aliases, builds, invocation records.

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


def _function_id(primary_key: bool = False) -> sa.Column[str]:
    return sa.Column(
        "function_id",
        sa.String(32),
        sa.ForeignKey("functions.id", ondelete="CASCADE"),
        nullable=False,
        primary_key=primary_key,
        index=not primary_key,
    )


def upgrade() -> None:
    op.create_table(
        "functions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(63), nullable=False, unique=True),
        sa.Column("runtime", sa.String(64), nullable=False),
        sa.Column("isolation", sa.String(16), nullable=False),
        sa.Column("env", sa.JSON, nullable=False),
        sa.Column("memory_mib", sa.Integer, nullable=False),
        sa.Column("vcpus", sa.Integer, nullable=False),
        sa.Column("timeout_seconds", sa.Integer, nullable=False),
        sa.Column("min_instances", sa.Integer, nullable=False),
        sa.Column("max_instances", sa.Integer, nullable=False),
        sa.Column("concurrency", sa.Integer, nullable=False),
        sa.Column("idle_timeout_seconds", sa.Integer, nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("updated_at", _timestamp(), nullable=False),
    )
    op.create_table(
        "secrets",
        _function_id(primary_key=True),
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("ciphertext", sa.LargeBinary, nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("updated_at", _timestamp(), nullable=False),
    )
    op.create_table(
        "versions",
        sa.Column("id", sa.String(32), primary_key=True),
        _function_id(),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_message", sa.Text, nullable=False),
        sa.Column("code_key", sa.String(512), nullable=False, unique=True),
        sa.Column("size_bytes", sa.BigInteger, nullable=True),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("image", sa.String(512), nullable=True),
        sa.Column("digest", sa.String(128), nullable=True),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("uploaded_at", _timestamp(), nullable=True),
        sa.Column("ready_at", _timestamp(), nullable=True),
        sa.UniqueConstraint("function_id", "version"),
    )
    op.create_table(
        "aliases",
        _function_id(primary_key=True),
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column(
            "version_id", sa.String(32), sa.ForeignKey("versions.id", ondelete="CASCADE"), nullable=False, index=True
        ),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("updated_at", _timestamp(), nullable=False),
    )
    op.create_table(
        "builds",
        sa.Column("id", sa.String(32), primary_key=True),
        _function_id(),
        sa.Column(
            "version_id", sa.String(32), sa.ForeignKey("versions.id", ondelete="CASCADE"), nullable=False, index=True
        ),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("log", sa.Text, nullable=False),
        sa.Column("image", sa.String(512), nullable=True),
        sa.Column("digest", sa.String(128), nullable=True),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("started_at", _timestamp(), nullable=True),
        sa.Column("finished_at", _timestamp(), nullable=True),
    )
    op.create_table(
        "invocations",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("function_id", sa.String(32), sa.ForeignKey("functions.id", ondelete="CASCADE"), nullable=False),
        sa.Column("version", sa.String(64), nullable=True),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("started_at", _timestamp(), nullable=False),
        sa.Column("finished_at", _timestamp(), nullable=False),
        sa.Column("queue_ms", sa.Float, nullable=False),
        sa.Column("provision_ms", sa.Float, nullable=False),
        sa.Column("upstream_ms", sa.Float, nullable=False),
        sa.Column("path", sa.String(16), nullable=False),
        sa.Column("instance", sa.String(128), nullable=True),
        sa.Column("bytes_in", sa.BigInteger, nullable=False),
        sa.Column("bytes_out", sa.BigInteger, nullable=False),
        sa.Column("received_at", _timestamp(), nullable=False),
    )
    op.create_index("ix_invocations_function_started", "invocations", ["function_id", "started_at", "seq"])


def downgrade() -> None:
    op.drop_index("ix_invocations_function_started", table_name="invocations")
    for table in ("invocations", "builds", "aliases", "versions", "secrets", "functions"):
        op.drop_table(table)
