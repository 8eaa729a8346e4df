"""The contract between the riklet and the runtimes that run instances (containers, VMs).

Every driver implements the same narrow protocol around an opaque, JSON-serialisable `state` dict that
the riklet persists per instance, so a restarted riklet can `recover` what still runs. Optional
features are declared in `Capabilities`, never discovered with `isinstance`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rik.model import PortBinding, WorkloadSpec


@dataclass(frozen=True)
class InstanceRequest:
    """What the riklet asks a driver to run."""

    id: str
    workload: str
    spec: WorkloadSpec


@dataclass
class Handle:
    """A driver's record of one instance it started; `state` is what the riklet persists."""

    id: str
    driver: str
    address: str | None = None
    ports: list[PortBinding] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Inspection:
    running: bool
    exit_code: int | None = None
    reason: str = ""


@dataclass(frozen=True)
class Capabilities:
    snapshots: bool = False
    pause: bool = False


class DriverError(Exception):
    """An instance could not be started or managed; `reason` is a short CamelCase word, the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


#: Called by a driver to report progress while starting (e.g. "Pulling", "pulled 3 layers").
ProgressCallback = Callable[[str, str], Awaitable[None]]


class Driver(Protocol):
    name: str
    capabilities: Capabilities

    async def probe(self) -> str | None:
        """Return None when this runtime works on this host, else why not."""

    async def start(self, request: InstanceRequest, progress: ProgressCallback) -> Handle:
        """Start an instance and return once it runs; raise `DriverError` with a readable message."""

    async def inspect(self, handle: Handle) -> Inspection: ...

    async def stop(self, handle: Handle, grace_seconds: float) -> None:
        """Send SIGTERM, wait out the grace period, then SIGKILL."""

    async def destroy(self, handle: Handle) -> None:
        """Remove every process, mount, namespace, interface and file of the instance. Idempotent, and
        safe to call on a handle whose start failed halfway."""

    async def recover(self, state: dict[str, Any]) -> Handle | None:
        """Rebuild a handle from persisted state after a riklet restart; None if nothing is left."""

    async def logs(self, handle: Handle, tail_bytes: int | None) -> bytes: ...

    # Optional: only called when `capabilities` says so; others raise DriverError("Unsupported", ...).

    async def pause(self, handle: Handle) -> None:
        """Stop the instance's CPUs, keeping its memory (capabilities.pause)."""

    async def resume(self, handle: Handle) -> None: ...

    async def snapshot(self, handle: Handle, directory: Path) -> None:
        """Write the running instance's memory and disk state into `directory`; the instance keeps
        running (capabilities.snapshots)."""

    async def restore(self, request: InstanceRequest, snapshot: Path, progress: ProgressCallback) -> Handle:
        """Start a new instance from a snapshot directory written by `snapshot`; several may be
        restored from one snapshot at once, each with its own address (capabilities.snapshots)."""
