"""The `Orchestrator` interface: everything Morty asks of whatever runs function instances.

Small on purpose, so that a Kubernetes or cloud backend is a new module, not a rewrite. Morty names
each deployed function version by a `key` (a DNS label) and never sees the orchestrator's objects.

    OrchestratorError        the orchestrator refused or failed; `reason` is a short word
     └── OrchestratorUnavailable   it did not answer
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


class Isolation(StrEnum):
    VM = "vm"
    CONTAINER = "container"


class StartPath(StrEnum):
    """How an instance came up, as invocation records report it."""

    BOOTED = "booted"
    RESTORED = "restored"
    RESUMED = "resumed"


@dataclass(frozen=True)
class DeploymentSpec:
    """One function version, as Morty wants it run."""

    key: str
    image: str
    isolation: Isolation = Isolation.VM
    port: int = 8080
    control_port: int | None = None
    """A second port the instance serves (alpha's control API: readiness, logs), published like `port`."""
    memory_mib: int = 128
    vcpus: int = 1
    cpu_millis: int = 250
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class InstanceEndpoint:
    """A ready instance and where to send it requests (reachable from other hosts)."""

    instance_id: str
    host: str
    port: int
    path: StartPath
    control: tuple[str, int] | None = None
    """Where the spec's `control_port` is reached, if it declared one."""
    ready: bool = True
    """False: the instance exists but does not serve now (e.g. being moved off a lost node); no address."""


class OrchestratorError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class OrchestratorUnavailable(OrchestratorError):
    pass


class Orchestrator(Protocol):
    async def register(self, spec: DeploymentSpec) -> None:
        """Make the version known, with no instance running (create), or change its configuration (update:
        running instances keep theirs; a snapshot of the old configuration is no longer restored)."""

    async def start_instance(self, key: str, *, within: float) -> InstanceEndpoint:
        """Bring one more instance up and return once it is ready (waits on changes, not by polling)."""

    async def stop_instance(self, key: str, instance_id: str) -> None:
        """Remove exactly this instance (no replacement is started)."""

    async def prepare_snapshot(self, key: str, *, within: float) -> str:
        """Boot one instance, snapshot it once ready, remove it, and have every later instance of
        the version restore that snapshot instead of booting. Returns the snapshot's name."""

    async def pause(self, key: str, instance_id: str) -> None: ...

    async def resume(self, key: str, instance_id: str, *, within: float) -> InstanceEndpoint: ...

    async def instances(self, key: str) -> list[InstanceEndpoint]:
        """The version's instances that are not being removed: the ready ones, and the others with
        `ready=False`."""

    async def unregister(self, key: str) -> None:
        """Remove the version, its instances and its snapshot."""
