"""`kill -9` Morty APIs, then each RIK controller in turn, under steady warm load through both gateway
replicas: warm requests keep succeeding while each is down (≥ 99.9 %, none hangs), nothing Morty acknowledged
just before it died is lost, and once everything is back the platform converges (one leader, Morty's
instances are RIK's running ones, both gateways route to exactly them).

`kill -9` a gateway replica (its management process and its workers) under the same load: requests through
the other replica keep succeeding (≥ 99.9 %, none hangs), requests to the killed one fail at once (connection
refused or reset, never a wait), no invocation record Morty had acknowledged is lost, and the replica, started
again, restores its routes from the shared database and routes to exactly the function's running instances."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import pytest

from rik.model import NodeStatus

from ._load import Load, Outcome, between, summary
from ._platform import Platform
from ._record import record, share
from .conftest import Deployed, assert_routed_to_running, gateway_targets, wait_warm
from .test_leaks import _children

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]
FAIL_FAST_S = 1.0
"""A request to a killed gateway replica is refused (or its connection reset) within this, never waits."""


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
    figures: dict[str, Any] = {"seconds down each": down}
    for name, start, end in windows:
        during = between(outcomes, start, end)
        ok = [o for o in during if o.status == 200]
        assert len(during) >= 10, f"{name}: too few requests while down: {summary(during)}"
        assert len(ok) >= 0.999 * len(during), f"while {name} was down: {summary(during)}"
        figures[f"warm 200 while {name} down"] = share(len(ok), len(during))
    assert not [o for o in outcomes if o.status is None], f"requests without an answer: {summary(outcomes)}"
    assert sum(o.status == 200 for o in outcomes) >= 0.999 * len(outcomes), summary(outcomes)

    # Converged: one leader, both nodes' views agree, Morty's instances are RIK's and the gateways' targets.
    instances = await assert_routed_to_running(platform, deployed)
    assert cluster.leader() is not None
    async with cluster.client() as client:
        nodes = (await client.list_nodes()).items
    assert sorted((n.name, n.status) for n in nodes) == [(w, NodeStatus.READY) for w in ("w1", "w2", "w3")]
    addresses = sorted(f"{i['host']}:{i['port']}" for i in instances)
    for gateway in platform.gateways:
        assert await gateway_targets(platform, gateway, deployed) == addresses
    figures["warm 200 over the whole load"] = share(sum(o.status == 200 for o in outcomes), len(outcomes))
    record("control_plane_down", "Morty APIs and each RIK controller killed under load", full=full, figures=figures)


async def _acknowledged_records(platform: Platform, deployed: Deployed, pages: int) -> set[str]:
    """Ids of the function's newest invocation records Morty has stored (`pages` pages of 500)."""
    found: set[str] = set()
    cursor = None
    async with platform.api() as api:
        for _ in range(pages):
            params: dict[str, Any] = {"limit": 500} | ({"cursor": cursor} if cursor else {})
            page = (await api.get(f"/v1/functions/{deployed.name}/invocations", params=params)).json()
            found |= {r["id"] for r in page["items"]}
            if not (cursor := page.get("next_cursor")):
                break
    return found


async def test_a_killed_gateway_replica_fails_fast_and_restores_its_routes(
    platform: Platform, deployed: Deployed, full: bool
) -> None:
    await wait_warm(platform, deployed)
    victim, survivor = platform.gateways
    down = 10.0 if full else 5.0
    load = Load([f"{p}?n=gw" for p in deployed.paths], rate=50 if full else 20, duration=down + 20).start()
    await asyncio.sleep(2)
    acknowledged = await _acknowledged_records(platform, deployed, pages=1)

    workers = _children(victim.proc.pid)
    platform.kill(victim)
    for worker in workers:  # the whole replica, as a crashed host loses it
        os.kill(worker, signal.SIGKILL)
    killed = time.monotonic()
    await asyncio.sleep(down)
    started = time.monotonic()
    platform.start_gateway(victim)
    await assert_routed_to_running(platform, deployed)
    restored = time.monotonic()
    outcomes = load.wait()

    def to(gateway: Any, start: float, end: float) -> list[Outcome]:
        return [o for o in between(outcomes, start, end) if o.target.startswith(platform.proxy_url(gateway))]

    through_survivor = to(survivor, killed, restored)
    ok = sum(o.status == 200 for o in through_survivor)
    assert len(through_survivor) >= 10 and ok >= 0.999 * len(through_survivor), summary(through_survivor)
    to_victim = to(victim, killed, started)
    failed = [o for o in to_victim if o.status != 200]
    assert len(failed) >= 10, f"the killed replica answered: {summary(to_victim)}"
    slow = [
        o for o in failed if o.status is not None or o.error is None or "timeout" in o.error or o.seconds > FAIL_FAST_S
    ]
    assert not slow, f"requests to the killed replica not refused at once: {summary(slow)} {slow[:3]}"
    after = to(victim, restored, outcomes[-1].at)
    assert after and all(o.status == 200 for o in after), f"after its routes were restored: {summary(after)}"
    assert not [o for o in outcomes if o.status is None and o.target.startswith(platform.proxy_url(survivor))]
    lost = acknowledged - await _acknowledged_records(platform, deployed, pages=8)
    assert not lost, f"{len(lost)} acknowledged invocation records lost, e.g. {sorted(lost)[:3]}"
    print(f"gateway killed: {summary(to_victim)}; survivor {summary(through_survivor)}")
    print(f"gateway killed: routes restored {restored - started:.1f}s after it was started again")
    record(
        "gateway_kill",
        "A gateway replica killed under load",
        full=full,
        figures={
            "seconds down": down,
            "warm 200 through the other replica meanwhile": share(ok, len(through_survivor)),
            "requests to the killed replica refused": len(failed),
            "slowest refusal ms": round(max(o.seconds for o in failed) * 1000, 1),
            "started again → routing to the running instances, s": round(restored - started, 2),
            "requests to it once restored, 200": share(len(after), len(after)),
            "acknowledged invocation records kept": share(len(acknowledged), len(acknowledged)),
        },
    )
