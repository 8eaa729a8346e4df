"""Morty's RIK backend against a real controller and riklet: a version is registered without an
instance, instances come up ready on request (booted, then restored from the version's snapshot),
and exactly the instance asked for goes away."""

from __future__ import annotations

import asyncio

import pytest

from morty.orchestrators.base import DeploymentSpec, Isolation, OrchestratorError, StartPath
from morty.orchestrators.rik import RikOrchestrator
from rik.client import RikClient
from tests.rik.e2e._cluster import Cluster
from tests.rik.e2e.conftest import INDEX_HTML
from tests.support.http import http_get

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


async def test_container_version_lifecycle(cluster: Cluster, image: str) -> None:
    cluster.start_controller()
    cluster.start_riklet("n1")
    async with RikClient(cluster.url) as client:
        rik = RikOrchestrator(client)
        spec = DeploymentSpec(key="fn-hello-1-0-0", image=image, isolation=Isolation.CONTAINER, memory_mib=32)
        await rik.register(spec)
        assert (await client.get_workload(spec.key)).spec.replicas == 0
        assert (await client.list_instances(workload=spec.key)).items == []

        # Two at once: each gets the instance its own scaling made, not whichever runs first.
        first, second = await asyncio.gather(*(rik.start_instance(spec.key, within=60) for _ in range(2)))
        assert first.instance_id != second.instance_id and first.path == StartPath.BOOTED
        for endpoint in (first, second):
            assert await http_get(f"http://{endpoint.host}:{endpoint.port}/") == (200, INDEX_HTML)
        assert {e.instance_id for e in await rik.instances(spec.key)} == {first.instance_id, second.instance_id}

        # Registering again (a config change) keeps the running count.
        await rik.register(spec)
        assert (await client.get_workload(spec.key)).spec.replicas == 2

        await rik.stop_instance(spec.key, first.instance_id)
        remaining = [i for i in (await client.list_instances(workload=spec.key)).items if i.desired_state == "Running"]
        assert [i.id for i in remaining] == [second.instance_id]
        assert (await client.get_workload(spec.key)).spec.replicas == 1

        await rik.unregister(spec.key)
        assert (await client.list_workloads()).items == []


async def test_a_failing_version_reports_why(cluster: Cluster, registry: str) -> None:
    cluster.start_controller()
    cluster.start_riklet("n1")
    async with RikClient(cluster.url) as client:
        rik = RikOrchestrator(client)
        spec = DeploymentSpec(key="fn-broken", image=f"{registry}/does/not-exist:1", isolation=Isolation.CONTAINER)
        await rik.register(spec)
        with pytest.raises(OrchestratorError) as failure:
            await rik.start_instance(spec.key, within=60)
        assert failure.value.reason == "ImagePullFailed"
        await rik.unregister(spec.key)
