"""SQLite statements run on the event loop's own thread, behind the async interfaces the services use.

Why: on this kind of machine a trip to aiosqlite's worker thread costs ~0.2 ms of CPU and a statement
through SQLAlchemy's async engine ~1 ms, all of it thread hand-offs, while SQLite itself answers in
microseconds (`SELECT 1`: 3 µs with sqlite3). With WAL and `synchronous=NORMAL` a commit does not fsync,
so running a statement inline blocks the loop for about as long as building it does.

The session look-alike implements what the services call on an `AsyncSession` (execute, scalar(s), get,
add, delete, merge, flush, refresh, begin); a method it lacks fails loudly in the tests that use it.
Writers stay serialised by `SqlDatabase.serialised()`, so an inline write never waits on SQLite's lock
while another coroutine of the same process holds it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy.engine import Connection, Result, ScalarResult
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql import Executable

T = TypeVar("T")


class InlineConnection:
    """A synchronous connection behind `Statements`: each call runs at once, on this thread."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    async def execute(self, statement: Executable, parameters: Mapping[str, Any] | None = None) -> Result[Any]:
        return self._connection.execute(statement, parameters)

    async def scalar(self, statement: Executable, parameters: Mapping[str, Any] | None = None) -> Any:
        return self._connection.scalar(statement, parameters)

    async def scalars(self, statement: Executable, parameters: Mapping[str, Any] | None = None) -> ScalarResult[Any]:
        return self._connection.scalars(statement, parameters)


class InlineSession:
    """A synchronous ORM session with `AsyncSession`'s calling convention."""

    def __init__(self, session: Session) -> None:
        self.sync_session = session

    @property
    def info(self) -> dict[Any, Any]:
        return self.sync_session.info

    async def __aenter__(self) -> InlineSession:
        return self

    async def __aexit__(self, *_: object) -> None:
        self.sync_session.close()

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[InlineSession]:
        with self.sync_session.begin():
            yield self

    async def execute(self, statement: Executable, params: Any = None, **kw: Any) -> Result[Any]:
        return self.sync_session.execute(statement, params, **kw)

    async def scalar(self, statement: Executable, params: Any = None, **kw: Any) -> Any:
        return self.sync_session.scalar(statement, params, **kw)

    async def scalars(self, statement: Executable, params: Any = None, **kw: Any) -> ScalarResult[Any]:
        return self.sync_session.scalars(statement, params, **kw)

    async def get(self, entity: type[T], ident: Any, **kw: Any) -> T | None:
        return self.sync_session.get(entity, ident, **kw)

    def add(self, instance: object) -> None:
        self.sync_session.add(instance)

    def add_all(self, instances: Iterable[object]) -> None:
        self.sync_session.add_all(instances)

    async def delete(self, instance: object) -> None:
        self.sync_session.delete(instance)

    async def merge(self, instance: T, **kw: Any) -> T:
        return self.sync_session.merge(instance, **kw)

    async def flush(self, objects: Sequence[object] | None = None) -> None:
        self.sync_session.flush(objects)

    async def refresh(self, instance: object, attribute_names: Iterable[str] | None = None) -> None:
        self.sync_session.refresh(instance, attribute_names)

    async def commit(self) -> None:
        self.sync_session.commit()

    async def rollback(self) -> None:
        self.sync_session.rollback()

    async def close(self) -> None:
        self.sync_session.close()


class InlineSessionMaker:
    """Called like `async_sessionmaker`: `async with maker() as session, session.begin(): ...`."""

    def __init__(self, maker: sessionmaker[Session]) -> None:
        self._maker = maker

    def __call__(self) -> InlineSession:
        return InlineSession(self._maker())
