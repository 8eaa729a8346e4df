"""Deployments and instances through Morty APIs with an orchestrator attached (a recording test double here;
tests/morty/e2e runs the same flows on a real RIK): a built version is registered and snapshotted before it
is `ready`, instances come up within the function's limits, idle ones stop, `min_instances` is kept, a restart
resumes deployments and adopts instances it did not record, and deleting a function leaves nothing running."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from morty.api import store
from morty.api.deployer import deployment_key, image_reference
from morty.orchestrators.base import InstanceEndpoint, OrchestratorError, StartPath
from tests.morty.api._fake_orchestrator import FakeOrchestrator
from tests.morty.api.conftest import MortyFactory, create_function, ready_version

SLOW_TICK = {"scaling_tick": 3600.0}
"""The background pass stays out of the way; tests run `scale_once` and `reconcile` themselves."""


def _morty(api: httpx.AsyncClient) -> Any:
    return api.app.state.morty  # type: ignore[attr-defined]


async def _version(api: httpx.AsyncClient, name: str, version: str) -> dict[str, Any]:
    body: dict[str, Any] = (await api.get(f"/v1/functions/{name}/versions/{version}")).json()
    return body


async def test_a_built_vm_version_is_registered_and_snapshotted_before_it_is_ready(
    morty_factory: MortyFactory,
) -> None:
    fake = FakeOrchestrator()
    async with morty_factory(orchestrator=fake, **SLOW_TICK) as api:
        await create_function(api, "hello", env={"GREETING": "hi"}, memory_mib=256, vcpus=2)
        assert (await api.put("/v1/functions/hello/secrets/API_KEY", json={"value": "k3y-value"})).status_code == 201
        await ready_version(api, "hello", "1.0.0")

        version = await _version(api, "hello", "1.0.0")
        assert version["status"] == "ready", version
        assert "snapshot" in version["status_message"]
        [key] = fake.specs
        spec = fake.specs[key]
        assert fake.calls[:2] == [("register", key), ("prepare_snapshot", key)]
        assert spec.image.endswith("@sha256:" + "a" * 64)
        assert spec.env == {
            "GREETING": "hi", "API_KEY": "k3y-value", "MORTY_FUNCTION": "hello", "MORTY_VERSION": "1.0.0",
        }  # fmt: skip
        assert (spec.memory_mib, spec.vcpus, spec.port) == (256, 2, 8080)
        assert spec.labels == {"morty.function": "hello", "morty.version": "1.0.0"}
        assert fake.running[key] == [], "deploying starts no instance that stays"


async def test_container_isolation_deploys_without_a_snapshot(morty_factory: MortyFactory) -> None:
    fake = FakeOrchestrator()
    async with morty_factory(orchestrator=fake, **SLOW_TICK) as api:
        await create_function(api, "boxed", isolation="container")
        await ready_version(api, "boxed", "1.0.0")
        assert (await _version(api, "boxed", "1.0.0"))["status"] == "ready"
        [spec] = fake.specs.values()
        assert spec.isolation.value == "container"
        assert [name for name, _ in fake.calls] == ["register"]


async def test_a_vm_function_fails_to_deploy_once_the_platform_has_no_vms(morty_factory: MortyFactory) -> None:
    async with morty_factory(**SLOW_TICK) as api:
        await create_function(api, "hello")
    fake = FakeOrchestrator()
    async with morty_factory(orchestrator=fake, vm_unavailable="turned off", **SLOW_TICK) as api:
        await ready_version(api, "hello", "1.0.0")
        failed = await _version(api, "hello", "1.0.0")
        assert failed["status"] == "failed" and fake.calls == []
        assert failed["status_message"] == (
            "deployment failed: NoVMs: VMs are not available on this platform (turned off); "
            "set the function's isolation to container"
        )


async def test_a_failed_deployment_fails_its_version_and_the_previous_one_keeps_serving(
    morty_factory: MortyFactory,
) -> None:
    fake = FakeOrchestrator()
    async with morty_factory(orchestrator=fake, **SLOW_TICK) as api:
        await create_function(api, "hello")
        await ready_version(api, "hello", "1.0.0")
        fake.fail_snapshot = OrchestratorError("ImagePullFailed", "manifest unknown")
        await ready_version(api, "hello", "1.1.0")

        failed = await _version(api, "hello", "1.1.0")
        assert failed["status"] == "failed"
        assert failed["status_message"] == "deployment failed: ImagePullFailed: manifest unknown"
        assert (await api.get("/v1/resolve/hello@latest")).json()["version"] == "1.0.0"
        instance = await api.post("/v1/functions/hello/instances", json={})
        assert instance.status_code == 201, instance.text
        assert instance.json()["version"] == "1.0.0"


async def test_instances_come_up_ready_within_max_instances(morty_factory: MortyFactory) -> None:
    fake = FakeOrchestrator()
    async with morty_factory(orchestrator=fake, **SLOW_TICK) as api:
        await create_function(api, "hello", max_instances=2)
        await ready_version(api, "hello", "1.0.0")

        first = await api.post("/v1/functions/hello/instances")
        assert first.status_code == 201, first.text
        body = first.json()
        assert body["start_path"] == "restored" and body["version"] == "1.0.0"
        assert body["url"] == f"http://{body['host']}:{body['port']}"
        assert (await api.post("/v1/functions/hello/instances", json={"version": "1.0.0"})).status_code == 201

        third = await api.post("/v1/functions/hello/instances")
        assert third.status_code == 429
        assert "max_instances=2" in third.json()["error"]
        listed = (await api.get("/v1/functions/hello/instances")).json()["items"]
        assert len(listed) == 2 and listed[0]["id"] == body["id"]

        stopped = await api.delete(f"/v1/functions/hello/instances/{body['id']}")
        assert stopped.status_code == 204
        assert ("stop_instance", body["id"]) in fake.calls
        assert [i["id"] for i in (await api.get("/v1/functions/hello/instances")).json()["items"]] == [listed[1]["id"]]
        assert (await api.delete(f"/v1/functions/hello/instances/{body['id']}")).status_code == 404


@pytest.mark.parametrize(
    ("request_body", "status", "message"),
    [
        ({"version": "9.9.9"}, 404, "no version '9.9.9'"),
        ({"version": "nope"}, 404, "no alias 'nope'"),
        ({"version": "1.0.0", "extra": 1}, 422, "extra"),
        ({"version": 5}, 422, "version"),
    ],
)
async def test_bad_instance_requests_get_clear_errors(
    morty_factory: MortyFactory, request_body: dict[str, Any], status: int, message: str
) -> None:
    async with morty_factory(orchestrator=FakeOrchestrator(), **SLOW_TICK) as api:
        await create_function(api, "hello")
        await ready_version(api, "hello", "1.0.0")
        response = await api.post("/v1/functions/hello/instances", json=request_body)
        assert response.status_code == status, response.text
        assert message in response.text


async def test_an_instance_needs_a_deployed_version_and_an_orchestrator(morty_factory: MortyFactory) -> None:
    fake = FakeOrchestrator(fail_snapshot=OrchestratorError("Timeout", "too slow"))
    async with morty_factory(orchestrator=fake, **SLOW_TICK) as api:
        await create_function(api, "hello")
        await ready_version(api, "hello", "1.0.0")
        refused = await api.post("/v1/functions/hello/instances", json={"version": "1.0.0"})
        assert refused.status_code == 409
        assert "is failed, not deployed" in refused.json()["error"]
    async with morty_factory() as api:
        unavailable = await api.post("/v1/functions/hello/instances")
        assert unavailable.status_code == 409
        assert "without an orchestrator" in unavailable.json()["error"]
        assert (await api.post("/v1/functions/nope/instances")).status_code == 404


async def test_idle_instances_stop_unless_active_and_min_instances_are_kept(morty_factory: MortyFactory) -> None:
    fake = FakeOrchestrator()
    async with morty_factory(orchestrator=fake, **SLOW_TICK) as api:
        await create_function(api, "hello", idle_timeout_seconds=10, max_instances=5)
        await ready_version(api, "hello", "1.0.0")
        instances = _morty(api).instances
        busy = (await api.post("/v1/functions/hello/instances")).json()
        idle = (await api.post("/v1/functions/hello/instances")).json()
        started = datetime.fromisoformat(busy["started_at"])

        record = {
            "id": "rec-1", "function": "hello", "version": "1.0.0", "status": 200, "path": "warm",
            "started_at": (started + timedelta(seconds=7)).isoformat(),
            "finished_at": (started + timedelta(seconds=8)).isoformat(), "instance": busy["id"],
        }  # fmt: skip
        assert (await api.post("/v1/invocations:batch", json={"records": [record]})).status_code == 200

        await instances.scale_once(now=started + timedelta(seconds=9))
        assert len((await api.get("/v1/functions/hello/instances")).json()["items"]) == 2, "not idle long enough"
        await instances.scale_once(now=started + timedelta(seconds=12))
        left = (await api.get("/v1/functions/hello/instances")).json()["items"]
        assert [i["id"] for i in left] == [busy["id"]], "the idle one stops, the active one stays"
        assert ("stop_instance", idle["id"]) in fake.calls

        assert (await api.patch("/v1/functions/hello", json={"min_instances": 2})).status_code == 200
        await instances.scale_once(now=started + timedelta(seconds=100))
        left = (await api.get("/v1/functions/hello/instances")).json()["items"]
        assert len(left) == 2 and busy["id"] in {i["id"] for i in left}, "min_instances: kept, and topped up"


async def test_a_restart_resumes_deployments_and_adopts_what_it_did_not_record(
    morty_factory: MortyFactory,
) -> None:
    fake = FakeOrchestrator(snapshot_gate=asyncio.Event())
    async with morty_factory(orchestrator=fake, **SLOW_TICK) as api:
        await create_function(api, "hello")
        build = (await _deploy_upload(api))["build"]["id"]
        await _finish_without_waiting(api, build)
        assert (await _version(api, "hello", "1.0.0"))["status"] == "deploying"
    # The first process stopped mid-deployment; a new one finishes it.
    fake.snapshot_gate = None
    async with morty_factory(orchestrator=fake, **SLOW_TICK) as api:
        morty = _morty(api)
        for version_id in list(morty.deployer._tasks):
            await morty.deployer.wait(version_id)
        assert (await _version(api, "hello", "1.0.0"))["status"] == "ready"
        [key] = fake.specs
        # An instance the orchestrator runs but Morty never recorded (it stopped mid-provisioning) is adopted,
        # and a recorded instance that no longer runs is dropped.
        recorded = (await api.post("/v1/functions/hello/instances")).json()
        fake.running[key] = [InstanceEndpoint("stray-1", "10.0.0.9", 31000, StartPath.RESTORED)]
        await morty.instances.reconcile()
        listed = (await api.get("/v1/functions/hello/instances")).json()["items"]
        assert [(i["id"], i["start_path"]) for i in listed] == [("stray-1", "adopted")]
        assert recorded["id"] not in {i["id"] for i in listed}


async def test_deleting_a_function_removes_its_instances_and_deployments(morty_factory: MortyFactory) -> None:
    fake = FakeOrchestrator()
    async with morty_factory(orchestrator=fake, **SLOW_TICK) as api:
        await create_function(api, "hello")
        await ready_version(api, "hello", "1.0.0")
        await ready_version(api, "hello", "1.1.0")
        instance = (await api.post("/v1/functions/hello/instances")).json()
        keys = set(fake.specs)
        assert len(keys) == 2

        fake_error = OrchestratorError("Rik503", "controller down")
        original = fake.unregister

        async def refuse(key: str) -> None:
            raise fake_error

        fake.unregister = refuse  # type: ignore[method-assign]
        refused = await api.delete("/v1/functions/hello")
        assert refused.status_code == 503 and "controller down" in refused.json()["error"]
        assert (await api.get("/v1/functions/hello")).status_code == 200, "nothing deleted when RIK refuses"

        fake.unregister = original  # type: ignore[method-assign]
        deleted = await api.delete("/v1/functions/hello")
        assert deleted.status_code == 200, deleted.text
        assert fake.specs == {} and all(not running for running in fake.running.values())
        assert ("stop_instance", instance["id"]) in fake.calls
        assert {key for call, key in fake.calls if call == "unregister"} == keys
        assert (await api.get("/v1/functions/hello")).status_code == 404


def test_deployed_images_are_pinned_to_their_digest() -> None:
    digest = "sha256:" + "c" * 64
    assert image_reference("127.0.0.1:5000/morty/fn-a:1.0.0", digest) == f"127.0.0.1:5000/morty/fn-a@{digest}"
    assert image_reference("127.0.0.1:5000/morty/fn-a", digest) == f"127.0.0.1:5000/morty/fn-a@{digest}"
    assert image_reference(f"reg/fn@{digest}", digest) == f"reg/fn@{digest}"


def test_deployment_keys_are_dns_labels_unique_per_version() -> None:
    key = deployment_key("a" * 63, "0123456789abcdef" * 2)
    assert key == "a" * 40 + "-0123456789ab" and len(key) <= 63
    assert deployment_key("hello", store.new_id()) != deployment_key("hello", store.new_id())


async def _deploy_upload(api: httpx.AsyncClient) -> dict[str, Any]:
    from tests.morty.api.conftest import deploy

    return await deploy(api, "hello", "1.0.0")


async def _finish_without_waiting(api: httpx.AsyncClient, build_id: str) -> None:
    """The builder's part, handing the version to the deployer without waiting for the deployment."""
    from morty.api.tables import BuildRow

    morty = _morty(api)
    async with morty.db.transaction() as session:
        await store.start_build(session, build_id)
    async with morty.db.transaction() as session:
        await store.finish_build(
            session, build_id, succeeded=True, message="built", image="127.0.0.1:5000/fn/hello:1.0.0",
            digest="sha256:" + "b" * 64, deploy=True,
        )  # fmt: skip
    async with morty.db.read() as session:
        build = await session.get(BuildRow, build_id)
    assert build is not None
    await morty.deployer.enqueue(build.version_id)


