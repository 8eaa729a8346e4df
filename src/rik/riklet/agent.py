"""The node agent's control loop: register, heartbeat, reconcile local instances with the controller,
watch for assignments, and watch running instances for exits."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge

from rik.client import ApiError, RikClient, Unreachable, WatchExpired
from rik.diskusage import tree_bytes
from rik.drivers.base import Driver, DriverError, Handle
from rik.images import ImageStore
from rik.model import (
    DesiredState,
    EventType,
    Instance,
    InstanceStatusReport,
    Kind,
    Node,
    NodeCapacity,
    NodeRegistration,
    Phase,
    Resource,
    Snapshot,
    SnapshotPhase,
    SnapshotStatusReport,
)
from rik.riklet.records import InstanceRecord, RecordStore
from rik.riklet.runner import InstanceRunner

log = logging.getLogger(__name__)
T = TypeVar("T")

RUNNERS = Gauge("riklet_instances", "Instances this riklet manages")
REPORTS = Counter("riklet_status_reports_total", "Status reports sent to the controller", ["phase"])
EXITS = Counter("riklet_instance_exits_total", "Instances whose process ended on its own")
IMAGE_BYTES = Gauge("riklet_image_store_bytes", "Bytes the pulled and unpacked OCI images take")
IMAGE_LIMIT = Gauge("riklet_image_store_limit_bytes", "The image store's size limit (0: none)")
IMAGE_EVICTIONS = Counter("riklet_image_evictions_total", "Images evicted from the image store to fit its limit")

#: Builds the drivers once the node knows its instance subnet.
DriverFactory = Callable[[IPv4Network], Awaitable[Mapping[str, Driver]]]

DRIVER_FOR_KIND = {Kind.POD: "container", Kind.VM: "vm"}


@dataclass(frozen=True)
class RikletSettings:
    name: str
    address: str
    riklet_url: str
    data_dir: Path
    cpu: int
    memory: int
    labels: dict[str, str] = field(default_factory=dict)
    subnet: str | None = None
    heartbeat_interval: float = 2.0
    monitor_interval: float = 1.0
    grace_seconds: float = 5.0
    image_trim_interval: float = 300.0
    """Seconds between two trims of the image store when nothing asked for one."""


class Agent:
    def __init__(
        self,
        settings: RikletSettings,
        client: RikClient,
        build_drivers: DriverFactory,
        images: ImageStore | None = None,
    ) -> None:
        self.settings = settings
        self.client = client
        self.build_drivers = build_drivers
        self.records = RecordStore(settings.data_dir / "instances")
        self.drivers: dict[str, Driver] = {}
        self.runtimes: list[str] = []
        self.unavailable: dict[str, str] = {}
        """Runtimes whose probe failed, with why."""
        self.runners: dict[str, InstanceRunner] = {}
        self.node: Node | None = None
        self.ready = asyncio.Event()
        self._background: set[asyncio.Task[Any]] = set()
        self.images = images
        if images is not None:
            images.add_pins(self._recorded_images)

    # Start-up -----------------------------------------------------------------------------------------

    async def run(self) -> None:
        node = await self._register(runtimes=[])
        drivers = await self.build_drivers(IPv4Network(node.subnet))
        for name, driver in drivers.items():
            problem = await driver.probe()
            if problem is None:
                self.drivers[name] = driver
                self.runtimes.append(name)
            else:
                self.unavailable[name] = problem
                log.warning("runtime unavailable on this host", extra={"runtime": name, "why": problem})
        self.node = await self._register(runtimes=self.runtimes)
        log.info(
            "node registered",
            extra={"node": self.settings.name, "subnet": self.node.subnet, "runtimes": self.runtimes},
        )
        since = await self.reconcile()
        self.ready.set()
        async with asyncio.TaskGroup() as group:
            group.create_task(self._heartbeat_loop(), name="heartbeat")
            group.create_task(self._watch_loop(since), name="watch")
            group.create_task(self._monitor_loop(), name="monitor")
            if self.images is not None:
                group.create_task(self._image_trim_loop(self.images), name="image-trim")

    async def _register(self, runtimes: list[str]) -> Node:
        registration = NodeRegistration(
            name=self.settings.name,
            address=self.settings.address,
            riklet_url=self.settings.riklet_url,
            capacity=NodeCapacity(cpu=self.settings.cpu, memory=self.settings.memory),
            labels=self.settings.labels,
            runtimes=[r for r in runtimes if r in ("container", "vm")],
            subnet=self.settings.subnet,
        )
        delay = 0.2
        while True:
            try:
                return await self.client.register_node(registration)
            except Unreachable as exc:
                log.warning("controller unreachable; retrying registration", extra={"error": str(exc)})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def reconcile(self) -> int:
        """Make local instances match the controller's view; returns the resource version to watch from.

        Local instances the controller no longer assigns here are destroyed; assigned ones that still
        run are adopted; assigned ones that are gone are started again."""
        listing = await self._retry(lambda: self.client.list_instances(node=self.settings.name))
        wanted = {instance.id: instance for instance in listing.items}
        records = self.records.load_all()
        for record_id, record in records.items():
            if record_id in wanted or record_id in self.runners:
                continue
            driver = self.drivers.get(record.driver)
            log.info("removing instance no longer assigned to this node", extra={"instance": record_id})
            if driver is not None:
                handle = await driver.recover(record.state) or Handle(id=record_id, driver=record.driver)
                with contextlib.suppress(Exception):
                    await driver.stop(handle, 0)
                await driver.destroy(handle)
            self.records.remove(record_id)
        for instance in wanted.values():
            if instance.id in self.runners:
                self.runners[instance.id].update(instance)
                continue
            self._ensure_runner(instance, await self._adopt(records.get(instance.id)))
        for runner_id in [r for r in self.runners if r not in wanted]:
            self.runners[runner_id].disown()
        await self._reconcile_snapshots()
        return listing.resource_version

    # Snapshots ----------------------------------------------------------------------------------------

    def snapshot_dir(self, name: str) -> Path:
        return self.settings.data_dir / "snapshots" / name

    async def _reconcile_snapshots(self) -> None:
        """Take or delete what the controller asks for; remove local snapshots it does not know."""
        listing = await self._retry(lambda: self.client.list_snapshots(node=self.settings.name))
        known = {snapshot.name for snapshot in listing.items}
        root = self.settings.data_dir / "snapshots"
        if root.is_dir():
            for directory in root.iterdir():
                if directory.name not in known:
                    log.info("removing unknown snapshot", extra={"snapshot": directory.name})
                    await asyncio.to_thread(shutil.rmtree, directory, True)
        for snapshot in listing.items:
            self._on_snapshot(snapshot)

    def _on_snapshot(self, snapshot: Snapshot) -> None:
        if snapshot.node != self.settings.name:
            return
        if snapshot.deleting:
            task = asyncio.create_task(self._delete_snapshot(snapshot.name))
        elif snapshot.phase == SnapshotPhase.PENDING:
            runner = self.runners.get(snapshot.instance)
            if runner is not None:
                runner.request_snapshot(snapshot.name, self._take_snapshot)
                return
            task = asyncio.create_task(
                self._report_snapshot(
                    snapshot.name,
                    SnapshotStatusReport(
                        node=self.settings.name,
                        phase=SnapshotPhase.FAILED,
                        reason="InstanceGone",
                        message=f"instance {snapshot.instance} does not run on node {self.settings.name}",
                    ),
                )
            )
        else:
            return
        self._keep(task)

    async def _take_snapshot(self, runner: InstanceRunner, name: str) -> None:
        directory = self.snapshot_dir(name)
        report: SnapshotStatusReport
        if runner.handle is None or not runner.driver.capabilities.snapshots:
            report = SnapshotStatusReport(
                node=self.settings.name,
                phase=SnapshotPhase.FAILED,
                reason="Unsupported" if runner.handle else "NotRunning",
                message=f"the {runner.driver.name} runtime cannot snapshot instance {runner.id} now",
            )
        else:
            started = time.monotonic()
            try:
                await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
                await runner.driver.snapshot(runner.handle, directory)
            except DriverError as exc:
                await asyncio.to_thread(shutil.rmtree, directory, True)
                report = SnapshotStatusReport(
                    node=self.settings.name, phase=SnapshotPhase.FAILED, reason=exc.reason, message=exc.message
                )
            else:
                size = await asyncio.to_thread(tree_bytes, directory)
                took = time.monotonic() - started
                log.info("snapshot taken", extra={"snapshot": name, "bytes": size, "seconds": round(took, 3)})
                report = SnapshotStatusReport(
                    node=self.settings.name,
                    phase=SnapshotPhase.READY,
                    reason="Taken",
                    message=f"taken from {runner.id} in {took:.2f}s",
                    size_bytes=size,
                )
        await self._report_snapshot(name, report)

    async def _delete_snapshot(self, name: str) -> None:
        await asyncio.to_thread(shutil.rmtree, self.snapshot_dir(name), True)
        await self._report_snapshot(name, SnapshotStatusReport(node=self.settings.name, deleted=True))

    async def _report_snapshot(self, name: str, report: SnapshotStatusReport) -> None:
        delay = 0.2
        while True:
            try:
                await self.client.report_snapshot(name, report)
                return
            except ApiError as exc:
                if exc.status not in (404, 409):
                    log.error("snapshot report rejected", extra={"snapshot": name, "error": str(exc)})
                return
            except Unreachable:
                log.warning("controller unreachable; will retry the snapshot report", extra={"snapshot": name})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _adopt(self, record: InstanceRecord | None) -> Handle | None:
        """The handle of a locally recorded instance that still runs; remnants of one that does not are
        destroyed (the instance is then started again)."""
        if record is None or record.driver not in self.drivers:
            return None
        driver = self.drivers[record.driver]
        adopted = await driver.recover(record.state)
        if adopted is not None and not (await driver.inspect(adopted)).running:
            await driver.destroy(adopted)
            adopted = None
        if adopted is not None:
            log.info("adopted running instance", extra={"instance": record.id})
        return adopted

    # Assignments --------------------------------------------------------------------------------------

    def _ensure_runner(self, instance: Instance, handle: Handle | None = None) -> None:
        runner = self.runners.get(instance.id)
        if runner is not None:
            runner.update(instance)
            return
        if (
            handle is None
            and instance.desired_state == DesiredState.RUNNING
            and instance.phase in (Phase.FAILED, Phase.TERMINATED)
        ):
            return
        driver_name = DRIVER_FOR_KIND[instance.kind]
        driver = self.drivers.get(driver_name)
        if driver is None:
            self._keep(
                asyncio.create_task(
                    self._report(
                        instance.id,
                        InstanceStatusReport(
                            node=self.settings.name,
                            phase=Phase.TERMINATED if instance.desired_state == DesiredState.DELETED else Phase.FAILED,
                            reason="RuntimeUnavailable",
                            message=f"the {driver_name} runtime does not work on node {self.settings.name}",
                        ),
                    )
                )
            )
            return
        runner = InstanceRunner(
            instance,
            node=self.settings.name,
            driver=driver,
            records=self.records,
            report=self._report,
            grace_seconds=self.settings.grace_seconds,
            snapshot_dir=self.snapshot_dir,
            handle=handle,
            paused=handle is not None and instance.phase == Phase.PAUSED,
        )
        self.runners[instance.id] = runner
        RUNNERS.set(len(self.runners))
        task = self._keep(asyncio.create_task(runner.run(), name=f"instance-{instance.id}"))
        task.add_done_callback(partial(self._forget, instance.id, runner))

    def _keep(self, task: asyncio.Task[T]) -> asyncio.Task[T]:
        """Hold a strong reference until `task` is done: the event loop keeps only weak ones, and a task
        whose awaited future nothing else references is garbage-collected mid-flight (its coroutine is
        closed: a runner stopped halfway through a restore, its instance stuck in Creating)."""
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _forget(self, instance_id: str, runner: InstanceRunner, _task: object) -> None:
        if self.runners.get(instance_id) is runner:
            del self.runners[instance_id]
        RUNNERS.set(len(self.runners))
        if self.images is not None:
            self.images.request_trim()  # the removed instance's image may be unused now

    async def _watch_loop(self, since: int) -> None:
        while True:
            try:
                async for event in self.client.watch(
                    since=since, resources="instances,snapshots", node=self.settings.name
                ):
                    since = event.resource_version
                    if event.resource == Resource.SNAPSHOTS:
                        if event.type != EventType.DELETED:
                            self._on_snapshot(Snapshot.model_validate(event.object))
                        continue
                    instance = Instance.model_validate(event.object)
                    if event.type == EventType.DELETED or instance.node != self.settings.name:
                        runner = self.runners.get(instance.id)
                        if runner is not None:
                            runner.disown()
                    else:
                        self._ensure_runner(instance)
            except WatchExpired:
                log.warning("watch history expired; reconciling from a fresh list")
                since = await self.reconcile()

    # Heartbeats and exits -----------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            try:
                await self.client.heartbeat(self.settings.name)
            except ApiError as exc:
                if exc.status == 404:
                    log.warning("controller forgot this node; registering again")
                    self.node = await self._register(self.runtimes)
                else:
                    log.warning("heartbeat refused", extra={"error": str(exc)})
            except Unreachable as exc:
                log.warning("heartbeat failed: controller unreachable", extra={"error": str(exc)})

    async def _monitor_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.monitor_interval)
            for runner in list(self.runners.values()):
                if runner.handle is None or runner.phase != Phase.RUNNING or runner.wants_removal:
                    continue
                try:
                    inspection = await runner.driver.inspect(runner.handle)
                except Exception:
                    log.exception("inspect failed", extra={"instance": runner.id})
                    continue
                if inspection.running:
                    continue
                EXITS.inc()
                code = inspection.exit_code
                phase = Phase.TERMINATED if code == 0 else Phase.FAILED
                reason = "Completed" if code == 0 else "Exited"
                detail = inspection.reason or f"process exited with code {code}"
                log.info("instance exited", extra={"instance": runner.id, "exit_code": code})
                runner.exited(phase, reason, detail)

    # Image store ---------------------------------------------------------------------------------------

    async def _image_trim_loop(self, images: ImageStore) -> None:
        """Trim the image store once now, then whenever a pull ends or an instance is removed (and every
        `image_trim_interval` seconds), in this task: a start never waits for a trim."""
        IMAGE_LIMIT.set(images.limit_bytes or 0)
        while True:
            try:
                result = await images.trim()
            except Exception:
                log.exception("image store trim failed")
            else:
                IMAGE_BYTES.set(result.usage_bytes)
                IMAGE_EVICTIONS.inc(len(result.evicted))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.image_trim_interval):
                    await images.trim_requested()

    def _recorded_images(self) -> set[str]:
        """Digests that container instance records name (the image store's pin source for instances
        started before their driver recorded the digest itself; blocking)."""
        return {
            str(record.state["digest"])
            for record in self.records.load_all().values()
            if record.driver == "container" and isinstance(record.state.get("digest"), str)
        }

    # Reporting ----------------------------------------------------------------------------------------

    async def _report(self, instance_id: str, report: InstanceStatusReport) -> int | None:
        """Deliver a status report, retrying while the controller is away. None when the instance is no
        longer this node's (deleted or moved); else the instance's resource version after the report (0
        when the controller did not say)."""
        delay = 0.2
        while True:
            try:
                answer = await self.client.report_status(instance_id, report)
                REPORTS.labels(report.phase.value).inc()
                return answer.resource_version if answer is not None else 0
            except ApiError as exc:
                if exc.status in (404, 409):
                    return None
                log.error("status report rejected", extra={"instance": instance_id, "error": str(exc)})
                return 0
            except Unreachable:
                log.warning("controller unreachable; will retry the status report", extra={"instance": instance_id})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _retry(self, call: Callable[[], Awaitable[T]]) -> T:
        delay = 0.2
        started = time.monotonic()
        while True:
            try:
                return await call()
            except Unreachable as exc:
                log.warning(
                    "controller unreachable; retrying",
                    extra={"error": str(exc), "waited": round(time.monotonic() - started, 1)},
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def shutdown(self) -> None:
        """Leave instances running: a restarted riklet adopts them."""
        RUNNERS.set(0)
