"""`kill -9` Morty APIs, then each RIK controller in turn, under steady warm load through both gateway
replicas: warm requests keep succeeding while each is down (≥ 99.9 %, none hangs), nothing Morty acknowledged
just before it died is lost, and once everything is back the platform converges (one leader, Morty's
instances are RIK's running ones, both gateways route to exactly them)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from rik.model import NodeStatus, Phase

from ._load import Load, between, summary
from ._platform import Platform
from .conftest import Deployed, gateway_targets, wait_warm

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]


async def _acknowledged_writes(platform: Platform, deployed: Deployed) -> dict[str, Any]:
    """Writes of every kind, each answered 2xx; returns what must be found again."""
    async with platform.api() as api:
        created = await api.post(
            "/v1/functions", json={"name": "kept", "runtime": "python3.11", "env": {"MODE": "kept"}}
        )
        assert created.status_code == 201, created.text
        version = await api.post("/v1/functions/kept/versions", json={"version": "0.1.0"})
        assert version.status_code == 201, version.text
        alias = await api.post(f"/v1/functions/{deployed.name}/aliases", json={"name": "prod", "version": "1.0.0"})
        assert alias.status_code == 201, alias.text
        patched = await api.patch(f"/v1/functions/{deployed.name}", json={"timeout_seconds": 17})
        assert patched.status_code == 200, patched.text
    return {"kept": created.json(), "version": version.json()["version"], "alias": alias.json()}


async def _assert_kept(platform: Platform, deployed: Deployed, acknowledged: dict[str, Any]) -> None:
    async with platform.api() as api:
        kept = (await api.get("/v1/functions/kept")).json()
        assert kept["env"] == {"MODE": "kept"}, kept
        versions = [v["version"] for v in (await api.get("/v1/functions/kept/versions")).json()["items"]]
        assert versions == [acknowledged["version"]]
        aliases = (await api.get(f"/v1/functions/{deployed.name}/aliases")).json()["items"]
        assert [(a["name"], a["version"]) for a in aliases] == [("prod", "1.0.0")]
        echo = (await api.get(f"/v1/functions/{deployed.name}")).json()
        assert echo["timeout_seconds"] == 17, echo
        assert (await api.delete("/v1/functions/kept")).status_code == 200
        assert (await api.delete(f"/v1/functions/{deployed.name}/aliases/prod")).status_code == 204


async def test_warm_traffic_survives_morty_and_each_controller_killed(
    platform: Platform, deployed: Deployed, full: bool
) -> None:
    cluster = platform.cluster
    await wait_warm(platform, deployed)
    down = 10.0 if full else 3.0
    load = Load([f"{p}?n=warm" for p in deployed.paths], rate=50 if full else 20, duration=6 * down + 30).start()
    await asyncio.sleep(1)
    windows: list[tuple[str, float, float]] = []

    acknowledged = await _acknowledged_writes(platform, deployed)
    platform.kill(platform.morty)
    started = time.monotonic()
    await asyncio.sleep(down)
    platform.start_morty()
    windows.append(("morty-api", started, time.monotonic()))
    await _assert_kept(platform, deployed, acknowledged)

    for controller in cluster.controllers():
        others = [c for c in cluster.controllers() if c is not controller]
        controller.proc.kill()
        started = time.monotonic()
        await asyncio.sleep(down)
        # The other controller answers meanwhile, and clients given both reach it.
        async with cluster.client() as client:
            nodes = (await client.list_nodes()).items
        assert all(n.status == NodeStatus.READY for n in nodes), nodes
        assert all(c.proc.alive() for c in others)
        cluster.start_again(controller)
        windows.append((controller.proc.name, started, time.monotonic()))

    outcomes = load.wait()
    assert outcomes[-1].at > windows[-1][2], "the load ended before the last component came back"
    for name, start, end in windows:
        during = between(outcomes, start, end)
        ok = [o for o in during if o.status == 200]
        assert len(during) >= 10, f"{name}: too few requests while down: {summary(during)}"
        assert len(ok) >= 0.999 * len(during), f"while {name} was down: {summary(during)}"
    assert not [o for o in outcomes if o.status is None], f"requests without an answer: {summary(outcomes)}"
    assert sum(o.status == 200 for o in outcomes) >= 0.999 * len(outcomes), summary(outcomes)

    # Converged: one leader, both nodes' views agree, Morty's instances are RIK's and the gateways' targets.
    instances = await wait_warm(platform, deployed, within=30)
    assert cluster.leader() is not None
    async with cluster.client() as client:
        running = [
            i
            for i in (await client.list_instances()).items
            if i.phase == Phase.RUNNING and i.workload.startswith(f"{deployed.name}-")
        ]
        nodes = (await client.list_nodes()).items
    assert sorted(i.id for i in running) == sorted(i["id"] for i in instances), (running, instances)
    assert sorted((n.name, n.status) for n in nodes) == [(w, NodeStatus.READY) for w in ("w1", "w2", "w3")]
    addresses = sorted(f"{i['host']}:{i['port']}" for i in instances)
    for gateway in platform.gateways:
        assert await gateway_targets(platform, gateway, deployed) == addresses
