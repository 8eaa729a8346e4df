"""The controller's database: the shared SQL layer plus the transaction every write goes through."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from rik.controller.tables import RV_COUNTER, CounterRow
from servicekit.database import SqlDatabase, normalise_url

MIGRATIONS = Path(__file__).with_name("migrations")
__all__ = ["MIGRATIONS", "Database", "normalise_url"]


class Database(SqlDatabase):
    def __init__(self, url: str) -> None:
        super().__init__(url, migrations=MIGRATIONS)
        self._changed = asyncio.Event()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A write transaction. Writers are serialised: on SQLite by a lock in this process (SQLite
        has one writer anyway), on PostgreSQL by locking the resource-version counter row first.
        Taking that one lock before any other makes deadlocks between writers impossible, and
        resource versions commit in order, which the watch relies on."""
        async with self.serialised(), self.sessions() as session, session.begin():
            if not self.is_sqlite:
                await session.execute(select(CounterRow.value).where(CounterRow.name == RV_COUNTER).with_for_update())
            yield session
            for hook in session.info.pop("before_commit", []):
                await hook(session)
        self._notify_change()

    def change_signal(self) -> asyncio.Event:
        """An event set at the next committed write. Take it *before* reading, then wait on it, and no
        change can slip between the read and the wait."""
        return self._changed

    def _notify_change(self) -> None:
        signal, self._changed = self._changed, asyncio.Event()
        signal.set()
