"""Morty's gateway connector against a real gateway process: a ready version gets its routes and service,
the periodic full sync repairs what the gateway lost or kept (a function deleted while it was unreachable),
and re-applying an unchanged configuration writes nothing the gateway's workers would have to reload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway.helpers import TOKEN as GATEWAY_TOKEN
from tests.gateway.helpers import gateway_process
from tests.morty.api._fake_orchestrator import FakeOrchestrator
from tests.morty.api.conftest import MortyFactory, create_function, ready_version

pytestmark = pytest.mark.timeout(180)


async def _names(admin: httpx.AsyncClient, kind: str) -> set[str]:
    return {item["name"] for item in (await admin.get(f"/v1/{kind}")).json()["items"]}


async def test_full_sync_repairs_the_gateway_without_rewriting_what_is_current(
    morty_factory: MortyFactory, tmp_path: Path
) -> None:
    auth = {"Authorization": f"Bearer {GATEWAY_TOKEN}"}
    with gateway_process(tmp_path / "gateway") as gateway:
        settings: dict[str, Any] = {"gateway_url": gateway.admin, "gateway_token": GATEWAY_TOKEN}
        async with (
            httpx.AsyncClient(base_url=gateway.admin, headers=auth) as admin,
            morty_factory(orchestrator=FakeOrchestrator(), scaling_tick=3600.0, **settings) as api,
        ):
            connector = api.app.state.morty.gateway  # type: ignore[attr-defined]
            await create_function(api, "hello", isolation="container")
            await ready_version(api, "hello", "1.0.0")
            await connector.sync_all()
            assert {"fn.hello", "fn.hello@1.0.0", "morty.api"} <= await _names(admin, "routes")

            # The gateway lost a route, and still has one of a function Morty no longer knows.
            assert (await admin.delete("/v1/routes/fn.hello@1.0.0")).status_code == 200
            ghost = {"labels": {"function": "ghost"}}
            assert (await admin.put("/v1/services/fn.ghost-1", json=ghost)).status_code == 201
            route = {"service": "fn.ghost-1", "path_prefix": "/fn/ghost", "labels": {"function": "ghost"}}
            assert (await admin.put("/v1/routes/fn.ghost", json=route)).status_code == 201

            await connector.sync_all()
            routes = await _names(admin, "routes")
            assert "fn.hello@1.0.0" in routes and "fn.ghost" not in routes
            assert "fn.ghost-1" not in await _names(admin, "services")

            settled = (await admin.get("/v1/routes")).json()["resource_version"]
            await connector.sync_all()
            await connector.sync_function("hello")
            assert (await admin.get("/v1/routes")).json()["resource_version"] == settled
