"""The VM driver's run directory (QMP sockets) is removed once its last VM is gone, but never while a start
is under way: a start that made it and is about to launch QEMU would find it gone (QEMU: "Failed to bind
socket ... No such file or directory"), as happened when a redeploy stopped one VM while booting another."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path
from typing import Any

from rik.drivers.base import InstanceRequest
from rik.drivers.vm import VMDriver
from rik.images import ImageStore
from rik.network import NodeNetwork


async def test_the_run_directory_outlives_every_start_in_progress(tmp_path: Path) -> None:
    network = NodeNetwork("rikrundir0", ipaddress.IPv4Network("10.252.9.0/24"), tmp_path / "network", "127.0.0.1")
    run_dir = tmp_path / "run"
    driver = VMDriver(tmp_path / "state", network, ImageStore(tmp_path / "images"), run_dir=run_dir)
    made = asyncio.Event()
    launch = asyncio.Event()

    async def starting(request: InstanceRequest, progress: Any, leases: Any) -> Any:
        run_dir.mkdir(parents=True, exist_ok=True)
        made.set()
        await launch.wait()
        assert run_dir.is_dir(), "the run directory was removed under a start"
        return "handle"

    driver._start = starting  # type: ignore[method-assign]
    start = asyncio.create_task(driver.start(None, None))  # type: ignore[arg-type]
    await made.wait()
    driver._tidy_run_dir()  # what another VM's deletion does
    assert run_dir.is_dir()
    launch.set()
    assert await start == "handle"
    assert not run_dir.exists(), "an empty run directory stays after the last start"
