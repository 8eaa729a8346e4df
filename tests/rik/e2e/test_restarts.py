"""Restarts lose nothing: the controller comes back from its SQLite file, a killed riklet adopts its containers."""

from __future__ import annotations

import signal

import httpx
import pytest

from rik.model import NodeStatus, Phase
from tests.support.http import http_get

from ._cluster import Cluster, pid_alive, pod_manifest
from .conftest import INDEX_HTML

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


async def test_controller_restart_loses_nothing_and_a_killed_riklet_adopts_its_containers(
    cluster: Cluster, image: str
) -> None:
    cluster.start_controller()
    node = cluster.start_riklet("n1")
    applied = await cluster.rikctl("apply", "-f", str(cluster.write_manifest("web", pod_manifest("web", image))))
    assert applied.code == 0, applied
    instance = await cluster.running_instance("web")
    async with cluster.client() as client:
        workload = await client.get_workload("web")
    state = await cluster.container_state(node, instance.id)
    assert state is not None, cluster.logs()
    pid = int(state["pid"])

    # The controller stops on SIGTERM and comes back from the same database.
    code, stop_seconds = cluster.restart_controller()
    # uvicorn re-raises the SIGTERM it handled once it has shut down cleanly.
    assert code in (0, -signal.SIGTERM), f"the controller exited {code} on SIGTERM:\n{cluster.logs()}"
    assert stop_seconds < 10, f"the controller took {stop_seconds:.1f}s to stop:\n{cluster.logs()}"
    async with cluster.client() as client:
        again = await client.get_workload("web")
        instances = (await client.list_instances()).items
        nodes = (await client.list_nodes()).items
    assert (again.metadata.uid, again.metadata.created_at, again.spec) == (
        workload.metadata.uid,
        workload.metadata.created_at,
        workload.spec,
    )
    assert [(i.id, i.node, i.phase, i.address, i.ports) for i in instances] == [
        (instance.id, "n1", Phase.RUNNING, instance.address, instance.ports)
    ], cluster.logs()
    assert [(n.name, n.status) for n in nodes] == [("n1", NodeStatus.READY)]
    host_port = instance.ports[0].host_port
    assert await http_get(f"http://{node.address}:{host_port}/") == (200, INDEX_HTML)
    assert (await cluster.container_state(node, instance.id) or {}).get("pid") == pid

    # The riklet follows the restarted controller: a scale-up reaches it through its watch.
    scaled = await cluster.rikctl("scale", "web", "-r", "2")
    assert (scaled.code, scaled.stdout.strip()) == (0, "workload/web scaled to 2"), scaled
    running = await cluster.wait_instances(
        lambda items: [i.phase for i in items] == [Phase.RUNNING] * 2, "two running instances after the restart"
    )
    pids = {}
    for item in running:
        item_state = await cluster.container_state(node, item.id)
        assert item_state is not None and item_state["status"] == "running", item_state
        pids[item.id] = int(item_state["pid"])
    assert pids[instance.id] == pid

    # kill -9 the riklet: its containers outlive it and keep serving.
    node.proc.kill(signal.SIGKILL)
    assert all(pid_alive(p) for p in pids.values())
    assert await http_get(f"http://{node.address}:{host_port}/") == (200, INDEX_HTML)

    # Started again, it adopts them: same containers and pids, still Running, nothing started twice.
    cluster.start_riklet("n1")
    log = node.proc.log_path.read_text().rpartition("===== ")[2]
    assert log.count("adopted running instance") == 2, node.proc.tail(60)
    async with cluster.client() as client, httpx.AsyncClient(trust_env=False) as http:
        after = (await client.list_instances()).items
        runners = (await http.get(f"{node.url}/v1/instances")).json()
    assert sorted((i.id, i.node, i.phase) for i in after) == sorted((i, "n1", Phase.RUNNING) for i in pids)
    assert sorted((r["id"], r["phase"]) for r in runners) == sorted((i, "Running") for i in pids)
    containers = await cluster.containers(node)
    assert sorted((c["id"], c["pid"], c["status"]) for c in containers) == sorted(
        (i, p, "running") for i, p in pids.items()
    )
    for item in running:
        port = item.ports[0].host_port
        assert await http_get(f"http://{node.address}:{port}/") == (200, INDEX_HTML), cluster.logs()
    # Still one container per instance once the riklet has been back for a while (its watch replayed).
    assert len(await cluster.containers(node)) == 2
