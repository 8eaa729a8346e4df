"""Short QMP sessions with a VM's QEMU (one client at a time per socket: connect, talk, disconnect)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient
from qemu.qmp.error import QMPError

from rik.drivers.base import DriverError

logger = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def session(socket: Path, name: str = "rik", connect_seconds: float = 5.0) -> AsyncIterator[QMPClient]:
    """A connected QMP client; `DriverError("QMPUnavailable")` if QEMU does not answer in time."""
    client = QMPClient(name)
    try:
        async with asyncio.timeout(connect_seconds):
            await client.connect(str(socket))
    except (OSError, QMPError, TimeoutError) as exc:
        with contextlib.suppress(Exception):
            await client.disconnect()
        raise DriverError("QMPUnavailable", f"QEMU's QMP socket {socket} does not answer: {exc}") from exc
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            await client.disconnect()


async def execute(socket: Path, command: str, arguments: dict[str, Any] | None = None) -> Any:
    """Run one QMP command in its own session."""
    async with session(socket) as client:
        return await client.execute(command, arguments)


async def status(socket: Path) -> str | None:
    """QEMU's run state ("running", "paused", "inmigrate", …), or None if QMP does not answer."""
    try:
        reply = await execute(socket, "query-status")
    except (DriverError, QMPError, OSError):
        return None
    return str(reply.get("status")) if isinstance(reply, dict) else None


async def wait_migration(client: QMPClient, command: str, seconds: float) -> dict[str, Any]:
    """Poll `command` (query-migrate) until the migration completes; raise `DriverError` if it fails."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        answer = await client.execute(command)
        reply: dict[str, Any] = answer if isinstance(answer, dict) else {}
        state = reply.get("status")
        if state == "completed":
            return reply
        if state in ("failed", "cancelled"):
            raise DriverError("SnapshotFailed", f"migration {state}: {reply.get('error-desc', '')}")
        if asyncio.get_running_loop().time() > deadline:
            raise DriverError("SnapshotFailed", f"migration did not complete in {seconds:.0f} s (state {state})")
        await asyncio.sleep(0.01)
