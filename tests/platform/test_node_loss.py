"""A worker host is lost, killed (`kill -9` of its riklet) or cut off (its link to the bridge down), under
steady load: its instance runs again on another node and both gateway replicas route to the new address, not
the old, within 5 s of it running; meanwhile every request is answered, 200 or 502/503 (or, for one already
sent to the cut-off host, 504 at the function's timeout), none waits longer. When the host comes back it runs
no copy of what moved."""

from __future__ import annotations

import asyncio
import time

import pytest

from rik.model import Instance, NodeStatus, Phase
from tests.rik.e2e._cluster import Riklet, sh

from ._load import Load, summary
from ._platform import NODE_TIMEOUT, Platform
from ._record import record, share
from .conftest import Deployed, gateway_targets, wait_warm

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(300)]
RETARGET_WITHIN = 5.0


def _address(instance: Instance) -> str:
    return f"{instance.host_address}:{instance.ports[0].host_port}"


async def _lose_a_node(platform: Platform, deployed: Deployed, how: str, full: bool) -> None:
    cluster = platform.cluster
    await wait_warm(platform, deployed)
    async with cluster.client() as client:
        mine = [i for i in (await client.list_instances()).items if i.workload.startswith(f"{deployed.name}-")]
    victim_instance = mine[0]
    assert victim_instance.node is not None
    victim: Riklet = cluster.riklets[victim_instance.node]
    old = _address(victim_instance)

    async with platform.api() as api:
        function_timeout = (await api.get(f"/v1/functions/{deployed.name}")).json()["timeout_seconds"]
    paths = [f"{p}?n={how}" for p in deployed.paths]
    load = Load(paths, rate=20, duration=NODE_TIMEOUT + 15, timeout=function_timeout + 5).start()
    lost = time.monotonic()
    if how == "kill":
        victim.proc.kill()
    else:
        sh("ip", "link", "set", cluster.veth_of(victim), "down")
    try:
        moved = await cluster.wait_instances(
            lambda items: any(i.id == victim_instance.id and i.node != victim.name and i.phase == Phase.RUNNING
                              for i in items),
            "the lost node's instance to run elsewhere",
            timeout=NODE_TIMEOUT + 20,
        )  # fmt: skip
        running_again = time.monotonic()
        [instance] = [i for i in moved if i.id == victim_instance.id]
        new = _address(instance)
        for gateway in platform.gateways:
            while True:
                targets = await gateway_targets(platform, gateway, deployed)
                if new in targets and old not in targets:
                    break
                waited = time.monotonic() - running_again
                assert waited <= RETARGET_WITHIN, f"{gateway.proc.name} still routes to {targets} ({old} → {new})"
                await asyncio.sleep(0.1)
        retargeted = time.monotonic() - running_again
        outcomes = load.wait()
    finally:
        if how == "kill":
            cluster.start_riklet(victim.name, netns=victim.netns)
        else:
            sh("ip", "link", "set", cluster.veth_of(victim), "up")
    print(f"{how}: running elsewhere {running_again - lost:.1f}s after, gateways follow {retargeted:.1f}s later")
    print(f"{how}: {summary(outcomes)}")
    assert not [o for o in outcomes if o.status is None], f"requests without an answer: {summary(outcomes)}"
    # A request in flight on a connection to the cut-off host can only time out (the gateway answers 504).
    assert {o.status for o in outcomes} <= {200, 502, 503} | ({504} if how == "partition" else set()), summary(outcomes)
    assert sum(o.status == 200 for o in outcomes) >= 0.9 * len(outcomes), summary(outcomes)
    figures = {
        "lost → its instance running elsewhere, s": round(running_again - lost, 2),
        "running → both gateways route to it, s": round(retargeted, 2),
        "requests meanwhile": summary(outcomes),
        "200 meanwhile": share(sum(o.status == 200 for o in outcomes), len(outcomes)),
    }

    # Back: the node is Ready again and runs no copy of the instance that moved.
    await cluster.wait_nodes(
        lambda nodes: all(n.status == NodeStatus.READY for n in nodes), "every node Ready again", timeout=30
    )
    deadline = time.monotonic() + 20
    while any(c["id"] == victim_instance.id for c in await cluster.containers(victim)):
        assert time.monotonic() < deadline, f"{victim.name} still runs its copy of {victim_instance.id}"
        await asyncio.sleep(0.2)
    copies = [r.name for r in cluster.riklets.values() for c in await cluster.containers(r) if c["id"] == instance.id]
    assert copies == [instance.node], f"copies of {instance.id}: {copies}"
    await wait_warm(platform, deployed, within=30)
    title = {"kill": "A riklet killed under load", "partition": "A riklet cut off (its link down) under load"}[how]
    record(f"node_loss_{how}", title, full=full, figures=figures)


async def test_a_killed_riklets_instance_moves_and_the_gateways_follow(
    platform: Platform, deployed: Deployed, full: bool
) -> None:
    await _lose_a_node(platform, deployed, "kill", full)


async def test_a_partitioned_riklets_instance_moves_and_it_runs_no_duplicate_when_healed(
    platform: Platform, deployed: Deployed, full: bool
) -> None:
    await _lose_a_node(platform, deployed, "partition", full)
