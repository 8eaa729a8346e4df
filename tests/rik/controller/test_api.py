"""The controller's API against a real SQLite database: workloads, instances, nodes, scheduling."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from ipaddress import IPv4Network
from typing import Any

import httpx
from sqlalchemy import update

from rik.controller import store
from rik.controller.app import ControllerSettings, create_app
from rik.controller.database import Database
from rik.controller.leader import LEASE as LEADER_LEASE
from rik.controller.leader import LeaderLoop, LeaderSettings
from rik.controller.tables import NodeRow
from rik.model import NodeRegistration, WorkloadManifest
from tests.rik.controller.conftest import ControllerFactory, manifest, node


async def schedule(api: httpx.AsyncClient) -> int:
    """Run one scheduling pass now (the leader loop would also do it within a tick)."""
    leader = api.app.state.controller.leader  # type: ignore[attr-defined]
    await leader._step()
    return int(await leader.schedule())


async def instances(api: httpx.AsyncClient, **params: str) -> list[dict[str, Any]]:
    response = await api.get("/api/v1/instances", params=params)
    assert response.status_code == 200
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def report(api: httpx.AsyncClient, instance: dict[str, Any], phase: str, **extra: Any) -> httpx.Response:
    return await api.put(
        f"/api/v1/instances/{instance['id']}/status", json={"node": instance["node"], "phase": phase, **extra}
    )


async def test_workload_creates_its_replicas_and_they_are_placed(api: httpx.AsyncClient) -> None:
    assert (await api.post("/api/v1/nodes", json=node("n1"))).status_code == 200
    created = await api.post("/api/v1/workloads", json=manifest(replicas=3))
    assert created.status_code == 201, created.text
    assert created.json()["status"] == {"replicas": 3, "running": 0, "pending": 3, "failed": 0, "paused": 0}

    await schedule(api)
    placed = await instances(api, workload="web")
    assert [i["node"] for i in placed] == ["n1"] * 3
    assert all(i["phase"] == "Pending" and i["reason"] == "Scheduled" for i in placed)

    again = await api.post("/api/v1/workloads", json=manifest(replicas=3))
    assert again.status_code == 409
    assert "already exists" in again.json()["error"]


async def test_four_replicas_spread_two_and_two_over_equal_nodes(api: httpx.AsyncClient) -> None:
    for name in ("n1", "n2"):
        await api.post("/api/v1/nodes", json=node(name))
    await api.post("/api/v1/workloads", json=manifest(replicas=4))
    await schedule(api)
    assert Counter(i["node"] for i in await instances(api)) == {"n1": 2, "n2": 2}


async def test_instance_too_big_for_every_node_stays_pending_with_a_reason(api: httpx.AsyncClient) -> None:
    await api.post("/api/v1/nodes", json=node("n1", memory=2048))
    await api.post("/api/v1/workloads", json=manifest("huge", memory=100_000))
    await schedule(api)
    [instance] = await instances(api)
    assert instance["node"] is None
    assert instance["phase"] == "Pending"
    assert instance["reason"] == "Unschedulable"
    assert "insufficient memory" in instance["message"]
    assert "100000 MiB" in instance["message"]


async def test_scheduler_never_overcommits_a_node(api: httpx.AsyncClient) -> None:
    await api.post("/api/v1/nodes", json=node("n1", cpu=1000, memory=1000))
    await api.post("/api/v1/workloads", json=manifest(replicas=5, memory=300, cpu=100))
    await schedule(api)
    placed = [i for i in await instances(api) if i["node"]]
    assert len(placed) == 3
    described = (await api.get("/api/v1/nodes/n1")).json()
    assert described["allocated"] == {"cpu": 300, "memory": 900}


async def test_vm_workload_waits_for_a_node_with_the_vm_runtime(api: httpx.AsyncClient) -> None:
    await api.post("/api/v1/nodes", json=node("containers-only"))
    await api.post("/api/v1/workloads", json=manifest("vm", kind="VM"))
    await schedule(api)
    [instance] = await instances(api)
    assert instance["node"] is None
    assert "no vm runtime" in instance["message"]

    await api.post("/api/v1/nodes", json=node("vm-host", runtimes=["container", "vm"]))
    await schedule(api)
    [instance] = await instances(api)
    assert instance["node"] == "vm-host"


async def test_scaling_up_and_down(api: httpx.AsyncClient) -> None:
    await api.post("/api/v1/nodes", json=node("n1"))
    await api.post("/api/v1/workloads", json=manifest(replicas=1))
    await schedule(api)
    [first] = await instances(api)
    assert (await report(api, first, "Running", address="10.88.0.2")).status_code == 200

    scaled = await api.patch("/api/v1/workloads/web/scale", json={"replicas": 3})
    assert scaled.status_code == 200 and scaled.json()["spec"]["replicas"] == 3
    assert len(await instances(api)) == 3

    await api.patch("/api/v1/workloads/web/scale", json={"replicas": 1})
    remaining = [i for i in await instances(api) if i["desired_state"] == "Running"]
    # The running instance is kept; the two that never started go first.
    assert [i["id"] for i in remaining] == [first["id"]]

    bad = await api.patch("/api/v1/workloads/web/scale", json={"replicas": -1})
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "replicas"
    missing = await api.patch("/api/v1/workloads/nope/scale", json={"replicas": 1})
    assert missing.status_code == 404


async def test_deleting_a_workload_deletes_its_instances_once_the_riklet_confirms(api: httpx.AsyncClient) -> None:
    await api.post("/api/v1/nodes", json=node("n1"))
    await api.post("/api/v1/workloads", json=manifest(replicas=2))
    await schedule(api)
    for instance in await instances(api):
        await report(api, instance, "Running")

    deleted = await api.delete("/api/v1/workloads/web")
    assert deleted.status_code == 200
    assert (await api.get("/api/v1/workloads/web")).status_code == 404
    marked = await instances(api)
    assert [i["desired_state"] for i in marked] == ["Deleted", "Deleted"]

    for instance in marked:
        confirmed = await report(api, instance, "Terminated")
        assert confirmed.status_code == 204
    assert await instances(api) == []


async def test_unplaced_instances_of_a_deleted_workload_go_at_once(api: httpx.AsyncClient) -> None:
    await api.post("/api/v1/workloads", json=manifest(replicas=2))
    await api.delete("/api/v1/workloads/web")
    assert await instances(api) == []


async def test_a_report_from_the_wrong_node_is_refused(api: httpx.AsyncClient) -> None:
    await api.post("/api/v1/nodes", json=node("n1"))
    await api.post("/api/v1/workloads", json=manifest())
    await schedule(api)
    [instance] = await instances(api)
    wrong = await api.put(f"/api/v1/instances/{instance['id']}/status", json={"node": "n2", "phase": "Running"})
    assert wrong.status_code == 409
    assert "assigned to 'n1'" in wrong.json()["error"]


async def test_changing_the_spec_replaces_the_instances(api: httpx.AsyncClient) -> None:
    await api.post("/api/v1/nodes", json=node("n1"))
    await api.put("/api/v1/workloads/web", json=manifest(replicas=1))
    await schedule(api)
    [old] = await instances(api)
    await report(api, old, "Running")

    unchanged = await api.put("/api/v1/workloads/web", json=manifest(replicas=1))
    assert unchanged.status_code == 200
    assert [i["id"] for i in await instances(api)] == [old["id"]]

    changed = await api.put("/api/v1/workloads/web", json=manifest(replicas=1, env={"MODE": "new"}))
    assert changed.status_code == 200
    after = {i["id"]: i for i in await instances(api)}
    assert after[old["id"]]["desired_state"] == "Deleted"
    [new] = [i for i in after.values() if i["id"] != old["id"]]
    assert new["spec"]["env"] == {"MODE": "new"}


async def test_state_survives_a_controller_restart(controller_factory: ControllerFactory) -> None:
    async with controller_factory() as api:
        await api.post("/api/v1/nodes", json=node("n1"))
        await api.post("/api/v1/workloads", json=manifest(replicas=2))
        await schedule(api)
        before = await instances(api)
    async with controller_factory() as api:
        assert await instances(api) == before
        workload = (await api.get("/api/v1/workloads/web")).json()
        assert workload["spec"]["replicas"] == 2
        assert (await api.get("/api/v1/nodes/n1")).json()["subnet"] == "10.88.0.0/24"


async def test_nodes_get_distinct_subnets_and_keep_them(api: httpx.AsyncClient) -> None:
    first = (await api.post("/api/v1/nodes", json=node("n1"))).json()
    second = (await api.post("/api/v1/nodes", json=node("n2"))).json()
    again = (await api.post("/api/v1/nodes", json=node("n1"))).json()
    assert first["subnet"] != second["subnet"]
    assert again["subnet"] == first["subnet"]
    clash = await api.post("/api/v1/nodes", json=node("n3") | {"subnet": second["subnet"]})
    assert clash.status_code == 409


async def test_lost_node_instances_are_rescheduled(controller_factory: ControllerFactory) -> None:
    async with controller_factory(node_timeout=1.5) as api:
        await api.post("/api/v1/nodes", json=node("n1"))
        await api.post("/api/v1/workloads", json=manifest())
        leader = api.app.state.controller.leader  # type: ignore[attr-defined]
        await leader.schedule()
        [instance] = await instances(api)
        assert instance["node"] == "n1"
        await report(api, instance, "Running", address="10.88.0.2")

        # No heartbeat from n1: the leader loop marks it NotReady once the timeout has passed.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while (await api.get("/api/v1/nodes/n1")).json()["status"] == "Ready" and loop.time() < deadline:
            await asyncio.sleep(0.1)
        assert (await api.get("/api/v1/nodes/n1")).json()["status"] == "NotReady"
        [orphan] = await instances(api)
        assert (orphan["node"], orphan["phase"]) == (None, "Pending")
        assert orphan["reason"] in ("NodeLost", "Unschedulable")  # the scheduler may already have tried

        await api.post("/api/v1/nodes", json=node("n2"))
        await leader.schedule()
        [moved] = await instances(api)
        assert moved["id"] == instance["id"] and moved["node"] == "n2"

        # The lost node's late report is refused, so it removes its copy instead of running a duplicate.
        late = await api.put(f"/api/v1/instances/{instance['id']}/status", json={"node": "n1", "phase": "Running"})
        assert late.status_code == 409

        beat = await api.post("/api/v1/nodes/n1/heartbeat")
        assert beat.json()["status"] == "Ready"


async def test_exactly_one_controller_leads_and_another_takes_over(database_url: str) -> None:
    first = create_app(ControllerSettings(database_url=database_url, identity="first", lease_ttl=1.0))
    second = create_app(ControllerSettings(database_url=database_url, identity="second", lease_ttl=1.0))
    first_life = first.router.lifespan_context(first)
    await first_life.__aenter__()
    one = first.state.controller.leader
    await one._step()
    assert one.is_leader
    async with second.router.lifespan_context(second):
        two = second.state.controller.leader
        for _ in range(3):
            await two._step()
            await one._step()
            assert (one.is_leader, two.is_leader) == (True, False)
        # The leader dies and stops renewing; the other one leads once the lease has expired.
        await first_life.__aexit__(None, None, None)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while not two.is_leader and loop.time() < deadline:
            await two._step()
            await asyncio.sleep(0.1)
        assert two.is_leader


async def test_instance_delete_makes_room_for_a_replacement(api: httpx.AsyncClient) -> None:
    await api.post("/api/v1/nodes", json=node("n1"))
    await api.post("/api/v1/workloads", json=manifest())
    await schedule(api)
    [instance] = await instances(api)
    await report(api, instance, "Failed", reason="Exited", message="process exited with code 1")
    workload = (await api.get("/api/v1/workloads/web")).json()
    assert workload["status"]["failed"] == 1

    assert (await api.delete(f"/api/v1/instances/{instance['id']}")).status_code == 200
    wanted = [i for i in await instances(api) if i["desired_state"] == "Running"]
    assert len(wanted) == 1 and wanted[0]["id"] != instance["id"]


async def test_a_new_leader_gives_nodes_one_timeout_to_heartbeat(
    controller_factory: ControllerFactory, database_url: str
) -> None:
    async with controller_factory(node_timeout=3.0, lease_ttl=0.5) as api:
        await api.post("/api/v1/nodes", json=node("n1"))
    # The control plane stays down far longer than the node timeout: heartbeats sent meanwhile were lost.
    db = Database(database_url)
    async with db.transaction() as session:
        await session.execute(update(NodeRow).values(last_heartbeat=store.now() - timedelta(hours=1)))
    await db.close()

    async with controller_factory(node_timeout=3.0, lease_ttl=0.5) as api:
        leader = api.app.state.controller.leader  # type: ignore[attr-defined]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while not leader.is_leader and loop.time() < deadline:  # the old leader's lease expires
            await leader._step()
            await asyncio.sleep(0.05)
        assert leader.is_leader
        # The grace (3 s) is far longer than the few milliseconds between taking the lease and this check,
        # so a loaded CI machine does not turn it into a race.
        await leader.mark_lost_nodes()
        assert (await api.get("/api/v1/nodes/n1")).json()["status"] == "Ready"
        # Without a heartbeat within the timeout the node is lost after all.
        deadline = loop.time() + 10
        while (await api.get("/api/v1/nodes/n1")).json()["status"] == "Ready" and loop.time() < deadline:
            await asyncio.sleep(0.1)
        assert (await api.get("/api/v1/nodes/n1")).json()["status"] == "NotReady"


async def test_deleting_an_instance_with_scale_down_removes_exactly_it(api: httpx.AsyncClient) -> None:
    await api.post("/api/v1/nodes", json=node("n1"))
    await api.post("/api/v1/workloads", json=manifest(replicas=3))
    await schedule(api)
    chosen = (await instances(api))[1]
    response = await api.delete(f"/api/v1/instances/{chosen['id']}", params={"scale_down": "true"})
    assert response.status_code == 200
    assert (await api.get("/api/v1/workloads/web")).json()["spec"]["replicas"] == 2
    remaining = [i for i in await instances(api) if i["desired_state"] == "Running"]
    assert len(remaining) == 2 and chosen["id"] not in {i["id"] for i in remaining}


async def test_a_poke_right_after_a_renewal_schedules_without_writing_the_lease(database_url: str) -> None:
    """New work wakes the leader: it is placed at once; the lease is renewed by the ticks, not per poke."""
    db = Database(database_url)
    await db.migrate()
    leader = LeaderLoop(db, LeaderSettings(identity="solo", tick=30.0))
    try:
        async with db.transaction() as session:
            await store.register_node(
                session, NodeRegistration.model_validate(node("n1")), pool=IPv4Network("10.240.0.0/16"), prefix=24
            )
        await leader._step()
        assert leader.is_leader
        async with db.read() as session:
            renewed = await store.lease_holder(session, LEADER_LEASE)
        async with db.transaction() as session:
            await store.apply_workload(session, WorkloadManifest.model_validate(manifest()))

        await leader._step(poked=True)
        async with db.read() as session:
            assert [i.node for i in await store.list_instances(session)] == ["n1"]
            assert await store.lease_holder(session, LEADER_LEASE) == renewed

        await leader._step()  # a tick (not a poke) renews
        async with db.read() as session:
            holder = await store.lease_holder(session, LEADER_LEASE)
        assert renewed is not None and holder is not None and holder[1] > renewed[1]
    finally:
        await db.close()
