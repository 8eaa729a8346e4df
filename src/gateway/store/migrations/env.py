"""Alembic environment: runs on the connection `GatewayDatabase.migrate()` hands over, with the gateway's
own version table so it can share a database with RIK and Morty."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from gateway.store.tables import Base

connection: Connection | None = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("gateway migrations run through gateway.store.database.GatewayDatabase.migrate()")
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,
    version_table="gateway_alembic_version",
)
with context.begin_transaction():
    context.run_migrations()
