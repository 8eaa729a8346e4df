"""Snapshots, restores and pause/resume, as the controller tracks and places them."""

from __future__ import annotations

import httpx

from tests.rik.controller.conftest import manifest, node
from tests.rik.controller.test_api import instances, report, schedule


async def running_vm(api: httpx.AsyncClient, name: str = "vm") -> dict[str, object]:
    await api.post("/api/v1/workloads", json=manifest(name, kind="VM"))
    await schedule(api)
    [instance] = await instances(api, workload=name)
    assert (await report(api, instance, "Running", address="10.88.0.2")).status_code == 200
    return instance


async def test_a_snapshot_is_taken_by_the_node_and_restores_are_placed_there(api: httpx.AsyncClient) -> None:
    for name in ("a", "b"):
        await api.post("/api/v1/nodes", json=node(name, runtimes=["container", "vm"]))
    source = await running_vm(api)

    created = await api.post(f"/api/v1/instances/{source['id']}/snapshots", json={"name": "warm"})
    assert created.status_code == 201, created.text
    assert created.json()["phase"] == "Pending" and created.json()["node"] == source["node"]
    duplicate = await api.post(f"/api/v1/instances/{source['id']}/snapshots", json={"name": "warm"})
    assert duplicate.status_code == 409

    # Restores wait for the snapshot to be Ready...
    await api.post("/api/v1/workloads", json=manifest("clones", kind="VM", replicas=3, vm={"snapshot": "warm"}))
    await schedule(api)
    clones = await instances(api, workload="clones")
    assert all(c["node"] is None and "Pending, not Ready" in c["message"] for c in clones)

    # ...then all go to the node that holds it, even though the other node is emptier.
    wrong = await api.put("/api/v1/snapshots/warm/status", json={"node": "nobody", "phase": "Ready"})
    assert wrong.status_code == 409
    ready = await api.put(
        "/api/v1/snapshots/warm/status", json={"node": source["node"], "phase": "Ready", "size_bytes": 1234}
    )
    assert ready.status_code == 200 and ready.json()["size_bytes"] == 1234
    await schedule(api)
    assert {c["node"] for c in await instances(api, workload="clones")} == {source["node"]}

    listed = (await api.get("/api/v1/snapshots", params={"workload": "vm"})).json()["items"]
    assert [s["name"] for s in listed] == ["warm"]

    deleting = await api.delete("/api/v1/snapshots/warm")
    assert deleting.json()["deleting"] is True
    done = await api.put("/api/v1/snapshots/warm/status", json={"node": source["node"], "deleted": True})
    assert done.status_code == 204
    assert (await api.get("/api/v1/snapshots/warm")).status_code == 404


async def test_restoring_a_missing_snapshot_stays_pending_with_the_reason(api: httpx.AsyncClient) -> None:
    await api.post("/api/v1/nodes", json=node("a", runtimes=["vm"]))
    await api.post("/api/v1/workloads", json=manifest("clones", kind="VM", vm={"snapshot": "nope"}))
    await schedule(api)
    [clone] = await instances(api)
    assert clone["node"] is None
    assert "snapshot nope does not exist" in clone["message"]


async def test_only_running_vm_instances_can_be_snapshotted(api: httpx.AsyncClient) -> None:
    await api.post("/api/v1/nodes", json=node("a", runtimes=["container", "vm"]))
    await api.post("/api/v1/workloads", json=manifest("pod"))
    await api.post("/api/v1/workloads", json=manifest("vm", kind="VM"))
    await schedule(api)
    pod = (await instances(api, workload="pod"))[0]
    vm = (await instances(api, workload="vm"))[0]
    refused = await api.post(f"/api/v1/instances/{pod['id']}/snapshots", json={"name": "s1"})
    assert refused.status_code == 409 and "only VM instances" in refused.json()["error"]
    not_yet = await api.post(f"/api/v1/instances/{vm['id']}/snapshots", json={"name": "s1"})
    assert not_yet.status_code == 409 and "Running or Paused" in not_yet.json()["error"]
    bad_name = await api.post(f"/api/v1/instances/{vm['id']}/snapshots", json={"name": "Bad_Name"})
    assert bad_name.status_code == 422


async def test_pause_and_resume_are_desired_states_the_riklet_confirms(api: httpx.AsyncClient) -> None:
    await api.post("/api/v1/nodes", json=node("a", runtimes=["vm"]))
    vm = await running_vm(api)
    paused = await api.post(f"/api/v1/instances/{vm['id']}/pause")
    assert paused.status_code == 200 and paused.json()["desired_state"] == "Paused"
    await report(api, vm, "Paused", address="10.88.0.2")
    workload = (await api.get("/api/v1/workloads/vm")).json()
    assert workload["status"]["paused"] == 1
    # A paused instance still holds its place: no replacement is created.
    assert len(await instances(api, workload="vm")) == 1

    resumed = await api.post(f"/api/v1/instances/{vm['id']}/resume")
    assert resumed.json()["desired_state"] == "Running"


async def test_vm_options_are_refused_on_pods(api: httpx.AsyncClient) -> None:
    response = await api.post("/api/v1/workloads", json=manifest("pod", vm={"vcpus": 2}))
    assert response.status_code == 422
    assert "only valid for kind VM" in response.json()["error"]
