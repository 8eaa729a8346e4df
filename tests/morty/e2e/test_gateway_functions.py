"""Functions through the API gateway, with every part real: a gateway process, Morty APIs, a RIK controller and
riklet. A deployed version gets its routes; 100 concurrent requests to a function with no instance cause exactly
one provisioning and all succeed; the gateway's records reach Morty (one cold start, the rest warm) and link to
the invocation's logs; aliases route; an idle instance leaves the gateway before it stops, and the next request
provisions again; deleting the function removes its routes."""

from __future__ import annotations

import asyncio
import io
import zipfile
from typing import Any

import httpx
import pytest

from tests.gateway.helpers import TOKEN as GATEWAY_TOKEN
from tests.morty.e2e.conftest import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]
HANDLER = """\
import os


def handler(request):
    print("served", request.query.get("n"))
    return {"version": os.environ["MORTY_VERSION"], "n": request.query.get("n"), "path": request.path}
"""


async def _until(check: Any, what: str, within: float = 120) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {within}s: {what}")


async def _deploy(api: httpx.AsyncClient, name: str, version: str) -> None:
    created = (await api.post(f"/v1/functions/{name}/versions", json={"version": version})).json()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("main.py", HANDLER)
    async with httpx.AsyncClient(timeout=60) as plain:
        assert (await plain.put(created["upload"]["url"], content=buffer.getvalue())).status_code == 200

    async def ready() -> bool:
        body = (await api.get(f"/v1/functions/{name}/versions/{version}")).json()
        assert body["status"] != "failed", body
        return bool(body["status"] == "ready")

    await _until(ready, f"{name} {version} ready", within=600)


async def test_functions_through_the_gateway(stack: Stack) -> None:
    api = stack.api
    created = await api.post(
        "/v1/functions",
        json={"name": "gw", "runtime": "python3.11", "isolation": "container", "idle_timeout_seconds": 600},
    )
    assert created.status_code == 201, created.text
    await _deploy(api, "gw", "1.0.0")
    admin = httpx.AsyncClient(base_url=stack.gateway.admin, headers={"Authorization": f"Bearer {GATEWAY_TOKEN}"})

    async def routes() -> set[str]:
        return {r["name"] for r in (await admin.get("/v1/routes")).json()["items"]}

    await _until(lambda: _has(routes, {"fn.gw", "fn.gw@1.0.0"}), "routes published")
    assert (await admin.get("/v1/sync", params={"timeout_s": 20})).status_code == 200

    # 100 concurrent requests, no instance yet: one provisioning, all served.
    async with httpx.AsyncClient(base_url=stack.gateway.proxy, timeout=120, trust_env=False) as client:
        answers = await asyncio.gather(*(client.get("/fn/gw/hello", params={"n": str(i)}) for i in range(100)))
        assert [a.status_code for a in answers] == [200] * 100, {a.status_code: a.text for a in answers}
        assert {a.json()["n"] for a in answers} == {str(i) for i in range(100)}
        assert answers[0].json() == {"version": "1.0.0", "n": "0", "path": "/hello"}, "the prefix is stripped"
        instances = (await api.get("/v1/functions/gw/instances")).json()["items"]
        assert len(instances) == 1, instances
        [instance] = instances

        # The gateway's records reach Morty: one cold start, the rest warm, all on that instance.
        async def records() -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = (await api.get("/v1/functions/gw/invocations", params={"limit": 200})).json()[
                "items"
            ]
            return items if len(items) >= 100 else []

        recorded = await _until(records, "100 invocation records")
        assert sorted(r["path"] for r in recorded).count("warm") >= 99
        assert {r["path"] for r in recorded} <= {"warm", "booted"} and "booted" in {r["path"] for r in recorded}
        assert {r["instance"] for r in recorded} == {instance["id"]}
        assert all(r["status"] == 200 and r["version"] == "1.0.0" for r in recorded)
        # ...and each record's id finds the invocation's logs.
        some = next(r for r in recorded if r["path"] == "warm")
        logs = (await api.get(f"/v1/functions/gw/invocations/{some['id']}/logs")).json()["items"]
        assert len(logs) == 1 and logs[0]["line"].startswith("served ")

        # A second version and an alias: latest moves, the alias and the pinned version stay.
        await _deploy(api, "gw", "2.0.0")
        assert (
            await api.post("/v1/functions/gw/aliases", json={"name": "prod", "version": "1.0.0"})
        ).status_code == 201
        await _until(lambda: _has(routes, {"fn.gw@prod", "fn.gw@2.0.0"}), "routes of 2.0.0 and prod")
        assert (await admin.get("/v1/sync", params={"timeout_s": 20})).status_code == 200
        assert (await _get(client, "/fn/gw"))["version"] == "2.0.0"
        assert (await _get(client, "/fn/gw@prod"))["version"] == "1.0.0"
        assert (await _get(client, "/fn/gw@1.0.0"))["version"] == "1.0.0"

        # Idle: each instance leaves the gateway, then stops; the next request provisions again.
        assert (await api.patch("/v1/functions/gw", json={"idle_timeout_seconds": 1})).status_code == 200

        async def all_stopped() -> bool:
            return not (await api.get("/v1/functions/gw/instances")).json()["items"]

        await _until(all_stopped, "idle instances stopped", within=60)
        for service in (await admin.get("/v1/services")).json()["items"]:
            if service["spec"]["labels"].get("function") != "gw":
                continue
            targets = (await admin.get(f"/v1/services/{service['name']}/targets")).json()["items"]
            assert targets == [], f"{service['name']} still has {targets}"
        again = await client.get("/fn/gw", params={"n": "again"})
        assert again.status_code == 200 and again.json()["n"] == "again"

    deleted = await api.delete("/v1/functions/gw")
    assert deleted.status_code == 200, deleted.text
    assert not {r for r in await routes() if r.startswith("fn.gw")}
    await admin.aclose()


async def _get(client: httpx.AsyncClient, path: str) -> dict[str, Any]:
    response = await client.get(path, timeout=60)
    assert response.status_code == 200, f"{path}: {response.status_code} {response.text}"
    body: dict[str, Any] = response.json()
    return body


async def _has(get: Any, wanted: set[str]) -> bool:
    return wanted <= await get()