async def test_in_flight_load_adds_instances_up_to_max_and_keeps_busy_ones(morty_factory: MortyFactory) -> None:
    fake = FakeOrchestrator()
    async with morty_factory(orchestrator=fake, **SLOW_TICK) as api:
        await create_function(api, "busy", concurrency=2, max_instances=3, idle_timeout_seconds=5)
        await ready_version(api, "busy", "1.0.0")
        instances = _morty(api).instances
        first = (await api.post("/v1/functions/busy/instances")).json()
        load: dict[str, int] = {}

        async def gateway_load() -> dict[str, int]:
            return dict(load)

        instances.load = gateway_load
        now = datetime.fromisoformat(first["started_at"])
        load[f"{first['host']}:{first['port']}"] = 1
        await instances.scale_once(now=now)
        assert len((await api.get("/v1/functions/busy/instances")).json()["items"]) == 1, "below its concurrency"

        load[f"{first['host']}:{first['port']}"] = 2
        await instances.scale_once(now=now)
        listed = (await api.get("/v1/functions/busy/instances")).json()["items"]
        assert len(listed) == 2, "at its concurrency: one more"
        for item in listed:
            load[f"{item['host']}:{item['port']}"] = 2
        await instances.scale_once(now=now)
        await instances.scale_once(now=now)
        listed = (await api.get("/v1/functions/busy/instances")).json()["items"]
        assert len(listed) == 3, "never beyond max_instances"

        # Long after: only the instance still serving requests stays.
        for item in listed[1:]:
            load.pop(f"{item['host']}:{item['port']}", None)
        await instances.scale_once(now=now + timedelta(seconds=60))
        assert [i["id"] for i in (await api.get("/v1/functions/busy/instances")).json()["items"]] == [first["id"]]


