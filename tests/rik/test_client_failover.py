"""A client given several controllers (sharing one database) uses the next when one cannot be reached."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import httpx
import pytest

from rik.client import RikClient, Unreachable

NODES = {"items": [], "resource_version": 7}


def _transport(down: set[str], seen: list[str]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.host}{request.url.path}")
        if request.url.host in down:
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path == "/api/v1/watch":
            line = {"type": "ADDED", "resource": "nodes", "resource_version": 8, "object": {"name": "n1"}}
            return httpx.Response(200, content=json.dumps(line).encode() + b"\n")
        return httpx.Response(200, json=NODES)

    return httpx.MockTransport(handle)


async def test_a_request_goes_to_the_next_controller_when_one_cannot_be_reached() -> None:
    seen: list[str] = []
    async with RikClient("http://a:7700, http://b:7700/", transport=_transport({"a"}, seen)) as client:
        assert client.urls == ["http://a:7700", "http://b:7700"]
        assert (await client.list_nodes()).resource_version == 7
        assert (await client.list_nodes()).resource_version == 7  # stays on the one that answered
    assert seen == ["GET a/api/v1/nodes", "GET b/api/v1/nodes", "GET b/api/v1/nodes"]


async def test_unreachable_when_every_controller_is_down() -> None:
    seen: list[str] = []
    async with RikClient("http://a:7700,http://b:7700", transport=_transport({"a", "b"}, seen)) as client:
        with pytest.raises(Unreachable):
            await client.list_nodes()
    assert seen == ["GET a/api/v1/nodes", "GET b/api/v1/nodes"]


async def test_a_watch_resumes_on_the_next_controller() -> None:
    seen: list[str] = []
    async with RikClient("http://a:7700,http://b:7700", transport=_transport({"a"}, seen)) as client:
        watch: Any = client.watch(since=7, reconnect_delay=0)
        async with contextlib.aclosing(watch) as events:
            event = await anext(events)
    assert event.resource_version == 8
    assert seen == ["GET a/api/v1/watch", "GET b/api/v1/watch"]
