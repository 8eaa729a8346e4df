"""The RIK backend of `Orchestrator`: a function version is a RIK workload (kind `VM`, or `Pod` for
container isolation) whose replica count Morty moves one instance at a time.

Waiting is push-based: every wait follows RIK's watch stream from the resource version read just
before the change, so no transition can slip between the change and the wait.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import defaultdict
from typing import Any

from morty.orchestrators.base import (
    DeploymentSpec,
    InstanceEndpoint,
    Isolation,
    OrchestratorError,
    OrchestratorUnavailable,
    StartPath,
)
from rik.client import ApiError, ClientError, RikClient, Unreachable
from rik.model import ACTIVE_PHASES, DesiredState, EventType, Instance, Phase, PortBinding, Resource, SnapshotPhase


class RikOrchestrator:
    def __init__(self, client: RikClient) -> None:
        self.client = client
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        """One lock per version: replica changes read then write the count."""

    # Versions -----------------------------------------------------------------------------------------

    async def register(self, spec: DeploymentSpec) -> None:
        """Create or update the workload, keeping its replica count. An update leaves the snapshot behind (it holds
        the old configuration): instances boot until `prepare_snapshot` makes a new one. A change of kind (VM to
        Pod or back) replaces the workload."""
        async with self._locks[spec.key], _translated():
            replicas = 0
            try:
                current = await self.client.get_workload(spec.key)
                replicas = current.spec.replicas
                if current.kind != _kind(spec):
                    await self.client.delete_workload(current.metadata.name)
                    replicas = 0
            except ApiError as exc:
                if exc.status != 404:
                    raise
            await self.client.apply_workload(_manifest(spec, replicas, None))

    async def unregister(self, key: str) -> None:
        async with self._locks[key], _translated():
            snapshots = (await self.client.list_snapshots(workload=key)).items
            try:
                await self.client.delete_workload(key)
            except ApiError as exc:
                if exc.status != 404:
                    raise
            for snapshot in snapshots:
                await self.client.delete_snapshot(snapshot.name)

    # Instances ----------------------------------------------------------------------------------------

    async def start_instance(self, key: str, *, within: float) -> InstanceEndpoint:
        async with _translated():
            async with self._locks[key]:
                before = await self.client.list_instances(workload=key)
                known = {i.id for i in before.items}
                workload = await self.client.get_workload(key)
                await self.client.scale_workload(key, workload.spec.replicas + 1)
                # The instances the scaling made (under the lock: no concurrent start's): wait for one of
                # them, never for another start's, which that start records as its own.
                mine = {i.id for i in (await self.client.list_instances(workload=key)).items} - known
            restoring = workload.spec.vm is not None and workload.spec.vm.snapshot is not None
            instance = await self._wait_for(
                key, before.resource_version, within, lambda i: i.id in mine and i.phase == Phase.RUNNING
            )
            return _endpoint(instance, StartPath.RESTORED if restoring else StartPath.BOOTED)

    async def stop_instance(self, key: str, instance_id: str) -> None:
        async with self._locks[key], _translated():
            try:
                await self.client.delete_instance(instance_id, scale_down=True)
            except ApiError as exc:
                if exc.status != 404:
                    raise

    async def instances(self, key: str) -> list[InstanceEndpoint]:
        async with _translated():
            listing = await self.client.list_instances(workload=key)
        return [
            _endpoint(i, StartPath.BOOTED)
            if i.phase == Phase.RUNNING and i.address
            else InstanceEndpoint(i.id, "", 0, StartPath.BOOTED, ready=False)
            for i in listing.items
            if i.desired_state != DesiredState.DELETED and i.phase in ACTIVE_PHASES
        ]

    async def pause(self, key: str, instance_id: str) -> None:
        async with _translated():
            since = (await self.client.list_instances(workload=key)).resource_version
            await self.client.pause_instance(instance_id)
            await self._wait_for(key, since, 30, lambda i: i.id == instance_id and i.phase == Phase.PAUSED)

    async def resume(self, key: str, instance_id: str, *, within: float) -> InstanceEndpoint:
        async with _translated():
            since = (await self.client.list_instances(workload=key)).resource_version
            await self.client.resume_instance(instance_id)
            instance = await self._wait_for(
                key, since, within, lambda i: i.id == instance_id and i.phase == Phase.RUNNING
            )
            return _endpoint(instance, StartPath.RESUMED)

    async def prepare_snapshot(self, key: str, *, within: float) -> str:
        name = f"{key[:40]}-{secrets.token_hex(4)}"
        booted = await self.start_instance(key, within=within)
        try:
            async with _translated():
                since = (await self.client.list_snapshots(workload=key)).resource_version
                await self.client.snapshot_instance(booted.instance_id, name)
                await self._wait_for_snapshot(name, since, within)
        finally:
            await self.stop_instance(key, booted.instance_id)
        async with self._locks[key], _translated():
            workload = await self.client.get_workload(key)
            manifest = workload.model_dump(mode="json", by_alias=True, include={"api_version", "kind", "metadata"})
            manifest["metadata"] = {"name": key, "labels": workload.metadata.labels}
            spec = workload.spec.model_dump(mode="json", exclude_none=True)
            spec["vm"] = {**spec.get("vm", {}), "snapshot": name}
            await self.client.apply_workload({**manifest, "spec": spec})
            for older in (await self.client.list_snapshots(workload=key)).items:
                if older.name != name:
                    await self.client.delete_snapshot(older.name)
        return name

    # Waiting ------------------------------------------------------------------------------------------

    async def _wait_for(self, key: str, since: int, within: float, done: Any) -> Instance:
        async def follow() -> Instance:
            async for event in self.client.watch(since=since, resources="instances", workload=key):
                if event.type == EventType.DELETED:
                    continue
                instance = Instance.model_validate(event.object)
                if done(instance):
                    return instance
                if instance.phase == Phase.FAILED:
                    raise OrchestratorError(instance.reason or "Failed", instance.message or "instance failed")
            raise OrchestratorUnavailable("WatchEnded", "RIK's watch stream ended")

        try:
            return await asyncio.wait_for(follow(), within)
        except TimeoutError as exc:
            raise OrchestratorError("Timeout", f"no ready instance of {key} within {within:.0f}s") from exc

    async def _wait_for_snapshot(self, name: str, since: int, within: float) -> None:
        async def follow() -> None:
            async for event in self.client.watch(since=since, resources=Resource.SNAPSHOTS.value):
                if event.object.get("name") != name:
                    continue
                if event.type == EventType.DELETED:
                    raise OrchestratorError("SnapshotDeleted", f"snapshot {name} was deleted")
                phase = event.object.get("phase")
                if phase == SnapshotPhase.READY.value:
                    return
                if phase == SnapshotPhase.FAILED.value:
                    raise OrchestratorError(event.object.get("reason", "Failed"), event.object.get("message", ""))

        try:
            await asyncio.wait_for(follow(), within)
        except TimeoutError as exc:
            raise OrchestratorError("Timeout", f"snapshot {name} not ready within {within:.0f}s") from exc


def _kind(spec: DeploymentSpec) -> str:
    return "VM" if spec.isolation == Isolation.VM else "Pod"


def _manifest(spec: DeploymentSpec, replicas: int, snapshot: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "image": spec.image,
        "env": spec.env,
        "ports": [{"port": spec.port}, *([{"port": spec.control_port}] if spec.control_port else [])],
        "resources": {"cpu": spec.cpu_millis, "memory": spec.memory_mib},
        "replicas": replicas,
    }
    if spec.isolation == Isolation.VM:
        body["vm"] = {"vcpus": spec.vcpus, **({"snapshot": snapshot} if snapshot else {})}
    return {
        "apiVersion": "rik/v1",
        "kind": _kind(spec),
        "metadata": {"name": spec.key, "labels": spec.labels},
        "spec": body,
    }


def _endpoint(instance: Instance, path: StartPath) -> InstanceEndpoint:
    """The first declared port serves; a second one is the control port. Each is reached at the node's
    published port when there is one (reachable from other hosts), else at the instance's own address
    (reachable only from its node)."""
    reachable = [_reachable(instance, binding) for binding in instance.ports]
    if not reachable or reachable[0] is None:
        raise OrchestratorError("NoAddress", f"instance {instance.id} reports no address")
    host, port = reachable[0]
    control = reachable[1] if len(reachable) > 1 else None
    return InstanceEndpoint(instance.id, host, port, path, control)


def _reachable(instance: Instance, binding: PortBinding) -> tuple[str, int] | None:
    if binding.host_port and instance.host_address:
        return instance.host_address, binding.host_port
    if instance.address is None:
        return None
    return instance.address, binding.port


class _translated:
    """Map RIK client errors to orchestrator errors at the boundary."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, _tb: object) -> None:
        if isinstance(exc, Unreachable):
            raise OrchestratorUnavailable("Unreachable", str(exc)) from exc
        if isinstance(exc, ApiError):
            raise OrchestratorError(f"Rik{exc.status}", exc.message) from exc
        if isinstance(exc, ClientError):
            raise OrchestratorError("RikError", str(exc)) from exc
