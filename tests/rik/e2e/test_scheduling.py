"""Placement across real nodes: what fits nowhere waits with a reason, replicas spread evenly."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from rik.model import Phase
from tests.support.http import http_get

from ._cluster import Cluster, pod_manifest
from .conftest import INDEX_HTML

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


async def test_too_big_stays_pending_with_a_reason_and_replicas_spread_evenly(cluster: Cluster, image: str) -> None:
    cluster.start_controller()
    riklets = [cluster.start_riklet(name, cpu=2000, memory=1024) for name in ("n1", "n2")]

    huge = cluster.write_manifest("huge", pod_manifest("huge", image, memory=100_000))
    applied = await cluster.rikctl("apply", "-f", str(huge))
    assert applied.code == 0, applied
    await cluster.wait_instances(
        lambda items: any(i.workload == "huge" and i.reason == "Unschedulable" for i in items),
        "the huge instance to be found unschedulable",
    )
    shown = await cluster.rikctl("get", "instances", "--workload", "huge", "-o", "json")
    assert shown.code == 0, shown
    [pending] = json.loads(shown.stdout)
    assert (pending["phase"], pending["node"], pending["reason"]) == ("Pending", None, "Unschedulable"), pending
    for fragment in ("0/2 nodes can run it", "2 insufficient memory", "100000 MiB", "1024 MiB"):
        assert fragment in pending["message"], pending["message"]

    spread = cluster.write_manifest("spread", pod_manifest("spread", image, replicas=4))
    applied = await cluster.rikctl("apply", "-f", str(spread))
    assert applied.code == 0, applied
    instances = await cluster.wait_instances(
        lambda items: [i.phase for i in items if i.workload == "spread"] == [Phase.RUNNING] * 4,
        "four running replicas",
        timeout=60,
    )
    replicas = [i for i in instances if i.workload == "spread"]
    assert Counter(i.node for i in replicas) == {"n1": 2, "n2": 2}, replicas
    for replica in replicas:
        url = f"http://{replica.host_address}:{replica.ports[0].host_port}/"
        assert await http_get(url) == (200, INDEX_HTML), url
    for riklet in riklets:
        assert len(await cluster.containers(riklet)) == 2

    nodes = await cluster.rikctl("get", "nodes", "-o", "json")
    assert nodes.code == 0, nodes
    allocated = {n["name"]: n["allocated"] for n in json.loads(nodes.stdout)}
    assert allocated == {"n1": {"cpu": 200, "memory": 128}, "n2": {"cpu": 200, "memory": 128}}
    # The huge one still waits: room on two nodes together is not room on one.
    async with cluster.client() as client:
        [still] = (await client.list_instances(workload="huge")).items
    assert (still.phase, still.node, still.reason) == (Phase.PENDING, None, "Unschedulable")
