"""Aliases and resolution of `name`, `name@1.2.3`, `name@alias`."""

from __future__ import annotations

import httpx

from tests.morty.api.conftest import create_function, create_version, ready_version


async def test_aliases_point_at_versions_and_resolve(api: httpx.AsyncClient) -> None:
    await create_function(api, "hello")
    await ready_version(api, "hello", "1.0.0")
    await ready_version(api, "hello", "2.0.0")
    await ready_version(api, "hello", "3.0.0", succeeded=False)

    created = await api.post("/v1/functions/hello/aliases", json={"name": "prod", "version": "1.0.0"})
    assert created.status_code == 201, created.text
    assert (created.json()["name"], created.json()["version"]) == ("prod", "1.0.0")
    resolved = (await api.get("/v1/resolve/hello@prod")).json()
    assert (resolved["version"], resolved["via"], resolved["alias"]) == ("1.0.0", "alias", "prod")
    assert resolved["config"]["runtime"] == "python3.11"
    pinned = (await api.get("/v1/resolve/hello@2.0.0")).json()
    assert (pinned["version"], pinned["via"]) == ("2.0.0", "version")
    assert (await api.get("/v1/resolve/hello")).json()["version"] == "2.0.0"

    moved = await api.patch("/v1/functions/hello/aliases/prod", json={"version": "2.0.0"})
    assert moved.status_code == 200 and moved.json()["version"] == "2.0.0"
    assert (await api.get("/v1/resolve/hello@prod")).json()["version"] == "2.0.0"
    assert (await api.get("/v1/functions/hello/aliases/prod")).json()["version"] == "2.0.0"

    duplicate = await api.post("/v1/functions/hello/aliases", json={"name": "prod", "version": "1.0.0"})
    assert duplicate.status_code == 409
    missing_version = await api.post("/v1/functions/hello/aliases", json={"name": "beta", "version": "9.9.9"})
    assert missing_version.status_code == 404 and "no version '9.9.9'" in missing_version.json()["error"]
    failed = await api.patch("/v1/functions/hello/aliases/prod", json={"version": "3.0.0"})
    assert failed.status_code == 409 and "failed its build" in failed.json()["error"]
    reserved = await api.post("/v1/functions/hello/aliases", json={"name": "latest", "version": "1.0.0"})
    assert reserved.status_code == 422 and reserved.json()["detail"][0]["field"] == "name"
    versionlike = await api.post("/v1/functions/hello/aliases", json={"name": "1-0", "version": "1.0.0"})
    assert versionlike.status_code == 422 and versionlike.json()["detail"][0]["field"] == "name"
    assert (await api.patch("/v1/functions/hello/aliases/nope", json={"version": "1.0.0"})).status_code == 404

    await create_version(api, "hello", "4.0.0")
    staged = await api.post("/v1/functions/hello/aliases", json={"name": "next", "version": "4.0.0"})
    assert staged.status_code == 201, "an alias may point at a version still on its way"
    assert (await api.get("/v1/resolve/hello@next")).json()["status"] == "awaiting_upload"

    names = [a["name"] for a in (await api.get("/v1/functions/hello/aliases")).json()["items"]]
    assert names == ["next", "prod"]
    assert (await api.delete("/v1/functions/hello/aliases/prod")).status_code == 204
    unknown = await api.get("/v1/resolve/hello@prod")
    assert unknown.status_code == 404 and "no alias 'prod'" in unknown.json()["error"]
    assert (await api.get("/v1/resolve/hello@9.9.9")).status_code == 404
    assert (await api.get("/v1/resolve/nope@prod")).status_code == 404
