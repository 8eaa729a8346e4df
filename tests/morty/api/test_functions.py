"""Authentication, function CRUD and configuration validation."""

from __future__ import annotations

from typing import Any

import httpx

from tests.morty.api.conftest import TOKEN, MortyFactory, create_function


def fields(response: httpx.Response) -> set[str]:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"].startswith("invalid request")
    return {item["field"] for item in body["detail"]}


async def test_management_routes_need_the_bearer_token(api: httpx.AsyncClient) -> None:
    async with httpx.AsyncClient(base_url=str(api.base_url)) as anonymous:
        missing = await anonymous.get("/v1/functions")
        assert missing.status_code == 401
        assert "Authorization: Bearer" in missing.json()["error"]
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = await anonymous.get("/v1/runtimes", headers={"Authorization": "Bearer nope"})
        assert (wrong.status_code, wrong.json()["error"]) == (401, "invalid bearer token")
        basic = await anonymous.post("/v1/functions", headers={"Authorization": f"Basic {TOKEN}"}, json={})
        assert basic.status_code == 401
        for path in ("/v1/functions/x", "/v1/resolve/x", "/v1/functions/x/invocations"):
            assert (await anonymous.get(path)).status_code == 401, path
        assert (await anonymous.post("/v1/invocations:batch", json={"records": []})).status_code == 401
        # Open: health, metrics and the API description.
        assert (await anonymous.get("/healthz")).json()["status"] == "ok"
        assert "morty_api_requests_total" in (await anonymous.get("/metrics")).text
        schema = (await anonymous.get("/openapi.json")).json()
        assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
        assert "/v1/invocations:batch" in schema["paths"]


async def test_function_crud(api: httpx.AsyncClient) -> None:
    created = await create_function(api, "hello", env={"GREETING": "hi"})
    assert created["name"] == "hello"
    assert created["isolation"] == "vm"
    assert (created["min_instances"], created["max_instances"], created["memory_mib"]) == (0, 10, 256)
    assert created["secrets"] == [] and created["latest_version"] is None

    duplicate = await api.post("/v1/functions", json={"name": "hello", "runtime": "node18"})
    assert duplicate.status_code == 409
    assert "already exists" in duplicate.json()["error"]

    await create_function(api, "another", runtime="node18", isolation="container")
    listed = (await api.get("/v1/functions")).json()["items"]
    assert [f["name"] for f in listed] == ["another", "hello"]
    assert listed[0]["isolation"] == "container"

    patched = await api.patch(
        "/v1/functions/hello",
        json={"memory_mib": 512, "vcpus": 2, "min_instances": 1, "max_instances": 3, "isolation": "container"},
    )
    assert patched.status_code == 200, patched.text
    got = (await api.get("/v1/functions/hello")).json()
    assert (got["memory_mib"], got["vcpus"], got["min_instances"], got["max_instances"]) == (512, 2, 1, 3)
    assert got["isolation"] == "container"
    assert got["env"] == {"GREETING": "hi"}, "fields left out keep their value"
    assert got["updated_at"] > got["created_at"]

    missing = await api.get("/v1/functions/nope")
    assert missing.status_code == 404 and missing.json()["error"] == "no function named 'nope'"
    assert (await api.patch("/v1/functions/nope", json={"vcpus": 2})).status_code == 404


async def test_configuration_errors_name_the_field(api: httpx.AsyncClient) -> None:
    async def create(**body: Any) -> httpx.Response:
        return await api.post("/v1/functions", json={"name": "f", "runtime": "python3.11"} | body)

    assert fields(await create(name="Not_A_Label")) == {"name"}
    assert fields(await create(name="-x")) == {"name"}
    assert fields(await create(name="a" * 64)) == {"name"}
    unknown = await create(runtime="cobol85")
    assert fields(unknown) == {"runtime"}
    assert "unknown runtime 'cobol85'" in unknown.json()["error"]
    assert "node18, python3.11" in unknown.json()["error"]
    assert fields(await create(isolation="chroot")) == {"isolation"}
    assert fields(await create(memory_mib=1)) == {"memory_mib"}
    assert fields(await create(vcpus=0)) == {"vcpus"}
    assert fields(await create(timeout_seconds=0)) == {"timeout_seconds"}
    assert fields(await create(min_instances=-1)) == {"min_instances"}
    assert fields(await create(concurrency=0)) == {"concurrency"}
    assert fields(await create(idle_timeout_seconds=0)) == {"idle_timeout_seconds"}
    assert fields(await create(env={"1BAD": "x"})) == {"env"}
    assert fields(await create(memroy_mib=512)) == {"memroy_mib"}, "a typo is an error, not ignored"
    limits = await create(min_instances=5, max_instances=2)
    assert fields(limits) == {"max_instances"}
    assert "must be >= min_instances (5)" in limits.json()["error"]

    await create_function(api, "f", max_instances=2)
    assert fields(await api.patch("/v1/functions/f", json={"min_instances": 3})) == {"max_instances"}
    assert fields(await api.patch("/v1/functions/f", json={"runtime": "cobol85"})) == {"runtime"}
    assert fields(await api.patch("/v1/functions/f", json={"vcpus": 1000})) == {"vcpus"}
    nulled = await api.patch("/v1/functions/f", json={"memory_mib": None})
    assert nulled.status_code == 422 and "memory_mib" in nulled.json()["error"]
    assert (await api.get("/v1/functions/f")).json()["min_instances"] == 0, "a rejected change changes nothing"
    malformed = await api.post("/v1/functions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert malformed.status_code == 422 and "malformed JSON" in malformed.json()["error"]


async def test_runtimes_are_listed_with_their_images(api: httpx.AsyncClient) -> None:
    items = {r["name"]: r for r in (await api.get("/v1/runtimes")).json()["items"]}
    assert set(items) == {"python3.11", "node18"}
    assert items["python3.11"]["image"] == "morty/runtime-python3.11:latest"
    assert items["node18"]["language"] == "node"
    assert items["python3.11"]["handler"] == "main.py"  # what the template writes and the runtime loads


async def test_a_platform_without_vms_defaults_to_containers_and_refuses_vm(morty_factory: MortyFactory) -> None:
    async with morty_factory(vm_unavailable="qemu-system-x86_64 is not installed") as api:
        assert (await create_function(api, "plain"))["isolation"] == "container"
        assert (await create_function(api, "boxed", isolation="container"))["isolation"] == "container"
        for refused in (
            await api.post("/v1/functions", json={"name": "vm", "runtime": "python3.11", "isolation": "vm"}),
            await api.patch("/v1/functions/plain", json={"isolation": "vm"}),
        ):
            assert fields(refused) == {"isolation"}
            assert "VMs are not available on this platform (qemu-system-x86_64 is not installed)" in refused.text
        assert (await api.get("/v1/functions/vm")).status_code == 404
        assert (await api.get("/v1/functions/plain")).json()["isolation"] == "container"
