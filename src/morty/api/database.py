"""Morty's database: the shared SQL layer plus the transaction every write goes through."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from morty.api.errors import Conflict
from servicekit.database import SqlDatabase, is_unique_violation

MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "morty_alembic_version"
"""Not Alembic's default name, so Morty can share a PostgreSQL database with another application."""


class Database(SqlDatabase):
    """On PostgreSQL writers run concurrently, status changes lock their rows (`FOR UPDATE`), and a lost
    race on a unique constraint becomes a 409."""

    def __init__(self, url: str) -> None:
        super().__init__(url, migrations=MIGRATIONS)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        try:
            async with self.serialised(), self.sessions() as session, session.begin():
                yield session
        except IntegrityError as exc:
            if not is_unique_violation(exc):
                raise
            raise Conflict("conflicting concurrent change; retry the request", str(exc.orig)[:500]) from None
