"""A Python function through Morty APIs on a real RIK: built with a dependency, deployed as a VM image with a
warm snapshot and no instance, restored on request and answering with the handler's result (its secret in the
environment, never in an API answer), a second version and an alias deployed while the first serves, idle
instances stopped, and a deleted function leaving no workload, instance, snapshot, image or code behind.
The same image also runs as a container."""

from __future__ import annotations

import asyncio
import hashlib
import io
import subprocess
import zipfile
from typing import Any

import httpx
import pytest

from morty.api.deployer import image_reference
from rik.model import DesiredState
from tests.morty.e2e.conftest import Platform

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1500)]
SECRET = "e2e-s3cr3t-4f9a1c"
HANDLER = """\
import hashlib
import os

import six


def handler(request):
    key = os.environ.get("API_KEY", "")
    print("invoked with", request.query.get("name"), "and key", key)
    return {
        "version": "%s",
        "six": six.__version__,
        "key_sha256": hashlib.sha256(key.encode()).hexdigest(),
        "greeting": os.environ.get("GREETING"),
        "name": request.query.get("name"),
    }
"""


def _archive(version: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("main.py", HANDLER % version)
        archive.writestr("requirements.txt", "six==1.16.0\n")
    return buffer.getvalue()


async def _deploy(p: Platform, name: str, version: str) -> dict[str, Any]:
    created = await p.api.post(f"/v1/functions/{name}/versions", json={"version": version})
    assert created.status_code == 201, created.text
    async with httpx.AsyncClient(timeout=60) as plain:
        uploaded = await plain.put(created.json()["upload"]["url"], content=_archive(version))
    assert uploaded.status_code == 200, uploaded.text
    return uploaded.json()


async def _instance(p: Platform, name: str, version: str = "latest") -> dict[str, Any]:
    response = await p.api.post(f"/v1/functions/{name}/instances", json={"version": version})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def _invoke(instance: dict[str, Any], name: str = "e2e", invocation: str | None = None) -> dict[str, Any]:
    headers = {"X-Morty-Invocation-Id": invocation} if invocation else {}
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        response = await client.get(f"{instance['url']}/", params={"name": name}, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _wait(check: Any, what: str, within: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        if await check():
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"not within {within}s: {what}")


async def _wait_no_instances(p: Platform, name: str, within: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        if not (await p.api.get(f"/v1/functions/{name}/instances")).json()["items"]:
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"instances of {name} still running after {within}s")


def _image_exists(reference: str) -> bool:
    inspect = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{reference}"],
        capture_output=True, stdin=subprocess.DEVNULL, timeout=60, check=False,
    )  # fmt: skip
    return inspect.returncode == 0


async def test_a_python_function_runs_as_a_vm_restored_from_its_snapshot(platform: Platform) -> None:
    p = platform
    created = await p.api.post(
        "/v1/functions",
        json={"name": "hello", "runtime": "python3.11", "env": {"GREETING": "hi"}, "memory_mib": 256,
              "idle_timeout_seconds": 600, "max_instances": 3},
    )  # fmt: skip
    assert created.status_code == 201, created.text
    assert (await p.api.put("/v1/functions/hello/secrets/API_KEY", json={"value": SECRET})).status_code == 201

    # Build (with its dependency) and deploy: registered in RIK with a snapshot and no instance.
    build_id = (await _deploy(p, "hello", "1.0.0"))["build"]["id"]
    v1 = await p.wait_version("hello", "1.0.0")
    build = (await p.api.get(f"/v1/functions/hello/builds/{build_id}")).json()
    assert v1["status"] == "ready", (v1, build["log"])
    assert build["status"] == "succeeded" and "Successfully installed six-1.16.0" in build["log"]
    [workload] = (await p.rik.list_workloads()).items
    assert workload.kind == "VM" and workload.spec.replicas == 0
    assert workload.spec.vm is not None and workload.spec.vm.snapshot
    assert workload.metadata.labels == {"morty.function": "hello", "morty.version": "1.0.0"}
    assert [
        i
        for i in (await p.rik.list_instances(workload=workload.metadata.name)).items
        if i.desired_state != DesiredState.DELETED
    ] == []
    [snapshot] = (await p.rik.list_snapshots(workload=workload.metadata.name)).items
    assert snapshot.phase == "Ready"

    # An instance restores the snapshot and answers with the handler's result; the secret is in its env.
    first = await _instance(p, "hello")
    assert first["start_path"] == "restored", first
    answer = await _invoke(first, invocation="inv-e2e-0001")
    assert answer == {
        "version": "1.0.0", "six": "1.16.0", "key_sha256": hashlib.sha256(SECRET.encode()).hexdigest(),
        "greeting": "hi", "name": "e2e",
    }  # fmt: skip
    for path in ("/v1/functions/hello", "/v1/functions/hello/secrets", "/v1/functions/hello/versions/1.0.0",
                 f"/v1/functions/hello/builds/{build_id}", "/v1/functions/hello/instances"):  # fmt: skip
        assert SECRET not in (await p.api.get(path)).text, path

    # The invocation's output is its log, attributed to it, with the secret masked.
    logs = (await p.api.get("/v1/functions/hello/invocations/inv-e2e-0001/logs")).json()["items"]
    assert [(line["line"], line["instance"]) for line in logs] == [("invoked with e2e and key ****", first["id"])]

    # Version 1.1.0 builds and deploys while 1.0.0 serves; `latest` moves, the alias stays until switched.
    assert (
        await p.api.post("/v1/functions/hello/aliases", json={"name": "prod", "version": "1.0.0"})
    ).status_code == 201
    await _deploy(p, "hello", "1.1.0")
    v2 = await p.wait_version("hello", "1.1.0")
    assert v2["status"] == "ready", v2
    assert (await _invoke(first))["version"] == "1.0.0", "the first version served throughout"
    latest = await _instance(p, "hello", "latest")
    prod = await _instance(p, "hello", "prod")
    assert (await _invoke(latest))["version"] == "1.1.0"
    assert (await _invoke(prod))["version"] == "1.0.0"
    moved = await p.api.patch("/v1/functions/hello/aliases/prod", json={"version": "1.1.0"})
    assert moved.status_code == 200, moved.text
    switched = await p.api.post("/v1/functions/hello/instances", json={"version": "prod"})
    assert switched.status_code == 429, "max_instances=3 holds"
    await p.api.delete(f"/v1/functions/hello/instances/{prod['id']}")
    switched = await _instance(p, "hello", "prod")
    assert (await _invoke(switched))["version"] == "1.1.0"

    # A configuration change redeploys the ready versions (new snapshot); new instances see it.
    assert (await p.api.patch("/v1/functions/hello", json={"env": {"GREETING": "hello again"}})).status_code == 200

    async def redeployed() -> bool:
        versions = (await p.api.get("/v1/functions/hello/versions")).json()["items"]
        assert not any("failed" in v["status_message"] for v in versions), versions
        return all("redeployed" in v["status_message"] for v in versions)

    await _wait(redeployed, "both versions redeployed", within=600)
    assert (await p.api.get("/v1/functions/hello/instances")).json()["items"] == [], "old configuration: stopped"
    fresh = await _instance(p, "hello", "1.0.0")
    assert fresh["start_path"] == "restored"
    assert (await _invoke(fresh))["greeting"] == "hello again"
    assert len((await p.rik.list_snapshots()).items) == 2, "one snapshot per version: the old ones are gone"

    # Idle instances stop once the idle timeout passes (the scaler runs every 0.25 s here).
    assert (await p.api.patch("/v1/functions/hello", json={"idle_timeout_seconds": 1})).status_code == 200
    await _invoke(fresh, "late", invocation="inv-e2e-late")
    await _wait_no_instances(p, "hello", within=60)
    late = (await p.api.get("/v1/functions/hello/invocations/inv-e2e-late/logs")).json()["items"]
    assert [line["line"] for line in late] == ["invoked with late and key ****"], "collected before the stop"
    for w in (await p.rik.list_workloads()).items:
        items = (await p.rik.list_instances(workload=w.metadata.name)).items
        running = [i.id for i in items if i.desired_state != DesiredState.DELETED]
        assert running == [] and w.spec.replicas == 0, w.metadata.name

    # Delete: no workload, instance, snapshot, image or code remains.
    images = [image_reference(v["image"], v["digest"]) for v in (v1, v2)]
    assert all(_image_exists(ref) for ref in images)
    deleted = await p.api.delete("/v1/functions/hello")
    assert deleted.status_code == 200, deleted.text
    assert (await p.rik.list_workloads()).items == []
    assert (await p.rik.list_snapshots()).items == []
    assert not any(_image_exists(ref) for ref in images)
    assert not [f for f in (p.data_dir / "code").rglob("*") if f.is_file()]


async def test_container_isolation_runs_the_same_function_as_a_container(platform: Platform) -> None:
    p = platform
    created = await p.api.post(
        "/v1/functions", json={"name": "boxed", "runtime": "python3.11", "isolation": "container"}
    )
    assert created.status_code == 201, created.text
    await _deploy(p, "boxed", "2.0.0")
    version = await p.wait_version("boxed", "2.0.0")
    assert version["status"] == "ready", version
    [workload] = (await p.rik.list_workloads()).items
    assert workload.kind == "Pod" and workload.spec.replicas == 0
    instance = await _instance(p, "boxed")
    assert instance["start_path"] == "booted", instance
    assert (await _invoke(instance, "box")) == {
        "version": "2.0.0", "six": "1.16.0", "key_sha256": hashlib.sha256(b"").hexdigest(),
        "greeting": None, "name": "box",
    }  # fmt: skip
    assert (await p.api.delete("/v1/functions/boxed")).status_code == 200
    assert (await p.rik.list_workloads()).items == []


NODE_HANDLER = """\
const isNumber = require('is-number');

exports.handler = async (request) => {
  const value = request.query.get('value');
  console.log(`checking ${value}`);
  return { runtime: 'node', node: process.versions.node.split('.')[0], value, number: isNumber(value) };
};
"""


async def test_a_node_function_with_a_dependency(platform: Platform) -> None:
    p = platform
    created = await p.api.post("/v1/functions", json={"name": "nodefn", "runtime": "node18", "isolation": "container"})
    assert created.status_code == 201, created.text
    version = (await p.api.post("/v1/functions/nodefn/versions", json={"version": "1.0.0"})).json()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("main.js", NODE_HANDLER)
        zf.writestr("package.json", '{"name": "nodefn", "version": "1.0.0", "dependencies": {"is-number": "7.0.0"}}')
    async with httpx.AsyncClient(timeout=60) as plain:
        uploaded = await plain.put(version["upload"]["url"], content=buffer.getvalue())
    assert uploaded.status_code == 200, uploaded.text
    ready = await p.wait_version("nodefn", "1.0.0")
    build = (await p.api.get(f"/v1/functions/nodefn/builds/{uploaded.json()['build']['id']}")).json()
    assert ready["status"] == "ready", (ready, build["log"])
    assert "npm install" in build["log"]

    instance = await _instance(p, "nodefn")
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        for value, number in (("42", True), ("abc", False)):
            response = await client.get(
                f"{instance['url']}/", params={"value": value}, headers={"X-Morty-Invocation-Id": f"node-{value}"}
            )
            assert response.status_code == 200, response.text
            assert response.json() == {"runtime": "node", "node": "18", "value": value, "number": number}
    logs = (await p.api.get("/v1/functions/nodefn/invocations/node-42/logs")).json()["items"]
    assert [line["line"] for line in logs] == ["checking 42"]
    assert (await p.api.delete("/v1/functions/nodefn")).status_code == 200
