"""Invocation records shipped to a sink, and the cold-start hold released by a target registration."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, HTTPException, Request

from tests.gateway.helpers import data_plane
from tests.gateway.upstream import make_app
from tests.support.registry import free_tcp_port
from tests.support.services import served

pytestmark = pytest.mark.timeout(30)


def sink_app(received: list[dict[str, Any]], auth: list[str | None], *, status: int = 200) -> FastAPI:
    app = FastAPI()

    @app.post("/records")
    async def records(request: Request) -> dict[str, bool]:
        auth.append(request.headers.get("authorization"))
        if status != 200:
            raise HTTPException(status)
        received.extend((await request.json())["records"])
        return {"ok": True}

    return app


async def _wait(condition: Any, timeout: float = 10) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_records_are_shipped_in_batches_with_the_token() -> None:
    received: list[dict[str, Any]] = []
    auth: list[str | None] = []
    port = free_tcp_port()
    sink = f"http://127.0.0.1:{port}/records"
    async with served(sink_app(received, auth), port), data_plane(sinks=[sink], sink_token="sink-token") as plane:
        plane.route("default", labels={"function": "hello"})
        async with httpx.AsyncClient(base_url=plane.url) as client:
            for _ in range(3):
                assert (await client.post("/echo?x=1", content=b"12345")).status_code == 200
            assert (await client.get("/nothing-here", headers={"host": "other"})).status_code == 200
        await _wait(lambda: len(received) == 4)
        record = received[0]
        address = f"127.0.0.1:{plane.upstreams['a']}"
        assert record["route"] == "default" and record["route_labels"] == {"function": "hello"}
        assert record["service"] == "svc" and record["target"] == address and record["target_labels"] == {}
        assert record["method"] == "POST" and record["path"] == "/echo" and record["status"] == 200
        assert record["bytes_in"] == 5 and record["bytes_out"] > 0
        assert record["started_at"].endswith("Z") and record["finished_at"] >= record["started_at"]
        assert record["start"] == "warm" and record["provision_ms"] == 0
        assert record["upstream_ms"] > 0 and record["queue_ms"] >= 0
        assert len({r["id"] for r in received}) == 4
        assert set(auth) == {"Bearer sink-token"} and len(auth) < 4


async def test_a_down_sink_drops_and_counts_without_slowing_requests() -> None:
    received: list[dict[str, Any]] = []
    auth: list[str | None] = []
    port = free_tcp_port()
    sink = f"http://127.0.0.1:{port}/records"
    async with served(sink_app(received, auth, status=503), port), data_plane(sinks=[sink]) as plane:
        async with httpx.AsyncClient(base_url=plane.url) as client:
            for _ in range(5):
                assert (await client.get("/")).status_code == 200
        await _wait(lambda: plane.worker.stats.records_dropped == 5)
        assert received == []


async def test_held_requests_are_released_by_a_new_target() -> None:
    received: list[dict[str, Any]] = []
    port = free_tcp_port()
    sink = f"http://127.0.0.1:{port}/records"
    async with served(sink_app(received, []), port), data_plane((), sinks=[sink]) as plane:
        upstream_port = free_tcp_port()
        async with served(make_app("cold"), upstream_port), httpx.AsyncClient(base_url=plane.url, timeout=10) as client:
            hook = {"url": "http://127.0.0.1:1/unused", "timeout_s": 5, "queue_size": 5}
            plane.route("default", provisioner=hook)
            held = [asyncio.create_task(client.get("/")) for _ in range(5)]
            route = plane.worker.config.routes["default"]
            await _wait(lambda: len(route.held) == 5)
            overflow = await client.get("/")
            assert overflow.status_code == 503 and overflow.headers["retry-after"] == "5"
            assert "queue is full" in overflow.json()["error"]
            address = f"127.0.0.1:{upstream_port}"
            plane.put("target", f"svc/{address}", {"address": address, "labels": {"start_path": "restored"}})
            responses = await asyncio.gather(*held)
            assert [r.status_code for r in responses] == [200] * 5
        await _wait(lambda: len(received) == 6)
        released = [r for r in received if r["status"] == 200]
        assert sorted(r["start"] for r in released) == ["restored", "warm", "warm", "warm", "warm"]
        assert all(r["provision_ms"] > 0 for r in released)
        assert plane.worker.stats.cold_starts == {"default": 1}


async def test_held_requests_time_out_with_503() -> None:
    async with data_plane(()) as plane, httpx.AsyncClient(base_url=plane.url, timeout=10) as client:
        plane.route("default", provisioner={"url": "http://127.0.0.1:1/unused", "timeout_s": 0.5})
        responses = await asyncio.gather(*(client.get("/") for _ in range(10)))
        assert [r.status_code for r in responses] == [503] * 10
        assert max(r.elapsed.total_seconds() for r in responses) < 0.5 + 1.0
        assert "within 0.5s" in responses[0].json()["error"]
