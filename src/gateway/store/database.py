"""The gateway's database: the shared SQL layer, its own migrations, and the change feed.

Every write bumps one resource-version counter inside its transaction and appends to `gateway_changes`,
so a watcher that resumes from version N sees every later change exactly once, in commit order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.errors import Conflict, InvalidReference, NotFound
from gateway.store.tables import RV_COUNTER, ChangeRow, CounterRow, ObjectRow
from servicekit.database import SqlDatabase

MIGRATIONS = Path(__file__).with_name("migrations")
KINDS = ("service", "target", "route")
# Changes older than this many versions are compacted away; a watcher further behind gets a snapshot.
CHANGE_RETENTION = 100_000

__all__ = ["KINDS", "Change", "GatewayDatabase", "StoredObject"]

StoredObject = dict[str, Any]
Change = dict[str, Any]


class GatewayDatabase(SqlDatabase):
    def __init__(self, url: str) -> None:
        super().__init__(url, migrations=MIGRATIONS)
        self._changed = asyncio.Event()

    # Writes

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction on a plain connection (Core statements: a change costs a handful of
        statements and no ORM unit of work). On PostgreSQL the counter row is locked first, so versions
        commit in order."""
        async with self.serialised(), self.engine.begin() as session:
            if not self.is_sqlite:
                await session.execute(select(CounterRow.value).where(CounterRow.name == RV_COUNTER).with_for_update())
            yield session
        signal, self._changed = self._changed, asyncio.Event()
        signal.set()

    async def _bump(self, session: AsyncConnection) -> int:
        value = await session.scalar(
            update(CounterRow)
            .where(CounterRow.name == RV_COUNTER)
            .values(value=CounterRow.value + 1)
            .returning(CounterRow.value)
        )
        assert value is not None
        return int(value)

    async def put(self, kind: str, name: str, spec: dict[str, Any]) -> tuple[StoredObject, bool]:
        """Create or replace an object; returns it and whether it was created. Putting the spec an object
        already has changes nothing (no new version, nothing for the workers to reload), so clients may
        re-apply their whole configuration periodically for free. Plain statements rather than the ORM's
        unit of work: a write costs a few statements and nothing else."""
        async with self._transaction() as session:
            await self._check_references(session, kind, name, spec)
            key = (ObjectRow.kind == kind) & (ObjectRow.name == name)
            current = (
                await session.execute(
                    select(
                        ObjectRow.spec, ObjectRow.resource_version, ObjectRow.created_at, ObjectRow.updated_at
                    ).where(key)
                )
            ).first()
            if current is not None and current.spec == spec:
                return {
                    "kind": kind,
                    "name": name,
                    "spec": spec,
                    "resource_version": current.resource_version,
                    "created_at": _utc(current.created_at).isoformat(),
                    "updated_at": _utc(current.updated_at).isoformat(),
                }, False
            now = datetime.now(UTC)
            rv = await self._bump(session)
            created_at = None if current is None else current.created_at
            if created_at is None:
                created_at = now
                values = {"spec": spec, "resource_version": rv, "created_at": now, "updated_at": now}
                await session.execute(insert(ObjectRow).values(kind=kind, name=name, **values))
            else:
                await session.execute(
                    update(ObjectRow).where(key).values(spec=spec, resource_version=rv, updated_at=now)
                )
            await session.execute(
                insert(ChangeRow).values(resource_version=rv, kind=kind, name=name, op="put", spec=spec, at=now)
            )
            await self._compact(session, rv)
        stored = {
            "kind": kind,
            "name": name,
            "spec": spec,
            "resource_version": rv,
            "created_at": _utc(created_at).isoformat(),
            "updated_at": now.isoformat(),
        }
        return stored, created_at is now

    async def delete(self, kind: str, name: str) -> int:
        """Delete an object (a service with its targets); returns the resource version of the change."""
        async with self._transaction() as session:
            key = (ObjectRow.kind == kind) & (ObjectRow.name == name)
            if await session.scalar(select(ObjectRow.name).where(key)) is None:
                raise NotFound(f"{kind} {name!r} does not exist")
            now = datetime.now(UTC)
            if kind == "service":
                users = await self._routes_using(session, name)
                if users:
                    raise Conflict(f"service {name!r} is used by routes {', '.join(sorted(users))}")
                targets = await session.scalars(
                    select(ObjectRow.name).where(ObjectRow.kind == "target", ObjectRow.name.startswith(f"{name}/"))
                )
                for target in list(targets):
                    rv = await self._bump(session)
                    await session.execute(delete(ObjectRow).where(ObjectRow.kind == "target", ObjectRow.name == target))
                    await session.execute(
                        insert(ChangeRow).values(resource_version=rv, kind="target", name=target, op="delete", at=now)
                    )
            rv = await self._bump(session)
            await session.execute(delete(ObjectRow).where(key))
            await session.execute(
                insert(ChangeRow).values(resource_version=rv, kind=kind, name=name, op="delete", spec=None, at=now)
            )
            return rv

    async def _check_references(self, session: AsyncConnection, kind: str, name: str, spec: dict[str, Any]) -> None:
        if kind == "route" and not await self._service_exists(session, spec["service"]):
            raise InvalidReference(f"service {spec['service']!r} does not exist", field="service")
        if kind == "target":
            service = name.partition("/")[0]
            if not await self._service_exists(session, service):
                raise NotFound(f"service {service!r} does not exist")

    async def _service_exists(self, session: AsyncConnection, service: str) -> bool:
        found = await session.scalar(
            select(ObjectRow.name).where(ObjectRow.kind == "service", ObjectRow.name == service)
        )
        return found is not None

    async def _routes_using(self, session: AsyncConnection, service: str) -> list[str]:
        rows = await session.execute(select(ObjectRow.name, ObjectRow.spec).where(ObjectRow.kind == "route"))
        return [name for name, spec in rows if spec.get("service") == service]

    async def _compact(self, session: AsyncConnection, rv: int) -> None:
        if rv % 1000 == 0:
            await session.execute(delete(ChangeRow).where(ChangeRow.resource_version <= rv - CHANGE_RETENTION))

    # Reads

    async def get(self, kind: str, name: str) -> StoredObject:
        async with self.read() as session:
            row = await session.get(ObjectRow, (kind, name))
            if row is None:
                raise NotFound(f"{kind} {name!r} does not exist")
            return _stored(row)

    async def list_objects(self, kind: str, prefix: str | None = None) -> list[StoredObject]:
        async with self.read() as session:
            query = select(ObjectRow).where(ObjectRow.kind == kind).order_by(ObjectRow.name)
            if prefix is not None:
                query = query.where(ObjectRow.name.startswith(prefix))
            return [_stored(row) for row in await session.scalars(query)]

    async def snapshot(self) -> tuple[int, list[StoredObject]]:
        """Every object (services, then targets, then routes) at one resource version."""
        async with self.read() as session, session.begin():
            rv = await session.scalar(select(CounterRow.value).where(CounterRow.name == RV_COUNTER))
            rows = list(await session.scalars(select(ObjectRow).where(ObjectRow.resource_version <= (rv or 0))))
        rows.sort(key=lambda row: (KINDS.index(row.kind), row.name))
        return int(rv or 0), [_stored(row) for row in rows]

    async def changes_since(self, rv: int, limit: int = 1000) -> list[Change] | None:
        """Changes after `rv` in order, or None when some were compacted away (the caller must resync).

        Every resource version has its change row, so the feed has no gaps: a first row other than
        `rv + 1`, or no row while the counter is past `rv`, means the rows after `rv` were compacted.
        Plain column reads on a connection: this runs for every change and every watcher."""
        columns = (ChangeRow.resource_version, ChangeRow.op, ChangeRow.kind, ChangeRow.name, ChangeRow.spec)
        query = (
            select(*columns).where(ChangeRow.resource_version > rv).order_by(ChangeRow.resource_version).limit(limit)
        )
        async with self.engine.connect() as connection:
            rows = (await connection.execute(query)).all()
            if not rows:
                # Reads may not share a snapshot: read the counter, then the feed again. Every version up
                # to the counter read is committed by then, so an empty feed now means compaction.
                counter = select(CounterRow.value).where(CounterRow.name == RV_COUNTER)
                current = (await connection.execute(counter)).scalar()
                if (current or 0) <= rv:
                    return []
                rows = (await connection.execute(query)).all()
        if not rows or rows[0][0] != rv + 1:
            return None
        return [
            {"type": op, "kind": kind, "name": name, "spec": spec, "resource_version": version}
            for version, op, kind, name, spec in rows
        ]

    async def resource_version(self) -> int:
        async with self.read() as session:
            return int(await session.scalar(select(CounterRow.value).where(CounterRow.name == RV_COUNTER)) or 0)

    def change_signal(self) -> asyncio.Event:
        """Set at the next write committed by this process. Take it before reading, then wait on it."""
        return self._changed


def _stored(row: ObjectRow) -> StoredObject:
    return {
        "kind": row.kind,
        "name": row.name,
        "spec": row.spec,
        "resource_version": row.resource_version,
        "created_at": _utc(row.created_at).isoformat(),
        "updated_at": _utc(row.updated_at).isoformat(),
    }


def _utc(moment: datetime) -> datetime:
    """SQLite hands timestamps back without their zone; they were written in UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
