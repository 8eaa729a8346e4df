"""One `InstanceRunner` per instance assigned to this node: it owns the instance's driver handle and
brings it to what the controller wants, one step at a time, so a delete that arrives during a start
waits for the start to finish and then undoes it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from rik.drivers.base import Driver, DriverError, Handle, InstanceRequest
from rik.model import DesiredState, Instance, InstanceStatusReport, Phase, PortBinding
from rik.riklet.records import InstanceRecord, RecordStore

log = logging.getLogger(__name__)

#: Sends a status report; returns None when the controller says the instance is no longer ours, else the
#: instance's resource version after the report (0 if unknown).
Reporter = Callable[[str, InstanceStatusReport], Awaitable[int | None]]
#: Takes a requested snapshot of this runner's instance (called from the runner's own loop).
SnapshotTaker = Callable[["InstanceRunner", str], Awaitable[None]]


LIVE = (Phase.RUNNING, Phase.PAUSED)


class InstanceRunner:
    def __init__(
        self,
        instance: Instance,
        *,
        node: str,
        driver: Driver,
        records: RecordStore,
        report: Reporter,
        grace_seconds: float,
        snapshot_dir: Callable[[str], Path],
        handle: Handle | None = None,
        paused: bool = False,
    ) -> None:
        self.id = instance.id
        self.instance = instance
        self.node = node
        self.driver = driver
        self.records = records
        self._report = report
        self.grace_seconds = grace_seconds
        self.handle = handle
        self.snapshot_dir = snapshot_dir
        self.phase: Phase | None = (Phase.PAUSED if paused else Phase.RUNNING) if handle else None
        self._snapshots: list[tuple[str, SnapshotTaker]] = []
        self.owned = True
        """False once the instance was deleted or moved to another node: then nothing is reported."""
        self._pending_exit: tuple[Phase, str, str] | None = None
        self._changed = asyncio.Event()
        self._changed.set()
        self.done = asyncio.Event()
        self._queued_report: asyncio.Task[None] | None = None
        """The last report queued by `_post`; the next report goes after it."""
        self._acknowledged = 0
        """The instance's resource version in the controller's answer to our last report: watch events
        older than that (echoes of earlier reports, still on their way) are not the controller's view."""

    # Inputs from the agent ----------------------------------------------------------------------------

    def update(self, instance: Instance) -> None:
        self.instance = instance
        self._changed.set()

    def disown(self) -> None:
        """The instance is gone from the controller or assigned elsewhere: remove it, report nothing."""
        self.owned = False
        self._changed.set()

    def request_snapshot(self, name: str, take: SnapshotTaker) -> None:
        """Take a snapshot between two other operations of this instance, never during one."""
        self._snapshots.append((name, take))
        self._changed.set()

    def exited(self, phase: Phase, reason: str, message: str) -> None:
        """The monitor saw the instance's process end."""
        self.phase = phase
        self._pending_exit = (phase, reason, message)
        self._changed.set()

    # The loop -----------------------------------------------------------------------------------------

    @property
    def wants_removal(self) -> bool:
        return not self.owned or self.instance.desired_state == DesiredState.DELETED

    async def run(self) -> None:
        try:
            while True:
                await self._changed.wait()
                self._changed.clear()
                if self.wants_removal:
                    await self._remove()
                    return
                if self._pending_exit is not None:
                    exit_info, self._pending_exit = self._pending_exit, None
                    await self._send(*exit_info)
                elif self.handle is None and self.phase is None:
                    await self._start()
                if self.handle is not None and self.phase in (Phase.RUNNING, Phase.PAUSED):
                    await self._converge_pause()
                    while self._snapshots:
                        name, take = self._snapshots.pop(0)
                        await take(self, name)
                    if (
                        self.phase is not None
                        and self.instance.phase != self.phase
                        and self.instance.resource_version >= self._acknowledged
                    ):
                        # Adopted after a restart, or the controller missed our report.
                        await self._send(self.phase, self.phase.value, "")
        finally:
            self.done.set()

    async def _converge_pause(self) -> None:
        assert self.handle is not None
        want_paused = self.instance.desired_state == DesiredState.PAUSED
        if want_paused == (self.phase == Phase.PAUSED):
            return
        try:
            if want_paused:
                await self.driver.pause(self.handle)
                self.phase = Phase.PAUSED
            else:
                await self.driver.resume(self.handle)
                self.phase = Phase.RUNNING
        except DriverError as exc:
            log.warning("pause/resume failed", extra={"instance": self.id, "reason": exc.reason})
            await self._send(self.phase or Phase.RUNNING, exc.reason, exc.message)
            return
        log.info("instance " + self.phase.value.lower(), extra={"instance": self.id})
        await self._send(self.phase, self.phase.value, "")

    async def _start(self) -> None:
        self.records.save(InstanceRecord(self.id, self.driver.name, self.instance.workload))
        # Not awaited: the start begins at once. Should the controller answer that the instance is no longer
        # ours, the runner is disowned and removes the instance after the start, as for a delete meanwhile.
        snapshot = self.instance.spec.vm.snapshot if self.instance.spec.vm else None
        # A restore says so from the start: the driver's own first word is the same, and is not sent twice
        # (one controller write and its watch events fewer while the VM starts).
        posted = ("Restoring", f"restoring snapshot {snapshot}") if snapshot else ("Creating", "")
        self._post(Phase.CREATING, *posted)
        if self.wants_removal:
            return

        async def progress(reason: str, message: str) -> None:
            nonlocal posted
            if (reason, message) != posted:
                posted = (reason, message)
                self._post(Phase.CREATING, reason, message)

        request = InstanceRequest(id=self.id, workload=self.instance.workload, spec=self.instance.spec)
        try:
            if snapshot:
                directory = self.snapshot_dir(snapshot)
                if not directory.is_dir():
                    raise DriverError("SnapshotMissing", f"snapshot {snapshot} is not on node {self.node}")
                self.handle = await self.driver.restore(request, directory, progress)
            else:
                self.handle = await self.driver.start(request, progress)
        except DriverError as exc:
            log.warning("instance failed to start", extra={"instance": self.id, "reason": exc.reason})
            await self._destroy_quietly()
            self.phase = Phase.FAILED
            await self._send(Phase.FAILED, exc.reason, exc.message)
            return
        except Exception as exc:
            log.exception("driver crashed while starting", extra={"instance": self.id})
            await self._destroy_quietly()
            self.phase = Phase.FAILED
            await self._send(Phase.FAILED, "DriverError", f"{type(exc).__name__}: {exc}")
            return
        self.records.save(InstanceRecord(self.id, self.driver.name, self.instance.workload, self.handle.state))
        self.phase = Phase.RUNNING
        log.info("instance running", extra={"instance": self.id, "address": self.handle.address})
        await self._send(Phase.RUNNING, "Running", "")

    async def _remove(self) -> None:
        if self.handle is not None:
            try:
                await self.driver.stop(self.handle, self.grace_seconds)
            except Exception:
                log.exception("stop failed; destroying anyway", extra={"instance": self.id})
        await self._destroy_quietly()
        self.records.remove(self.id)
        log.info("instance removed", extra={"instance": self.id})
        if self.owned:
            await self._send(Phase.TERMINATED, "Deleted", "")

    async def _destroy_quietly(self) -> None:
        handle = self.handle or Handle(id=self.id, driver=self.driver.name)
        try:
            await self.driver.destroy(handle)
        except Exception:
            log.exception("destroy failed", extra={"instance": self.id})
        self.handle = None

    async def _send(self, phase: Phase, reason: str, message: str) -> None:
        """Report, after any report still queued, and wait for the controller's answer."""
        if not self.owned:
            return
        report = self._status(phase, reason, message)
        if self._queued_report is not None:
            await self._queued_report
        await self._deliver(report)

    def _post(self, phase: Phase, reason: str, message: str) -> None:
        """Report without waiting (start progress: the driver goes on meanwhile); reports still reach the
        controller in order, each after the one before."""
        if not self.owned:
            return
        report, previous = self._status(phase, reason, message), self._queued_report

        async def deliver() -> None:
            if previous is not None:
                await previous
            await self._deliver(report)

        self._queued_report = asyncio.create_task(deliver(), name=f"report-{self.id}")

    def _status(self, phase: Phase, reason: str, message: str) -> InstanceStatusReport:
        return InstanceStatusReport(
            node=self.node,
            phase=phase,
            reason=reason[:256],
            message=message[:4096],
            address=self.handle.address if self.handle and phase in LIVE else None,
            ports=list(self.handle.ports) if self.handle and phase in LIVE else list[PortBinding](),
        )

    async def _deliver(self, report: InstanceStatusReport) -> None:
        if not self.owned:
            return
        version = await self._report(self.id, report)
        if version is None:
            self.disown()
        else:
            self._acknowledged = max(self._acknowledged, version)
