"""Alembic environment: runs migrations on the connection the controller hands over in `config.attributes`."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from rik.controller.tables import Base

connection: Connection | None = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("rik migrations run through rik.controller.database.migrate()")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