async def test_configuration_and_secret_changes_redeploy_ready_versions(morty_factory: MortyFactory) -> None:
    fake = FakeOrchestrator()
    async with morty_factory(orchestrator=fake, **SLOW_TICK) as api:
        await create_function(api, "conf", env={"GREETING": "hi"})
        await ready_version(api, "conf", "1.0.0")
        [key] = fake.specs
        deployer = _morty(api).deployer
        calls = len(fake.calls)

        assert (await api.patch("/v1/functions/conf", json={"env": {"GREETING": "hello"}})).status_code == 200
        for version_id in list(deployer._tasks):
            await deployer.wait(version_id)
        assert fake.specs[key].env["GREETING"] == "hello"
        assert fake.calls[calls:] == [("register", key), ("prepare_snapshot", key)], "a new snapshot, new env"
        version = await _version(api, "conf", "1.0.0")
        assert version["status"] == "ready" and "redeployed" in version["status_message"]

        calls = len(fake.calls)
        assert (await api.patch("/v1/functions/conf", json={"timeout_seconds": 9})).status_code == 200
        assert fake.calls[calls:] == [], "a change that no deployment holds redeploys nothing"

        assert (await api.put("/v1/functions/conf/secrets/TOKEN", json={"value": "t0ken-1"})).status_code == 201
        for version_id in list(deployer._tasks):
            await deployer.wait(version_id)
        assert fake.specs[key].env["TOKEN"] == "t0ken-1"

        fake.fail_snapshot = OrchestratorError("Timeout", "too slow")
        assert (await api.delete("/v1/functions/conf/secrets/TOKEN")).status_code == 204
        for version_id in list(deployer._tasks):
            await deployer.wait(version_id)
        version = await _version(api, "conf", "1.0.0")
        assert version["status"] == "ready", "a failed redeploy keeps the version serving"
        assert "applying the new configuration failed: Timeout" in version["status_message"]


