"""The management API in-process (uvicorn on a loopback port, SQLite in a temp dir)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request

from gateway.admin.app import create_app
from gateway.store.database import GatewayDatabase
from tests.gateway.helpers import TOKEN
from tests.support.registry import free_tcp_port
from tests.support.services import served

pytestmark = pytest.mark.timeout(60)
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    db = GatewayDatabase(f"sqlite:///{tmp_path / 'gw.db'}")
    port = free_tcp_port()
    async with served(create_app(db, TOKEN), port) as url, httpx.AsyncClient(base_url=url, headers=AUTH) as client:
        yield client
    await db.close()


async def test_every_route_but_health_needs_the_token(admin: httpx.AsyncClient) -> None:
    base = str(admin.base_url)
    async with httpx.AsyncClient(base_url=base) as anonymous:
        assert (await anonymous.get("/healthz")).status_code == 200
        for path in ("/v1/routes", "/v1/services", "/v1/stats", "/v1/watch", "/metrics", "/v1/sync"):
            assert (await anonymous.get(path)).status_code == 401, path
            assert (await anonymous.get(path, headers={"authorization": "Bearer wrong"})).status_code == 401, path
        assert (await anonymous.put("/v1/services/x", json={})).status_code == 401
        assert (await anonymous.post("/internal/provision", json={"route": "x"})).status_code == 401
    assert (await admin.get("/v1/routes")).status_code == 200


async def test_crud_and_validation_errors_name_the_field(admin: httpx.AsyncClient) -> None:
    response = await admin.put("/v1/routes/r", json={"service": "missing"})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "service"]
    assert (await admin.put("/v1/services/web", json={"policy": "least_in_flight"})).status_code == 201
    assert (await admin.put("/v1/services/web", json={"policy": "round_robin"})).status_code == 200
    bad = await admin.put("/v1/routes/r", json={"service": "web", "path_prefix": "no-slash"})
    assert bad.status_code == 422 and "path_prefix" in bad.json()["detail"][0]["loc"]
    bad = await admin.post("/v1/services/web/targets", json={"address": "127.0.0.1:99999"})
    assert bad.status_code == 422 and "address" in bad.json()["detail"][0]["loc"]
    bad = await admin.put("/v1/routes/r", json={"service": "web", "auth": {"type": "jwt", "algorithms": ["RS256"]}})
    assert bad.status_code == 422
    assert (await admin.put("/v1/routes/bad name", json={"service": "web"})).status_code == 422
    route = {"service": "web", "path_prefix": "/fn/x", "labels": {"function": "x"}, "max_body_bytes": 10}
    created = await admin.put("/v1/routes/fn-x", json=route)
    assert created.status_code == 201 and created.json()["spec"]["labels"] == {"function": "x"}
    target = await admin.post("/v1/services/web/targets", json={"address": "127.0.0.1:8000", "weight": 3})
    assert target.status_code == 201 and target.json()["address"] == "127.0.0.1:8000"
    assert (await admin.get("/v1/services/web/targets")).json()["items"][0]["spec"]["weight"] == 3
    assert (await admin.delete("/v1/services/web")).status_code == 409
    assert (await admin.delete("/v1/routes/fn-x")).status_code == 200
    assert (await admin.get("/v1/routes/fn-x")).status_code == 404
    assert (await admin.delete("/v1/services/web/targets/127.0.0.1:9")).status_code == 404
    deleted = await admin.delete("/v1/services/web")
    assert deleted.status_code == 200
    assert (await admin.get("/v1/services/web/targets")).status_code == 404


async def test_configuration_survives_a_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'gw.db'}"
    for round_ in range(2):
        db = GatewayDatabase(url)
        async with (
            served(create_app(db, TOKEN), free_tcp_port()) as base,
            httpx.AsyncClient(base_url=base, headers=AUTH) as client,
        ):
            if round_ == 0:
                assert (await client.put("/v1/services/web", json={})).status_code == 201
                assert (await client.put("/v1/routes/web", json={"service": "web"})).status_code == 201
            else:
                assert [r["name"] for r in (await client.get("/v1/routes")).json()["items"]] == ["web"]
        await db.close()


async def _lines(response: httpx.Response) -> AsyncIterator[dict[str, object]]:
    async for line in response.aiter_lines():
        if line:
            yield json.loads(line)


async def test_watch_streams_changes_and_resumes(admin: httpx.AsyncClient) -> None:
    assert (await admin.put("/v1/services/web", json={})).status_code == 201
    async with admin.stream("GET", "/v1/watch") as response:
        events = _lines(response)
        assert (await anext(events))["type"] == "reset"
        first = await anext(events)
        assert first["type"] == "put" and first["kind"] == "service" and first["name"] == "web"
        assert (await anext(events))["type"] == "synced"
        created = await admin.put("/v1/routes/web", json={"service": "web"})
        change = await asyncio.wait_for(anext(events), 5)
        assert change["type"] == "put" and change["kind"] == "route"
        assert change["resource_version"] == created.json()["resource_version"]
    since = int(created.json()["resource_version"]) - 1
    async with admin.stream("GET", "/v1/watch", params={"since": since}) as response:
        events = _lines(response)
        replayed = await anext(events)
        assert replayed["name"] == "web" and replayed["kind"] == "route"
        assert (await anext(events)) == {"type": "synced", "resource_version": since + 1}
        await admin.delete("/v1/routes/web")
        deleted = await asyncio.wait_for(anext(events), 5)
        assert deleted["type"] == "delete" and deleted["resource_version"] == since + 2


async def test_provisioner_is_called_once_for_concurrent_requests(admin: httpx.AsyncClient) -> None:
    calls: list[dict[str, object]] = []
    hook = FastAPI()

    @hook.post("/hook")
    async def provision(request: Request) -> dict[str, bool]:
        calls.append(await request.json())
        await asyncio.sleep(0.3)
        return {"ok": True}

    hook_port = free_tcp_port()
    async with served(hook, hook_port):
        await admin.put("/v1/services/fn", json={})
        route = {"service": "fn", "labels": {"f": "1"}, "provisioner": {"url": f"http://127.0.0.1:{hook_port}/hook"}}
        assert (await admin.put("/v1/routes/fn", json=route)).status_code == 201
        results = await asyncio.gather(*(admin.post("/internal/provision", json={"route": "fn"}) for _ in range(20)))
        assert [r.status_code for r in results] == [200] * 20
        assert calls == [{"route": "fn", "service": "fn", "labels": {"f": "1"}}]
        # A registered target ends the provisioning window: the next cold start calls again.
        await admin.post("/v1/services/fn/targets", json={"address": "127.0.0.1:1"})
        assert (await admin.post("/internal/provision", json={"route": "fn"})).status_code == 200
        assert len(calls) == 2
    await admin.post("/v1/services/fn/targets", json={"address": "127.0.0.1:2"})
    failing = await admin.post("/internal/provision", json={"route": "fn"})
    assert failing.status_code == 502 and "unreachable" in failing.json()["detail"]


async def test_reports_feed_stats_sync_and_metrics(admin: httpx.AsyncClient) -> None:
    report = {
        "worker": "0",
        "pid": 123,
        "ready": True,
        "resource_version": 7,
        "in_flight": {"routes": {"web": 3}, "targets": {"web/127.0.0.1:1": 2}},
        "held": {"web": 1},
        "unhealthy": [],
        "stats": {
            "requests": [["web", 200, 5]],
            "latency": {"web": [1.0] * 16 + [0.5]},
            "cold_starts": {"web": 1},
            "records_dropped": 0,
            "records_sent": 4,
        },
    }
    assert (await admin.post("/internal/report", json=report)).status_code == 200
    stats = (await admin.get("/v1/stats")).json()
    assert stats["routes"]["web"] == {"in_flight": 3, "held": 1}
    assert stats["targets"]["web"]["127.0.0.1:1"] == {"in_flight": 2, "usable": True}
    assert (await admin.get("/v1/sync", params={"resource_version": 7, "timeout_s": 1})).status_code == 200
    assert (await admin.get("/v1/sync", params={"resource_version": 8, "timeout_s": 0.2})).status_code == 504
    metrics = (await admin.get("/metrics")).text
    assert 'gateway_requests_total{route="web",status="200"} 5.0' in metrics
    assert 'gateway_route_in_flight{route="web"} 3.0' in metrics
    assert 'gateway_cold_starts_total{route="web"} 1.0' in metrics
    assert 'gateway_request_duration_seconds_count{route="web"} 16.0' in metrics
