"""Deleting a function removes everything recorded for it; a restart loses nothing and hands queued
builds to the build queue again."""

from __future__ import annotations

from pathlib import Path

import httpx
from sqlalchemy import func, select

from morty.api import store
from morty.api.builds import NoBuilderQueue
from morty.api.tables import AliasRow, BuildRow, FunctionRow, InvocationRow, SecretRow, VersionRow
from tests.morty.api.conftest import (
    MortyFactory,
    create_function,
    create_version,
    deploy,
    ready_version,
    upload,
    zip_bytes,
)
from tests.morty.api.test_invocations import record


async def test_deleting_a_function_removes_everything(api: httpx.AsyncClient, data_dir: Path) -> None:
    await create_function(api, "hello")
    await create_function(api, "keeper")
    await api.put("/v1/functions/hello/secrets/KEY", json={"value": "v"})
    await ready_version(api, "hello", "1.0.0")
    await deploy(api, "hello", "1.1.0")
    pending = await create_version(api, "hello", "2.0.0")
    await api.post("/v1/functions/hello/aliases", json={"name": "prod", "version": "1.0.0"})
    await api.post("/v1/invocations:batch", json={"records": [record(1), record(2), record(3, function="keeper")]})
    await ready_version(api, "keeper", "1.0.0")
    assert len(list((data_dir / "code").rglob("*.archive"))) == 3

    deleted = await api.delete("/v1/functions/hello")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {
        "name": "hello",
        "versions": 3,
        "aliases": 1,
        "builds": 2,
        "secrets": 1,
        "invocations": 2,
        "code_objects": 3,
    }
    assert (await api.get("/v1/functions/hello")).status_code == 404
    assert (await api.delete("/v1/functions/hello")).status_code == 404
    morty = api.app.state.morty  # type: ignore[attr-defined]
    async with morty.db.read() as session:
        for table in (FunctionRow, SecretRow, VersionRow, AliasRow, BuildRow, InvocationRow):
            count = await session.scalar(select(func.count()).select_from(table))
            assert count == (0 if table in (SecretRow, AliasRow) else 1), table.__tablename__
    assert len(list((data_dir / "code").rglob("*.archive"))) == 1, "only keeper's code remains"

    gone = await upload(pending["upload"]["url"], zip_bytes())
    assert gone.status_code == 404 and "no longer exists" in gone.json()["error"]

    await create_function(api, "hello")
    assert (await api.get("/v1/functions/hello/versions")).json()["items"] == []
    assert (await api.get("/v1/functions/hello/invocations")).json()["items"] == []
    assert (await api.get("/v1/functions/keeper/invocations")).json()["items"][0]["id"] == "req-keeper-3"


async def test_a_restart_loses_nothing_and_requeues_interrupted_builds(morty_factory: MortyFactory) -> None:
    async with morty_factory() as api:
        await create_function(api, "hello", memory_mib=512)
        await api.put("/v1/functions/hello/secrets/KEY", json={"value": "v"})
        queued = (await deploy(api, "hello", "1.0.0"))["build"]["id"]
        running = (await deploy(api, "hello", "1.1.0"))["build"]["id"]
        async with api.app.state.morty.db.transaction() as session:  # type: ignore[attr-defined]
            await store.start_build(session, running)
        assert (await api.get("/v1/functions/hello/versions/1.1.0")).json()["status"] == "building"

    async with morty_factory() as api:
        function = (await api.get("/v1/functions/hello")).json()
        assert function["memory_mib"] == 512 and function["secrets"] == ["KEY"]
        async with api.app.state.morty.db.read() as session:  # type: ignore[attr-defined]
            assert await store.secret_values(session, api.app.state.morty.box, "hello") == {"KEY": "v"}  # type: ignore[attr-defined]
        build = (await api.get(f"/v1/functions/hello/builds/{running}")).json()
        assert build["status"] == "queued" and "interrupted by a restart" in build["log"]
        assert (await api.get("/v1/functions/hello/versions/1.1.0")).json()["status"] == "uploaded"
        queue = api.app.state.morty.build_queue  # type: ignore[attr-defined]
        assert isinstance(queue, NoBuilderQueue) and queue.enqueued == [queued, running]
