"""The instance runner against a fake driver and a fake controller: what it reports, and when."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rik.drivers.base import Capabilities, Handle, InstanceRequest, ProgressCallback
from rik.model import Instance, InstanceStatusReport, Phase
from rik.riklet.records import RecordStore
from rik.riklet.runner import InstanceRunner


class FakeDriver:
    name = "fake"
    capabilities = Capabilities()

    async def start(self, request: InstanceRequest, progress: ProgressCallback) -> Handle:
        await progress("Booting", "")
        return Handle(id=request.id, driver=self.name, address="10.0.0.2")

    async def restore(self, request: InstanceRequest, snapshot: Path, progress: ProgressCallback) -> Handle:
        await progress("Restoring", f"restoring snapshot {snapshot.name}")
        await progress("Restoring", f"restoring snapshot {snapshot.name}")
        await progress("Networking", "attaching")
        return Handle(id=request.id, driver=self.name, address="10.0.0.3")

    async def stop(self, handle: Handle, grace_seconds: float) -> None:
        pass

    async def destroy(self, handle: Handle) -> None:
        pass


class FakeController:
    """Answers each report with the instance's next resource version, as the controller does."""

    def __init__(self, version: int) -> None:
        self.version = version
        self.reports: list[tuple[Phase, str]] = []

    async def report(self, instance_id: str, report: InstanceStatusReport) -> int | None:
        await asyncio.sleep(0)
        self.version += 1
        self.reports.append((report.phase, report.reason))
        return self.version


def instance(phase: str, version: int, spec: dict[str, Any] | None = None) -> Instance:
    stamp = datetime.now(UTC)
    return Instance.model_validate(
        {
            "id": "web-1", "workload": "web", "kind": "VM" if spec else "Pod", "spec": spec or {"image": "x"},
            "node": "n1", "phase": phase,
            "desired_state": "Running", "reason": "Scheduled", "resource_version": version, "created_at": stamp,
            "updated_at": stamp,
        }
    )  # fmt: skip


async def running(runner: InstanceRunner, controller: FakeController) -> None:
    async with asyncio.timeout(5):
        while (Phase.RUNNING, "Running") not in controller.reports:
            await asyncio.sleep(0.01)
    for _ in range(20):  # let the runner's loop go round: it must not report again on its own
        await asyncio.sleep(0)


async def test_running_is_reported_once_though_the_watch_still_shows_the_start(tmp_path: Path) -> None:
    """The watch events echoing the runner's own reports arrive after the controller answered them: an
    instance view older than that answer is not a reason to report again."""
    controller = FakeController(version=5)
    runner = InstanceRunner(
        instance("Pending", 5), node="n1", driver=FakeDriver(), records=RecordStore(tmp_path),  # type: ignore[arg-type]
        report=controller.report, grace_seconds=1.0, snapshot_dir=lambda name: tmp_path / name,
    )  # fmt: skip
    task = asyncio.create_task(runner.run())
    try:
        await running(runner, controller)
        assert [phase for phase, _ in controller.reports] == [Phase.CREATING, Phase.CREATING, Phase.RUNNING]
        runner.update(instance("Creating", 6))  # a late echo of the first report
        await running(runner, controller)
        assert len(controller.reports) == 3

        # A newer view that is not ours (the controller lost our report, say): the runner says it again.
        runner.update(instance("Pending", controller.version + 1))
        async with asyncio.timeout(5):
            while len(controller.reports) < 4:
                await asyncio.sleep(0.01)
        assert controller.reports[-1] == (Phase.RUNNING, "Running")
    finally:
        runner.disown()
        await asyncio.wait_for(task, 5)


async def test_a_restore_reports_its_progress_without_repeating_itself(tmp_path: Path) -> None:
    (tmp_path / "s1").mkdir()
    controller = FakeController(version=5)
    runner = InstanceRunner(
        instance("Pending", 5, {"image": "x", "vm": {"snapshot": "s1"}}), node="n1", driver=FakeDriver(),  # type: ignore[arg-type]
        records=RecordStore(tmp_path / "records"), report=controller.report, grace_seconds=1.0,
        snapshot_dir=lambda name: tmp_path / name,
    )  # fmt: skip
    task = asyncio.create_task(runner.run())
    try:
        await running(runner, controller)
        assert controller.reports == [
            (Phase.CREATING, "Restoring"), (Phase.CREATING, "Networking"), (Phase.RUNNING, "Running")
        ]  # fmt: skip
        assert runner.handle is not None and runner.handle.address == "10.0.0.3"
    finally:
        runner.disown()
        await asyncio.wait_for(task, 5)
