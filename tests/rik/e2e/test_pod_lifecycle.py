"""A user's first Pod: apply it with rikctl, reach it over HTTP, delete it, and find nothing left on the host."""

from __future__ import annotations

import json

import pytest

from tests.support.http import http_get

from ._cluster import Cluster, in_subnet, pod_manifest
from .conftest import INDEX_HTML

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


async def test_apply_serve_and_delete_leaves_nothing_on_the_host(cluster: Cluster, image: str) -> None:
    cluster.start_controller()
    node = cluster.start_riklet("n1")
    manifest = cluster.write_manifest("web", pod_manifest("web", image))

    applied = await cluster.rikctl("apply", "-f", str(manifest))
    assert (applied.code, applied.stdout.strip(), applied.stderr) == (0, "workload/web created", ""), applied

    instance = await cluster.running_instance("web")
    assert instance.node == "n1" and in_subnet(instance.address, node.subnet), instance
    assert instance.host_address == node.address and len(instance.ports) == 1, instance
    binding = instance.ports[0]
    assert binding.port == 8080 and binding.host_port is not None, instance

    # rikctl shows what the API says.
    listed = await cluster.rikctl("get", "instances", "-o", "json")
    assert listed.code == 0, listed
    [shown] = json.loads(listed.stdout)
    assert (shown["id"], shown["phase"], shown["address"]) == (instance.id, "Running", instance.address)

    # The instance answers on its own address and on the node's host port.
    assert await http_get(f"http://{instance.address}:8080/") == (200, INDEX_HTML), cluster.logs()
    assert await http_get(f"http://{node.address}:{binding.host_port}/") == (200, INDEX_HTML), cluster.logs()
    logs = await cluster.rikctl("logs", instance.id)
    assert logs.code == 0, logs

    # On the host: a container with its process, namespace, veth, overlay, cgroup and port forwarding.
    state = await cluster.container_state(node, instance.id)
    assert state is not None and state["status"] == "running", state
    pid = int(state["pid"])
    before = await cluster.footprint(node, instance.id, pid)
    assert all(before.values()), f"expected on the host while running: {before}"

    deleted = await cluster.rikctl("delete", "workload", "web", "--wait", "--timeout", "30")
    assert (deleted.code, deleted.stdout.strip()) == (0, "workload/web deleted"), deleted

    after = await cluster.footprint(node, instance.id, pid)
    left = [what for what, present in after.items() if present]
    assert not left, f"left on the host after delete --wait: {left}\n{cluster.logs()}"
    assert await cluster.containers(node) == []
    workloads = await cluster.rikctl("get", "workloads", "-o", "json")
    assert (workloads.code, json.loads(workloads.stdout)) == (0, []), workloads
