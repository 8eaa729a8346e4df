"""The leading controller is killed: the other takes over scheduling within the lease (the lock timeout), and
the killed one, back again, follows."""

from __future__ import annotations

import asyncio
import time

import pytest

from rik.model import Phase
from tests.rik.e2e._cluster import pod_manifest

from ._platform import HEARTBEAT, LEASE_TTL, Platform, wait_until
from ._record import record

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(300)]
TICK = 0.5
"""The controllers' leader-loop tick (rik.controller.leader.LeaderSettings.tick)."""


async def test_the_other_controller_takes_over_scheduling_within_the_lease(
    platform: Platform, image: str, full: bool
) -> None:
    cluster = platform.cluster
    leader = wait_until(cluster.leader, "a leader", LEASE_TTL + 5)
    [other] = [c for c in cluster.controllers() if c is not leader]

    leader.proc.kill()
    killed = time.monotonic()
    # New work right away, through whichever controller answers: it waits for a leader to schedule it.
    manifest = pod_manifest("after-failover", image.replace(cluster.registry, platform.registry, 1), memory=32)
    async with cluster.client() as client:
        await client.create_workload(manifest)
        placed = await cluster.wait_instances(
            lambda items: any(i.workload == "after-failover" and i.node for i in items),
            "the new pod to be placed",
            timeout=LEASE_TTL + 10,
        )
    scheduled_after = time.monotonic() - killed
    assert cluster.leader() is other
    # The lease outlives its holder by at most LEASE_TTL; the new leader renews and schedules on its next tick.
    assert scheduled_after <= LEASE_TTL + 2 * TICK + HEARTBEAT + 1.0, f"scheduled {scheduled_after:.1f}s after"
    [instance] = [i for i in placed if i.workload == "after-failover"]
    running = await cluster.running_instance("after-failover", timeout=30)
    assert running.id == instance.id and running.phase == Phase.RUNNING

    cluster.start_again(leader)
    await asyncio.sleep(2 * TICK)
    assert cluster.leader() is other, "a controller that comes back follows the one that leads"
    async with cluster.client() as client:
        await client.delete_workload("after-failover")
    await cluster.wait_instances(
        lambda items: not [i for i in items if i.workload == "after-failover"], "the pod to go", timeout=30
    )
    record(
        "leader",
        "The leading controller killed",
        full=full,
        figures={"killed → new work scheduled by the other, s": round(scheduled_after, 2), "lease TTL, s": LEASE_TTL},
    )
