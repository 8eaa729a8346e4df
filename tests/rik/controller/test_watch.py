"""The change feed: ordered events with resource versions, filters, resuming, and compaction (410)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from rik.controller import store
from tests.rik.controller.conftest import manifest, node


async def read_events(api: httpx.AsyncClient, count: int, **params: Any) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        async with api.stream("GET", "/api/v1/watch", params=params) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line:
                    events.append(json.loads(line))
                if len(events) >= count:
                    break
    return events


async def test_events_are_ordered_and_carry_resource_versions(api: httpx.AsyncClient) -> None:
    await api.post("/api/v1/nodes", json=node("n1"))
    await api.post("/api/v1/workloads", json=manifest(replicas=2))
    events = await read_events(api, 4, since=0)
    assert [(e["type"], e["resource"]) for e in events] == [
        ("ADDED", "nodes"),
        ("ADDED", "workloads"),
        ("ADDED", "instances"),
        ("ADDED", "instances"),
    ]
    versions = [e["resource_version"] for e in events]
    assert versions == sorted(versions) and len(set(versions)) == 4
    assert events[1]["object"]["metadata"]["name"] == "web"


async def test_a_watch_resumes_after_the_last_version_seen(api: httpx.AsyncClient) -> None:
    await api.post("/api/v1/workloads", json=manifest("a"))
    listing = (await api.get("/api/v1/workloads")).json()
    await api.post("/api/v1/workloads", json=manifest("b"))
    [event] = await read_events(api, 1, since=listing["resource_version"], resources="workloads")
    assert event["object"]["metadata"]["name"] == "b"


async def test_a_watch_sees_changes_made_after_it_started(api: httpx.AsyncClient) -> None:
    async def change_later() -> None:
        await asyncio.sleep(0.2)
        await api.post("/api/v1/workloads", json=manifest("late"))

    task = asyncio.create_task(change_later())
    [event] = await read_events(api, 1, resources="workloads")
    await task
    assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "late")


async def test_node_filter_includes_instances_moved_away(api: httpx.AsyncClient) -> None:
    await api.post("/api/v1/nodes", json=node("n1"))
    await api.post("/api/v1/workloads", json=manifest())
    leader = api.app.state.controller.leader  # type: ignore[attr-defined]
    await leader.schedule()
    start = (await api.get("/api/v1/instances")).json()["resource_version"]
    await api.delete("/api/v1/nodes/n1")
    [event] = await read_events(api, 1, since=start, resources="instances", node="n1")
    assert event["type"] == "MODIFIED"
    assert event["object"]["node"] is None


async def test_resuming_from_compacted_history_answers_410(api: httpx.AsyncClient) -> None:
    for name in ("a", "b", "c"):
        await api.post("/api/v1/workloads", json=manifest(name, replicas=0))
    db = api.app.state.controller.db  # type: ignore[attr-defined]
    async with db.transaction() as session:
        await store.compact_events(session, keep=1)
    gone = await api.get("/api/v1/watch", params={"since": 0})
    assert gone.status_code == 410
    assert "older than the retained history" in gone.json()["error"]


async def test_bad_watch_parameters_are_rejected(api: httpx.AsyncClient) -> None:
    response = await api.get("/api/v1/watch", params={"resources": "pods"})
    assert response.status_code == 422
    assert "workloads,instances,nodes" in response.json()["error"]
    response = await api.get("/api/v1/watch", params={"since": "-3"})
    assert response.status_code == 422
