"""The SQL layer every service uses: SQLAlchemy on SQLite (WAL, the default) or PostgreSQL, Alembic
migrations run at start, and serialised writers on SQLite.

On SQLite, sessions, `statements()` and migrations run inline on the event loop's thread
(`servicekit.inline_sqlite` says why), with no async engine at all. PostgreSQL uses an async engine
(asyncpg) throughout.

Each service subclasses `SqlDatabase` for its own `transaction()` (what a write must lock first and how
a failed write is reported differs between them) and hands it its own migrations folder.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, cast

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection, Result, ScalarResult, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import sessionmaker
from sqlalchemy.sql import Executable

from servicekit.inline_sqlite import InlineConnection, InlineSessionMaker


class Statements(Protocol):
    """What `SqlDatabase.statements()` yields: a Core connection's `execute`, `scalar` and `scalars`."""

    async def execute(self, statement: Executable, parameters: Mapping[str, Any] | None = None) -> Result[Any]: ...

    async def scalar(self, statement: Executable, parameters: Mapping[str, Any] | None = None) -> Any: ...

    async def scalars(
        self, statement: Executable, parameters: Mapping[str, Any] | None = None
    ) -> ScalarResult[Any]: ...


def normalise_url(url: str) -> str:
    """Accept plain `sqlite:///` and `postgresql://` URLs and pick the drivers: SQLite's own module (used
    inline, see `servicekit.inline_sqlite`), asyncpg for PostgreSQL."""
    parsed = make_url(url)
    if parsed.drivername in ("sqlite", "sqlite+aiosqlite"):
        parsed = parsed.set(drivername="sqlite+pysqlite")
    elif parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    return parsed.render_as_string(hide_password=False)


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def is_unique_violation(exc: IntegrityError) -> bool:
    """A concurrent writer won a race on a unique key (anything else is a bug, not a conflict)."""
    original = exc.orig
    return getattr(original, "sqlstate", None) == "23505" or "UNIQUE constraint failed" in str(original)


class SqlDatabase:
    """Owns the engine and the session factory. `migrations` is an Alembic script folder whose `env.py`
    runs on the connection found in `config.attributes["connection"]`."""

    def __init__(self, url: str, *, migrations: Path) -> None:
        self.url = normalise_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        self.migrations = migrations
        self._inline: Engine | None = None
        self._async: AsyncEngine | None = None
        if self.is_sqlite:
            path = make_url(self.url).database
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._inline = create_engine(self.url, connect_args={"timeout": 30})
            event.listen(self._inline, "connect", _sqlite_pragmas)
            # Duck-typed: InlineSession offers the AsyncSession methods the services use.
            self.sessions = cast(
                async_sessionmaker[AsyncSession],
                InlineSessionMaker(sessionmaker(self._inline, expire_on_commit=False)),
            )
        else:
            self._async = create_async_engine(self.url, pool_pre_ping=True)
            self.sessions = async_sessionmaker(self._async, expire_on_commit=False)
        self._write_lock = asyncio.Lock()

    async def migrate(self) -> None:
        """Bring the schema to the newest migration. On SQLite this runs inline, before the service takes
        requests: a migration holds the only writer anyway."""
        if self._inline is not None:
            with self._inline.begin() as connection:
                self._upgrade(connection)
            return
        assert self._async is not None
        async with self._async.begin() as connection:
            await connection.run_sync(self._upgrade)

    def serialised(self) -> AbstractAsyncContextManager[Any]:
        """Held around every write transaction: SQLite has one writer anyway and would answer a second
        one with `database is locked`; PostgreSQL needs no lock here."""
        return self._write_lock if self.is_sqlite else nullcontext()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as session:
            yield session

    @asynccontextmanager
    async def statements(self, *, write: bool) -> AsyncIterator[Statements]:
        """One transaction of Core statements, committed when the block ends (rolled back on an exception);
        a write one holds `serialised()`.
        Statements built once (with `bindparam`) and reused skip SQLAlchemy's per-statement construction,
        which costs more than SQLite's work."""
        async with self.serialised() if write else nullcontext():
            if self._inline is not None:
                with self._inline.begin() as connection:
                    yield InlineConnection(connection)
            else:
                assert self._async is not None
                async with self._async.begin() as async_connection:
                    yield async_connection

    async def close(self) -> None:
        if self._async is not None:
            await self._async.dispose()
        if self._inline is not None:
            self._inline.dispose()

    def _upgrade(self, connection: Connection) -> None:
        config = Config()
        config.set_main_option("script_location", str(self.migrations))
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
