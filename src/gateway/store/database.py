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

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

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
    async def _transaction(self) -> AsyncIterator[AsyncSession]:
        """A write transaction; on PostgreSQL the counter row is locked first so versions commit in order."""
        async with self.serialised(), self.sessions() as session, session.begin():
            if not self.is_sqlite:
                await session.execute(select(CounterRow.value).where(CounterRow.name == RV_COUNTER).with_for_update())
            yield session
        signal, self._changed = self._changed, asyncio.Event()
        signal.set()

    async def _bump(self, session: AsyncSession) -> int:
        value = await session.scalar(
            update(CounterRow)
            .where(CounterRow.name == RV_COUNTER)
            .values(value=CounterRow.value + 1)
            .returning(CounterRow.value)
        )
        assert value is not None
        return int(value)

    async def put(self, kind: str, name: str, spec: dict[str, Any]) -> tuple[StoredObject, bool]:
        """Create or replace an object; returns it and whether it was created."""
        async with self._transaction() as session:
            await self._check_references(session, kind, name, spec)
            now = datetime.now(UTC)
            rv = await self._bump(session)
            row = await session.get(ObjectRow, (kind, name))
            created = row is None
            if row is None:
                row = ObjectRow(kind=kind, name=name, spec=spec, resource_version=rv, created_at=now, updated_at=now)
                session.add(row)
            else:
                row.spec, row.resource_version, row.updated_at = spec, rv, now
            session.add(ChangeRow(resource_version=rv, kind=kind, name=name, op="put", spec=spec, at=now))
            await self._compact(session, rv)
            return _stored(row), created

    async def delete(self, kind: str, name: str) -> int:
        """Delete an object (a service with its targets); returns the resource version of the change."""
        async with self._transaction() as session:
            row = await session.get(ObjectRow, (kind, name))
            if row is None:
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
                    session.add(ChangeRow(resource_version=rv, kind="target", name=target, op="delete", at=now))
            rv = await self._bump(session)
            await session.delete(row)
            session.add(ChangeRow(resource_version=rv, kind=kind, name=name, op="delete", spec=None, at=now))
            return rv

    async def _check_references(self, session: AsyncSession, kind: str, name: str, spec: dict[str, Any]) -> None:
        if kind == "route" and await session.get(ObjectRow, ("service", spec["service"])) is None:
            raise InvalidReference(f"service {spec['service']!r} does not exist", field="service")
        if kind == "target":
            service = name.partition("/")[0]
            if await session.get(ObjectRow, ("service", service)) is None:
                raise NotFound(f"service {service!r} does not exist")

    async def _routes_using(self, session: AsyncSession, service: str) -> list[str]:
        rows = await session.scalars(select(ObjectRow).where(ObjectRow.kind == "route"))
        return [row.name for row in rows if row.spec.get("service") == service]

    async def _compact(self, session: AsyncSession, rv: int) -> None:
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
        `rv + 1`, or no row while the counter is past `rv`, means the rows after `rv` were compacted."""
        async with self.read() as session:
            query = (
                select(ChangeRow)
                .where(ChangeRow.resource_version > rv)
                .order_by(ChangeRow.resource_version)
                .limit(limit)
            )
            rows = list(await session.scalars(query))
            if not rows:
                # Reads may not share a snapshot: read the counter, then the feed again. Every version up
                # to the counter read is committed by then, so an empty feed now means compaction.
                current = await session.scalar(select(CounterRow.value).where(CounterRow.name == RV_COUNTER))
                if (current or 0) <= rv:
                    return []
                rows = list(await session.scalars(query))
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
