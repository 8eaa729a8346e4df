"""One `InstanceRunner` per instance assigned to this node: it owns the instance's driver handle and
brings it to what the controller wants, one step at a time, so a delete that arrives during a start
waits for the start to finish and then undoes it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from rik.drivers.base import Driver, DriverError, Handle, InstanceRequest
from rik.model import DesiredState, Instance, InstanceStatusReport, Phase, PortBinding
from rik.riklet.records import InstanceRecord, RecordStore

log = logging.getLogger(__name__)

#: Sends a status report; returns False when the controller says the instance is no longer ours.
Reporter = Callable[[str, InstanceStatusReport], Awaitable[bool]]


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
        handle: Handle | None = None,
    ) -> None:
        self.id = instance.id
        self.instance = instance
        self.node = node
        self.driver = driver
        self.records = records
        self._report = report
        self.grace_seconds = grace_seconds
        self.handle = handle
        self.phase: Phase | None = Phase.RUNNING if handle else None
        self.owned = True
        """False once the instance was deleted or moved to another node: then nothing is reported."""
        self._pending_exit: tuple[Phase, str, str] | None = None
        self._changed = asyncio.Event()
        self._changed.set()
        self.done = asyncio.Event()

    # Inputs from the agent ----------------------------------------------------------------------------

    def update(self, instance: Instance) -> None:
        self.instance = instance
        self._changed.set()

    def disown(self) -> None:
        """The instance is gone from the controller or assigned elsewhere: remove it, report nothing."""
        self.owned = False
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
                elif self.handle is not None and self.phase == Phase.RUNNING and self.instance.phase != Phase.RUNNING:
                    # Adopted after a restart, or the controller missed our report.
                    await self._send(Phase.RUNNING, "Running", "")
        finally:
            self.done.set()

    async def _start(self) -> None:
        self.records.save(InstanceRecord(self.id, self.driver.name, self.instance.workload))
        await self._send(Phase.CREATING, "Creating", "")
        if self.wants_removal:
            return

        async def progress(reason: str, message: str) -> None:
            await self._send(Phase.CREATING, reason, message)

        request = InstanceRequest(id=self.id, workload=self.instance.workload, spec=self.instance.spec)
        try:
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
        if not self.owned:
            return
        report = InstanceStatusReport(
            node=self.node,
            phase=phase,
            reason=reason[:256],
            message=message[:4096],
            address=self.handle.address if self.handle and phase == Phase.RUNNING else None,
            ports=list(self.handle.ports) if self.handle and phase == Phase.RUNNING else list[PortBinding](),
        )
        if not await self._report(self.id, report):
            self.disown()
