"""The gateway's database: the shared SQL layer, its own migrations, and the change feed.

Every write bumps one resource-version counter inside its transaction and appends to `gateway_changes`,
so a watcher that resumes from version N sees every later change exactly once, in commit order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import bindparam, delete, insert, select, update

from gateway.errors import Conflict, InvalidReference, NotFound
from gateway.store.tables import RV_COUNTER, ChangeRow, CounterRow, ObjectRow
from servicekit.database import SqlDatabase, Statements

MIGRATIONS = Path(__file__).with_name("migrations")
KINDS = ("service", "target", "route")
# Changes older than this many versions are compacted away; a watcher further behind gets a snapshot.
CHANGE_RETENTION = 100_000

__all__ = ["KINDS", "Change", "GatewayDatabase", "StoredObject"]

# Statements built once: SQLAlchemy's construction of a statement costs more than SQLite running it.
_KEY = (ObjectRow.kind == bindparam("k")) & (ObjectRow.name == bindparam("n"))
_OBJECT_COLUMNS = (
    ObjectRow.kind, ObjectRow.name, ObjectRow.spec, ObjectRow.resource_version, ObjectRow.created_at,
    ObjectRow.updated_at,
)  # fmt: skip
_OBJECT = select(*_OBJECT_COLUMNS).where(_KEY)

_EXISTS = select(ObjectRow.name).where(_KEY)
_ROUTES = select(ObjectRow.name, ObjectRow.spec).where(ObjectRow.kind == "route")
_TARGETS_OF = select(ObjectRow.name).where(ObjectRow.kind == "target", ObjectRow.name.startswith(bindparam("prefix")))
_INSERT_OBJECT = insert(ObjectRow)
_UPDATE_OBJECT = (
    update(ObjectRow)
    .where(_KEY)
    .values(spec=bindparam("s"), resource_version=bindparam("v"), updated_at=bindparam("at"))
)
_DELETE_OBJECT = delete(ObjectRow).where(_KEY)
_INSERT_CHANGE = insert(ChangeRow)
_COUNTER = select(CounterRow.value).where(CounterRow.name == RV_COUNTER)
_LOCK_COUNTER = _COUNTER.with_for_update()
_BUMP = (
    update(CounterRow)
    .where(CounterRow.name == RV_COUNTER)
    .values(value=CounterRow.value + 1)
    .returning(CounterRow.value)
)
_CHANGES = (
    select(ChangeRow.resource_version, ChangeRow.op, ChangeRow.kind, ChangeRow.name, ChangeRow.spec)
    .where(ChangeRow.resource_version > bindparam("rv"))
    .order_by(ChangeRow.resource_version)
    .limit(bindparam("limit"))
)


StoredObject = dict[str, Any]
Change = dict[str, Any]


class GatewayDatabase(SqlDatabase):
    def __init__(self, url: str) -> None:
        super().__init__(url, migrations=MIGRATIONS)
        self._changed = asyncio.Event()

    # Writes

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Statements]:
        """A write transaction of Core statements (a change costs a handful of statements and no ORM unit
        of work), inline on SQLite. On PostgreSQL the counter row is locked first, so versions commit in
        order."""
        async with self.statements(write=True) as session:
            if not self.is_sqlite:
                await session.execute(_LOCK_COUNTER)
            yield session
        signal, self._changed = self._changed, asyncio.Event()
        signal.set()

    async def _bump(self, session: Statements) -> int:
        value = await session.scalar(_BUMP)
        assert value is not None
        return int(value)

    async def put(self, kind: str, name: str, spec: dict[str, Any]) -> tuple[StoredObject, bool]:
        """Create or replace an object; returns it and whether it was created. Putting the spec an object
        already has changes nothing (no new version, nothing for the workers to reload), so clients may
        re-apply their whole configuration periodically for free."""
        async with self._transaction() as session:
            await self._check_references(session, kind, name, spec)
            current = (await session.execute(_OBJECT, {"k": kind, "n": name})).first()
            if current is not None and current.spec == spec:
                return _stored(current), False
            now = datetime.now(UTC)
            rv = await self._bump(session)
            values = {"kind": kind, "name": name, "spec": spec, "resource_version": rv, "updated_at": now}
            if current is None:
                await session.execute(_INSERT_OBJECT, {**values, "created_at": now})
            else:
                await session.execute(_UPDATE_OBJECT, {"k": kind, "n": name, "s": spec, "v": rv, "at": now})
            await session.execute(_INSERT_CHANGE, _change(rv, kind, name, "put", now, spec))
            await self._compact(session, rv)
        created_at = now if current is None else current.created_at
        return _stored(_Stored(kind, name, spec, rv, created_at, now)), current is None

    async def delete(self, kind: str, name: str) -> int:
        """Delete an object (a service with its targets); returns the resource version of the change."""
        async with self._transaction() as session:
            if await session.scalar(_EXISTS, {"k": kind, "n": name}) is None:
                raise NotFound(f"{kind} {name!r} does not exist")
            now = datetime.now(UTC)
            if kind == "service":
                users = await self._routes_using(session, name)
                if users:
                    raise Conflict(f"service {name!r} is used by routes {', '.join(sorted(users))}")
                for target in list(await session.scalars(_TARGETS_OF, {"prefix": f"{name}/"})):
                    rv = await self._bump(session)
                    await session.execute(_DELETE_OBJECT, {"k": "target", "n": target})
                    await session.execute(_INSERT_CHANGE, _change(rv, "target", target, "delete", now, None))
            rv = await self._bump(session)
            await session.execute(_DELETE_OBJECT, {"k": kind, "n": name})
            await session.execute(_INSERT_CHANGE, _change(rv, kind, name, "delete", now, None))
            return rv

    async def _check_references(self, session: Statements, kind: str, name: str, spec: dict[str, Any]) -> None:
        if kind == "route" and await session.scalar(_EXISTS, {"k": "service", "n": spec["service"]}) is None:
            raise InvalidReference(f"service {spec['service']!r} does not exist", field="service")
        if kind == "target":
            service = name.partition("/")[0]
            if await session.scalar(_EXISTS, {"k": "service", "n": service}) is None:
                raise NotFound(f"service {service!r} does not exist")

    async def _routes_using(self, session: Statements, service: str) -> list[str]:
        rows = await session.execute(_ROUTES)
        return [row.name for row in rows if row.spec.get("service") == service]

    async def _compact(self, session: Statements, rv: int) -> None:
        if rv % 1000 == 0:
            await session.execute(delete(ChangeRow).where(ChangeRow.resource_version <= rv - CHANGE_RETENTION))

    # Reads

    async def get(self, kind: str, name: str) -> StoredObject:
        async with self.statements(write=False) as session:
            row = (await session.execute(_OBJECT, {"k": kind, "n": name})).first()
            if row is None:
                raise NotFound(f"{kind} {name!r} does not exist")
            return _stored(row)

    async def list_objects(self, kind: str, prefix: str | None = None) -> list[StoredObject]:
        async with self.statements(write=False) as session:
            query = select(*_OBJECT_COLUMNS).where(ObjectRow.kind == kind).order_by(ObjectRow.name)
            if prefix is not None:
                query = query.where(ObjectRow.name.startswith(prefix))
            return [_stored(row) for row in await session.execute(query)]

    async def snapshot(self) -> tuple[int, list[StoredObject]]:
        """Every object (services, then targets, then routes) at one resource version."""
        async with self.statements(write=False) as session:
            rv = await session.scalar(_COUNTER)
            query = select(*_OBJECT_COLUMNS).where(ObjectRow.resource_version <= (rv or 0))
            rows = list(await session.execute(query))
        rows.sort(key=lambda row: (KINDS.index(row.kind), row.name))
        return int(rv or 0), [_stored(row) for row in rows]

    async def changes_since(self, rv: int, limit: int = 1000) -> list[Change] | None:
        """Changes after `rv` in order, or None when some were compacted away (the caller must resync).

        Every resource version has its change row, so the feed has no gaps: a first row other than
        `rv + 1`, or no row while the counter is past `rv`, means the rows after `rv` were compacted.
        Plain column reads on a connection: this runs for every change and every watcher."""
        params = {"rv": rv, "limit": limit}
        async with self.statements(write=False) as connection:
            rows = (await connection.execute(_CHANGES, params)).all()
            if not rows:
                # Reads may not share a snapshot: read the counter, then the feed again. Every version up
                # to the counter read is committed by then, so an empty feed now means compaction.
                current = await connection.scalar(_COUNTER)
                if (current or 0) <= rv:
                    return []
                rows = (await connection.execute(_CHANGES, params)).all()
        if not rows or rows[0].resource_version != rv + 1:
            return None
        return [
            {
                "type": row.op,
                "kind": row.kind,
                "name": row.name,
                "spec": row.spec,
                "resource_version": row.resource_version,
            }
            for row in rows
        ]

    async def resource_version(self) -> int:
        async with self.statements(write=False) as session:
            return int(await session.scalar(_COUNTER) or 0)

    def change_signal(self) -> asyncio.Event:
        """Set at the next write committed by this process. Take it before reading, then wait on it."""
        return self._changed


class _Stored(NamedTuple):
    kind: str
    name: str
    spec: dict[str, Any]
    resource_version: int
    created_at: datetime
    updated_at: datetime


def _stored(row: Any) -> StoredObject:
    """An object as the API shows it, from a row of `_OBJECT_COLUMNS` (or a `_Stored`)."""
    return {
        "kind": row.kind,
        "name": row.name,
        "spec": row.spec,
        "resource_version": row.resource_version,
        "created_at": _utc(row.created_at).isoformat(),
        "updated_at": _utc(row.updated_at).isoformat(),
    }


def _change(rv: int, kind: str, name: str, op: str, at: datetime, spec: dict[str, Any] | None) -> dict[str, Any]:
    """The parameters of one `gateway_changes` row."""
    return {"resource_version": rv, "kind": kind, "name": name, "op": op, "at": at, "spec": spec}


def _utc(moment: datetime) -> datetime:
    """SQLite hands timestamps back without their zone; they were written in UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