async def test_an_instance_moved_to_another_node_gets_its_new_address_and_a_gone_one_is_forgotten(
    morty_factory: MortyFactory,
) -> None:
    """RIK keeps a lost node's instance (same id) and runs it elsewhere: Morty's record and hooks follow."""
    fake = FakeOrchestrator()
    async with morty_factory(orchestrator=fake, **SLOW_TICK) as api:
        await create_function(api, "hello")
        await ready_version(api, "hello", "1.0.0")
        instances = _morty(api).instances
        moves: list[tuple[str, str]] = []
        gone: list[str] = []

        async def on_move(before: Any, after: Any) -> None:
            moves.append((f"{before.host}:{before.port}", f"{after.host}:{after.port}"))

        async def on_gone(placed: Any) -> None:
            gone.append(f"{placed.instance_id}@{placed.host}:{placed.port}")

        instances.after_move.append(on_move)
        instances.after_gone.append(on_gone)
        first = (await api.post("/v1/functions/hello/instances")).json()
        [key] = fake.specs
        [endpoint] = fake.running[key]
        # Its node is lost: RIK still has it, not running, while it places it elsewhere. The record stays (no
        # replacement is provisioned for it), and so does its target until it serves elsewhere.
        fake.running[key] = [InstanceEndpoint(endpoint.instance_id, "", 0, StartPath.BOOTED, ready=False)]
        await instances.reconcile()
        assert [i["id"] for i in (await api.get("/v1/functions/hello/instances")).json()["items"]] == [first["id"]]
        assert moves == [] and gone == []
        fake.running[key] = [InstanceEndpoint(endpoint.instance_id, "10.0.0.7", 31999, StartPath.BOOTED)]
        await instances.reconcile()
        [listed] = (await api.get("/v1/functions/hello/instances")).json()["items"]
        assert (listed["id"], listed["host"], listed["port"]) == (first["id"], "10.0.0.7", 31999)
        assert moves == [(f"{first['host']}:{first['port']}", "10.0.0.7:31999")]

        fake.running[key] = []
        await instances.reconcile()
        assert (await api.get("/v1/functions/hello/instances")).json()["items"] == []
        assert gone == [f"{first['id']}@10.0.0.7:31999"]


