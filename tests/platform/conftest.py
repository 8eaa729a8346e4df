"""The multi-host platform (see `_platform.py`), started once for the package's tests, and one function
deployed on it with two warm container instances (one per node, by the scheduler's spreading).

The tests run in their quick form; `--full` or PLATFORM_FULL=1 runs the long form (more cycles, longer load).
Each test leaves the platform as it found it: every component running, the function's two instances warm.
"""

from __future__ import annotations

import asyncio
import io
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from morty.builder.base import BaseImage
from rik.model import Phase
from tests.morty.e2e.conftest import base
from tests.rik.e2e.conftest import _bytecode_cache, _require_host, e2e_image, image

from ._platform import GATEWAY_PORT, Platform, multi_host_platform

__all__ = ["_bytecode_cache", "base", "e2e_image", "image"]
FUNCTION = "echo"
# pytest-timeout of the leak check and the soak. Their full forms (PLATFORM_FULL=1; `--full` is read too late
# for a marker) run 1,000 cycles with VMs booting under TCG, or 30 minutes of load: far beyond the quick form's.
LONG_TIMEOUT_S = 4 * 3600 if os.environ.get("PLATFORM_FULL") == "1" else 3600
HANDLER = """\
import os


def handler(request):
    return {"version": os.environ["MORTY_VERSION"], "n": request.query.get("n")}
"""


@pytest.fixture(scope="session")
def full(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--full")) or os.environ.get("PLATFORM_FULL") == "1"


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory, registry: str, base: BaseImage) -> Iterator[Platform]:
    _require_host()
    root = tmp_path_factory.mktemp("platform")
    with multi_host_platform(root, registry, base.layout.parent.parent) as running:
        yield running


@dataclass(frozen=True)
class Deployed:
    name: str
    version: str
    paths: list[str]
    """Warm URLs of the function, one per gateway replica."""


def archive(handler: str = HANDLER) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("main.py", handler)
    return buffer.getvalue()


async def deploy(
    api: httpx.AsyncClient, name: str, version: str, *, upload: bool = True, within: float = 600
) -> dict[str, Any]:
    """Create and upload `version` (unless `upload` is false: it was), then wait until it is ready."""
    if upload:
        created = await api.post(f"/v1/functions/{name}/versions", json={"version": version})
        assert created.status_code == 201, created.text
        async with httpx.AsyncClient(timeout=60, trust_env=False) as plain:
            uploaded = await plain.put(created.json()["upload"]["url"], content=archive())
            assert uploaded.status_code == 200, uploaded.text
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        body: dict[str, Any] = (await api.get(f"/v1/functions/{name}/versions/{version}")).json()
        assert body["status"] != "failed", body
        if body["status"] == "ready":
            return body
        await asyncio.sleep(0.25)
    raise AssertionError(f"{name} {version} not ready within {within}s")


@pytest.fixture(scope="session")
def deployed(platform: Platform) -> Deployed:
    """The function `echo` 1.0.0 (container isolation), two instances kept warm, routed by both gateways."""
    return asyncio.run(_deploy_warm(platform))


async def _deploy_warm(platform: Platform) -> Deployed:
    async with platform.api() as api:
        created = await api.post(
            "/v1/functions",
            json={
                "name": FUNCTION, "runtime": "python3.11", "isolation": "container", "memory_mib": 128,
                "max_instances": 3, "concurrency": 1000, "idle_timeout_seconds": 3600,
            },
        )  # fmt: skip
        assert created.status_code == 201, created.text
        await deploy(api, FUNCTION, "1.0.0")
        # One instance per node at once (spreading), so every node pulls and unpacks the image now, in
        # parallel, not when an instance moves there; then two stay warm.
        started = await asyncio.gather(*(api.post(f"/v1/functions/{FUNCTION}/instances") for _ in range(3)))
        assert [s.status_code for s in started] == [201] * 3, [s.text for s in started]
        patched = await api.patch(f"/v1/functions/{FUNCTION}", json={"min_instances": 2, "max_instances": 2})
        assert patched.status_code == 200, patched.text
        stopped = await api.delete(f"/v1/functions/{FUNCTION}/instances/{started[2].json()['id']}")
        assert stopped.status_code == 204, stopped.text
    paths = [f"http://{g.address}:{GATEWAY_PORT}/fn/{FUNCTION}" for g in platform.gateways]
    deployed = Deployed(FUNCTION, "1.0.0", paths)
    await wait_warm(platform, deployed)
    return deployed


async def wait_warm(platform: Platform, deployed: Deployed, within: float = 120) -> list[dict[str, Any]]:
    """Until the function has its two instances and both gateways route to exactly their addresses;
    returns the instances."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    last: Any = None
    async with platform.api() as api:
        while loop.time() < deadline:
            instances = (await api.get(f"/v1/functions/{deployed.name}/instances")).json()["items"]
            addresses = sorted(f"{i['host']}:{i['port']}" for i in instances)
            targets = [await gateway_targets(platform, g, deployed) for g in platform.gateways]
            last = {"morty": addresses, "gateway targets": targets}
            if len(addresses) == 2 and all(t == addresses for t in targets):
                async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
                    answers = [await client.get(p) for p in deployed.paths]
                if all(a.status_code == 200 for a in answers):
                    return list(instances)
                last["answers"] = [f"{a.status_code} {a.text[:100]}" for a in answers]
            await asyncio.sleep(0.25)
    raise AssertionError(f"{deployed.name} not warm on both gateways within {within}s: {last}")


async def gateway_targets(platform: Platform, gateway: Any, deployed: Deployed) -> list[str]:
    """The addresses a gateway replica routes the function's latest version to."""
    async with platform.admin(gateway) as admin:
        services = (await admin.get("/v1/services")).json()["items"]
        found: list[str] = []
        for service in services:
            labels = service["spec"].get("labels", {})
            if labels.get("function") != deployed.name:
                continue
            targets = (await admin.get(f"/v1/services/{service['name']}/targets")).json()["items"]
            found += [t["address"] for t in targets]
    return sorted(set(found))


async def assert_routed_to_running(platform: Platform, deployed: Deployed, within: float = 30) -> list[dict[str, Any]]:
    """Until both gateway replicas route to exactly Morty's instances of the function (`wait_warm`); then
    those must be exactly the function's running instances in RIK. Returns Morty's instances."""
    instances = await wait_warm(platform, deployed, within=within)
    async with platform.cluster.client() as client:
        running = [
            i
            for i in (await client.list_instances()).items
            if i.phase == Phase.RUNNING and i.workload.startswith(f"{deployed.name}-")
        ]
    assert sorted(i.id for i in running) == sorted(i["id"] for i in instances), (running, instances)
    return instances
