"""Engine set-up, migrations and the transaction helper every write goes through."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, select
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from rik.controller.tables import RV_COUNTER, CounterRow

MIGRATIONS = Path(__file__).with_name("migrations")


def normalise_url(url: str) -> str:
    """Accept plain `sqlite:///` and `postgresql://` URLs and pick the async drivers."""
    parsed = make_url(url)
    if parsed.drivername in ("sqlite", "sqlite+pysqlite"):
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    elif parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    return parsed.render_as_string(hide_password=False)


class Database:
    """Owns the engine. `transaction()` is the only way to write: on SQLite it also serialises the
    writers of this process, which SQLite would otherwise answer with `database is locked`."""

    def __init__(self, url: str) -> None:
        self.url = normalise_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if self.is_sqlite:
            path = make_url(self.url).database
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            kwargs = {"connect_args": {"timeout": 30}}
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._write_lock = asyncio.Lock()
        self._changed = asyncio.Event()

    async def migrate(self) -> None:
        async with self.engine.begin() as connection:
            await connection.run_sync(_upgrade)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A write transaction. Writers are serialised: on SQLite by a lock in this process (SQLite
        has one writer anyway), on PostgreSQL by locking the resource-version counter row first.
        Taking that one lock before any other makes deadlocks between writers impossible, and
        resource versions commit in order, which the watch relies on."""
        async with (
            self._write_lock if self.is_sqlite else _nullcontext(),
            self.sessions() as session,
            session.begin(),
        ):
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

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as session:
            yield session

    async def close(self) -> None:
        await self.engine.dispose()


@asynccontextmanager
async def _nullcontext() -> AsyncIterator[None]:
    yield


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _upgrade(connection: Connection) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