async def test_the_instance_a_redeploy_boots_for_its_snapshot_is_not_adopted(morty_factory: MortyFactory) -> None:
    fake = FakeOrchestrator()
    async with morty_factory(orchestrator=fake, **SLOW_TICK) as api:
        morty = _morty(api)
        await create_function(api, "hello")
        await ready_version(api, "hello", "1.0.0")
        [key] = fake.specs
        fake.snapshot_gate = asyncio.Event()
        assert (await api.patch("/v1/functions/hello", json={"env": {"MODE": "new"}})).status_code == 200
        while ("prepare_snapshot", key) not in fake.calls[2:]:  # the redeploy's, after the first deployment's
            await asyncio.sleep(0.01)
        # What RIK runs meanwhile: the instance the redeploy booted to snapshot, still unrecorded by Morty.
        fake.running[key] = [InstanceEndpoint("snapshot-boot", "10.0.0.9", 31000, StartPath.BOOTED)]
        await morty.instances.reconcile()
        assert (await api.get("/v1/functions/hello/instances")).json()["items"] == []
        fake.snapshot_gate.set()
        for version_id in list(morty.deployer._tasks):
            await morty.deployer.wait(version_id)
        # Once no deployment owns it, an unrecorded instance is adopted as before.
        await morty.instances.reconcile()
        listed = (await api.get("/v1/functions/hello/instances")).json()["items"]
        assert [(i["id"], i["start_path"]) for i in listed] == [("snapshot-boot", "adopted")]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_an_instance_started_but_not_yet_recorded_is_its_provisioners(morty_factory: MortyFactory) -> None:
    """The platform's leak check found it: the reconcile adopted an instance whose provisioning had started
    it but not yet recorded it, and the provisioning then failed with a duplicate key (409). Holding the
    writers' lock (SQLite's) stops the provisioning right there while the reconcile looks."""
    fake = FakeOrchestrator()
    async with morty_factory(orchestrator=fake, **SLOW_TICK) as api:
        morty = _morty(api)
        await create_function(api, "hello")
        await ready_version(api, "hello", "1.0.0")
        [key] = fake.specs
        listed = asyncio.Event()
        list_instances = fake.instances

        async def instances(key: str) -> list[InstanceEndpoint]:
            found = await list_instances(key)
            listed.set()
            return found

        fake.instances = instances  # type: ignore[method-assign]
        async with morty.db.serialised():
            provisioning = asyncio.create_task(morty.instances.provision("hello"))
            while not fake.running.get(key):
                await asyncio.sleep(0.01)
            reconciling = asyncio.create_task(morty.instances.reconcile())
            await listed.wait()  # the reconcile has looked at what runs and decided
        instance = await provisioning
        await reconciling
        [recorded] = (await api.get("/v1/functions/hello/instances")).json()["items"]
        assert (recorded["id"], recorded["start_path"]) == (instance.id, "restored"), "adopted, not provisioned"
