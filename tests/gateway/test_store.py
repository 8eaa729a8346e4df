"""The configuration store on SQLite and PostgreSQL: versions, the change feed, references, restart."""

from __future__ import annotations

import asyncio

import pytest

from gateway.errors import Conflict, InvalidReference, NotFound
from gateway.store.database import GatewayDatabase

pytestmark = pytest.mark.timeout(120)


async def test_change_feed_orders_every_write(database_url: str) -> None:
    db = GatewayDatabase(database_url)
    await db.migrate()
    try:
        with pytest.raises(InvalidReference):
            await db.put("route", "r", {"service": "web"})
        await db.put("service", "web", {})
        # Concurrent writers still get distinct, gap-free versions in commit order.
        await asyncio.gather(*(db.put("target", f"web/127.0.0.1:{8000 + i}", {"address": "x"}) for i in range(20)))
        await db.put("route", "r", {"service": "web"})
        with pytest.raises(Conflict):
            await db.delete("service", "web")
        changes = await db.changes_since(0)
        assert changes is not None
        assert [c["resource_version"] for c in changes] == list(range(1, 23))
        assert await db.resource_version() == 22
        assert (await db.changes_since(22)) == []
        await db.delete("route", "r")
        rv = await db.delete("service", "web")
        tail = await db.changes_since(23)
        assert tail is not None and tail[-1] == {
            "type": "delete",
            "kind": "service",
            "name": "web",
            "spec": None,
            "resource_version": rv,
        }
        assert sum(1 for c in tail if c["kind"] == "target" and c["type"] == "delete") == 20
        version, objects = await db.snapshot()
        assert version == rv and objects == []
        with pytest.raises(NotFound):
            await db.get("service", "web")
    finally:
        await db.close()
    # Migrations are idempotent and the data survives a new engine.
    again = GatewayDatabase(database_url)
    await again.migrate()
    assert await again.resource_version() == rv
    await again.close()


async def test_putting_an_unchanged_spec_writes_no_change(database_url: str) -> None:
    """Clients (Morty's periodic sync) re-apply their configuration; only real changes reach the workers."""
    db = GatewayDatabase(database_url)
    await db.migrate()
    try:
        first, created = await db.put("service", "web", {"policy": "round_robin"})
        assert created
        again, created = await db.put("service", "web", {"policy": "round_robin"})
        assert not created
        assert again["resource_version"] == first["resource_version"] == await db.resource_version()
        assert again["updated_at"] == first["updated_at"]
        assert await db.changes_since(first["resource_version"]) == []
        changed, created = await db.put("service", "web", {"policy": "least_in_flight"})
        assert not created and changed["resource_version"] == first["resource_version"] + 1
        assert changed["created_at"] == first["created_at"]
        assert (await db.get("service", "web"))["spec"] == {"policy": "least_in_flight"}
    finally:
        await db.close()
