"""A node is lost: its instance moves to a second host (a network namespace), and the first host, back
again, removes the copy it was left with."""

from __future__ import annotations

import time

import pytest

from rik.model import NodeStatus, Phase
from tests.support.http import http_get

from ._cluster import Cluster, in_subnet, pid_alive, pod_manifest
from .conftest import INDEX_HTML

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NODE_TIMEOUT = 3.0
HEARTBEAT = 0.5


async def test_instance_of_a_lost_node_is_rescheduled_on_another_host(cluster: Cluster, image: str) -> None:
    other = cluster.add_host()
    # The second host reaches the registry (127.0.0.1 only) and the controller through its gateway.
    image = image.replace(cluster.registry, cluster.expose_registry(other), 1)
    cluster.start_controller(host=other.outer_ip, node_timeout=NODE_TIMEOUT)
    first = cluster.start_riklet("n1", address=other.outer_ip, heartbeat=HEARTBEAT)
    applied = await cluster.rikctl("apply", "-f", str(cluster.write_manifest("web", pod_manifest("web", image))))
    assert applied.code == 0, applied
    instance = await cluster.running_instance("web")
    assert instance.node == "n1", instance
    assert await http_get(f"http://{first.address}:{instance.ports[0].host_port}/") == (200, INDEX_HTML)

    second = cluster.start_riklet("n2", netns=other, heartbeat=HEARTBEAT)
    await cluster.wait_nodes(
        lambda nodes: sorted((n.name, n.status) for n in nodes) == [("n1", "Ready"), ("n2", "Ready")],
        "both nodes Ready",
    )
    state = await cluster.container_state(first, instance.id)
    assert state is not None, cluster.logs()
    pid = int(state["pid"])

    # kill -9 the first riklet: its node goes NotReady after the node timeout, not before.
    killed = time.monotonic()
    first.proc.kill()
    await cluster.wait_nodes(
        lambda nodes: any(n.name == "n1" and n.status == NodeStatus.NOT_READY for n in nodes),
        "n1 to go NotReady",
        timeout=NODE_TIMEOUT + 10,
    )
    lost_after = time.monotonic() - killed
    assert NODE_TIMEOUT - HEARTBEAT - 0.5 <= lost_after <= NODE_TIMEOUT + 3, f"NotReady after {lost_after:.1f}s"

    # The same instance is placed on the second host and answers there, from this (the root) namespace.
    moved = await cluster.wait_instances(
        lambda items: [(i.node, i.phase) for i in items] == [("n2", Phase.RUNNING)],
        "the instance to run on n2",
        timeout=45,
    )
    [instance_there] = moved
    assert instance_there.id == instance.id, moved
    assert in_subnet(instance_there.address, second.subnet) and instance_there.host_address == second.address
    host_port = instance_there.ports[0].host_port
    assert await http_get(f"http://{second.address}:{host_port}/") == (200, INDEX_HTML), cluster.logs()

    # The first host never heard: its container still runs. Its riklet, started again on the same data
    # directory, removes it because the controller no longer assigns it there.
    assert pid_alive(pid)
    cluster.start_riklet("n1", address=other.outer_ip, heartbeat=HEARTBEAT)
    log = first.proc.log_path.read_text().rpartition("===== ")[2]
    assert "removing instance no longer assigned to this node" in log, first.proc.tail(60)
    left = [what for what, present in (await cluster.footprint(first, instance.id, pid)).items() if present]
    assert not left, f"n1 kept its unassigned copy: {left}\n{cluster.logs()}"
    assert await cluster.containers(first) == []

    async with cluster.client() as client:
        instances = (await client.list_instances()).items
        nodes = (await client.list_nodes()).items
    assert [(i.id, i.node, i.phase) for i in instances] == [(instance.id, "n2", Phase.RUNNING)], instances
    assert sorted((n.name, n.status) for n in nodes) == [("n1", "Ready"), ("n2", "Ready")]
    assert await http_get(f"http://{second.address}:{host_port}/") == (200, INDEX_HTML)
